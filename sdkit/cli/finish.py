"""How the `sdkit` process ends: as a normal exit does, without tearing the interpreter down.

Once a command has run, Python's normal exit runs the atexit handlers, flushes stdout/stderr, then tears down every
module and the C++ libraries behind them. With torch and diffusers loaded that teardown is ≈ 4,000 modules and
libtorch's static destructors: ≈ 0.9 s on a 2-core CPU machine, and it touches ≈ 125 MB of library pages that the
run itself never needed, so it is where a short run's peak RSS is reached (`bench/results.md`, overhead and
train_throughput). `finish` keeps the observable parts of the normal exit (the exit status, the atexit handlers,
which include logging's flush and multiprocessing's child clean-up, and the flushed streams) and skips the teardown
with `os._exit`. Every file sdkit writes is closed before the command returns (context managers, atomic renames).

The normal exit is kept when it is cheap (torch never imported) or when another non-daemon thread still runs (the
interpreter would wait for it).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_status(code: object) -> int:
    """The status `sys.exit(code)` ends with: None → 0, an int as is, anything else printed to stderr → 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def finish(code: object) -> NoReturn:
    """End the process with `code` (a SystemExit code); see the module docstring."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if "torch" not in sys.modules or others:
        sys.exit(code)
    status = exit_status(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # e.g. stdout piped into `head`, which has exited: Python's own exit reports 120
            status = status or 120
    os._exit(status)
