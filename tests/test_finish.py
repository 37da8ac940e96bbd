"""`sdkit.cli.finish`: the process ends as a normal exit would (status, atexit handlers, flushed streams) without the
interpreter's teardown once torch is loaded; the normal exit is kept when torch is not loaded or a thread still runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from sdkit.cli.finish import exit_status

SCRIPT = """
import atexit, sys, threading, time
{imports}
from sdkit.cli.finish import finish

class Teardown:  # a module global: its __del__ runs only in the interpreter's teardown
    def __del__(self):
        sys.stderr.write("teardown\\n")

keep = Teardown()
atexit.register(lambda: sys.stderr.write("atexit ran\\n"))
sys.stdout.write("buffered output")  # stdout is a pipe: block-buffered, nothing written yet
{thread}
finish({code})
"""
THREAD = "threading.Thread(target=lambda: (time.sleep(0.5), sys.stderr.write('thread done\\n'))).start()"


def run(code: str, imports: str = "import torch", thread: str = "") -> subprocess.CompletedProcess:
    script = textwrap.dedent(SCRIPT).format(imports=imports, thread=thread, code=code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout into a pipe is block-buffered
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (3, 3), (130, 130)])
def test_exit_status_follows_sys_exit(code, status):
    assert exit_status(code) == status


def test_finish_skips_the_teardown_but_keeps_status_atexit_and_output():
    done = run("3")
    assert done.returncode == 3
    assert done.stdout == "buffered output"
    assert "atexit ran" in done.stderr
    assert "teardown" not in done.stderr


def test_finish_with_a_message_prints_it_and_exits_1():
    done = run("'error: something'")
    assert done.returncode == 1
    assert "error: something" in done.stderr and "teardown" not in done.stderr


def test_finish_keeps_the_normal_exit_without_torch_or_with_a_running_thread():
    light = run("0", imports="")
    assert (light.returncode, light.stdout) == (0, "buffered output")
    assert "teardown" in light.stderr and "atexit ran" in light.stderr
    waiting = run("4", thread=THREAD)
    assert waiting.returncode == 4
    assert "thread done" in waiting.stderr and "teardown" in waiting.stderr


def test_unflushable_stdout_exits_120_as_python_does():
    done = run("0", thread="import os; os.close(1)")  # the buffered output can no longer be written
    assert done.returncode == 120
    assert "atexit ran" in done.stderr and "teardown" not in done.stderr
