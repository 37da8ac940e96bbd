"""`sdkit serve`: check the settings, recover the queue, and run the app under uvicorn until Ctrl-C / SIGTERM."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sdkit.errors import UserError
from sdkit.server.config import ServerConfig, check


def hold_lock(path: Path):
    """One server per state folder: a second one would take the same queued jobs and mark the first one's running
    job interrupted. The lock is the kernel's (flock): it goes away with the process, however it ends."""
    import fcntl

    handle = open(path, "a+")  # noqa: SIM115 - kept open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another sdkit serve uses {path.parent}: stop it, or give this one another --state-dir / --output-dir") from None
    return handle


def serve(config: ServerConfig, *, log_level: str = "warning") -> None:
    import uvicorn

    from sdkit.server.app import create_app
    from sdkit.server.workers import Hub

    check(config)
    config.state.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(config.state / "server.lock")  # noqa: F841 - held until the process ends
    shutil.rmtree(config.state / "unsaved", ignore_errors=True)  # images of A1111 requests no client will read now
    hub = Hub(config)
    for what, ids in hub.recovered.items():
        if ids:
            then = "marked interrupted" if what == "interrupted" else "queued again, to resume from their last checkpoint"
            print(f"sdkit serve: job(s) {', '.join(map(str, ids))} were running when the server stopped: {then}",
                  file=sys.stderr)  # fmt: skip
    app = create_app(config, hub)
    print(f"sdkit serve: {config.url}  (outputs {config.output_dir}, queue {config.state / 'queue.sqlite3'}, "
          f"{len(config.devices)} worker(s): {', '.join(config.devices)})", file=sys.stderr, flush=True)  # fmt: skip
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, timeout_graceful_shutdown=5)
