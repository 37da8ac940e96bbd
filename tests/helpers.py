"""Shared test helpers: driving the real CLI (in process, in a subprocess, under a pseudo-terminal), reading the images
it writes, and the small datasets and settings the fine-tuning tests share."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from sdkit.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@dataclass(frozen=True)
class Ran:
    """What `invoke_subprocess` returns: the fields of click's Result that the tests read."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke_subprocess(*args: object, env: dict[str, str] | None = None) -> Ran:
    """`sdkit ARGS` as a child process (`python -m sdkit`): for code that must not run inside pytest's process
    (OpenVINO's compiled graphs leave native state behind that crashed a later in-process SIGTERM test)."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "sdkit", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)  # fmt: skip
    return Ran(done.returncode, done.stdout, done.stderr)


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under the roots with its size and mtime: equal snapshots mean nothing was written or changed."""
    files = {}
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file():
                st = p.stat()
                files[str(p)] = (st.st_size, st.st_mtime_ns)
    return files


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, exactly one line on stderr naming the problem, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout.strip() == ""
    return lines[0]


# --- the real console script under a pseudo-terminal -------------------------------------------------------------

SDKIT = Path(sys.executable).parent / "sdkit"  # the installed console script, beside this interpreter
ANSI = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[ -/]*[0-~]")


@dataclass
class Screen:
    """What a user at a terminal saw: the exit code, the bytes the terminal received (decoded) and, when stderr was
    piped instead, what went to the pipe."""

    code: int
    raw: str
    stderr: str | None = None

    @property
    def text(self) -> str:
        """`raw` without ANSI escape sequences (colours, cursor moves), line ends normalised to \\n."""
        return ANSI.sub("", self.raw).replace("\r\n", "\n")

    @property
    def lines(self) -> list[str]:
        """Each line as it finally stood on the screen: a carriage return (a redrawn progress bar) overwrites."""
        return [line.split("\r")[-1] for line in self.text.split("\n")]

    def __str__(self) -> str:  # for assertion messages
        return f"exit {self.code}\n{self.text}" + (f"\n--- stderr (piped) ---\n{self.stderr}" if self.stderr is not None else "")


def terminal_env(**extra: str) -> dict[str, str]:
    """The test environment as a terminal session sees it: TERM=xterm-256color, the console script's folder first on
    PATH, and none of the variables that would override terminal detection or the window size."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PATH=f"{SDKIT.parent}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def in_terminal(argv: list[str] | str, cwd: Path | None = None, *, pipe_stderr: bool = False, timeout: float = 300,
                columns: int = 120, rows: int = 40, env: dict[str, str] | None = None) -> Screen:  # fmt: skip
    """Run `argv` (a list, or a string for `bash -c`) with a pseudo-terminal of `columns` x `rows` as stdin, stdout and
    stderr (stderr a pipe instead with `pipe_stderr`), reading until it exits. Past `timeout` seconds the process group
    is killed and the test fails, showing what the screen held."""
    import fcntl
    import pty
    import select
    import signal
    import struct
    import subprocess
    import termios
    import time

    if isinstance(argv, str):
        argv = ["bash", "-c", argv]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    err = subprocess.PIPE if pipe_stderr else slave
    proc = subprocess.Popen([str(a) for a in argv], stdin=slave, stdout=slave, stderr=err, cwd=cwd,
                            env=env or terminal_env(), start_new_session=True)  # fmt: skip
    os.close(slave)
    err_fd = proc.stderr.fileno() if pipe_stderr else None
    buffers = {fd: bytearray() for fd in (master, err_fd) if fd is not None}
    reading, deadline = set(buffers), time.monotonic() + timeout
    try:
        while reading:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"{argv} still running after {timeout} s; screen:\n{buffers[master].decode(errors='replace')}")
            for fd in select.select(list(reading), [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: every holder of the terminal's other end has closed it
                    chunk = b""
                buffers[fd] += chunk
                if not chunk:
                    reading.discard(fd)
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if proc.stderr is not None:
            proc.stderr.close()
    stderr = buffers[err_fd].decode(errors="replace") if err_fd is not None else None
    return Screen(code, buffers[master].decode(errors="replace"), stderr)

# Images


def pixels(path: Path) -> np.ndarray:
    """An image file's RGB pixels as ints (differences do not wrap around as uint8 would)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def generated(out: Path, *args: object, run=None) -> np.ndarray:
    """`sdkit generate ARGS -o OUT` (in process, or through `run`, e.g. invoke_subprocess), which must succeed and
    write exactly one image; its pixels."""
    result = (run or invoke)("generate", *map(str, args), "-o", str(out))
    assert result.exit_code == 0, result.output
    images = sorted(p for p in Path(out).glob("*.png") if re.fullmatch(r"\d{5,}-\d+\.png", p.name))
    assert len(images) == 1, images
    return pixels(images[0])


# Fine-tuning


SEED, STEPS, CFG = 2, 3, 7.0  # what `sdkit generate` below uses (cfg: its default)
GEN = ["--steps", str(STEPS), "--seed", str(SEED), "--scheduler", "Euler"]
FAST = {"threads": 1, "log_every": 1, "validation_inference_steps": 2, "validation_images": 1}


def shapes_dataset(root: Path, n: int = 6) -> Path:
    """A 32 px shapes-world imagefolder (images/ + metadata.jsonl captions)."""
    from sdkit.data.shapes import write_dataset

    return write_dataset(root, n, seed=0, size=32)


def generate(out: Path, model: Path, prompt: str, *extra) -> np.ndarray:
    """`sdkit generate` one 32 px image with the fine-tuning tests' settings (GEN); its pixels."""
    return generated(out, prompt, "-m", model, *GEN, *extra)


def in_memory(pipe, prompt: str) -> np.ndarray:
    """The image `generate` above makes, from a pipeline object in memory (the trained one, adapters attached)."""
    import torch

    from sdkit import schedulers

    pipe.scheduler = schedulers.build("Euler", pipe.scheduler.config)
    out = pipe(prompt, num_inference_steps=STEPS, guidance_scale=CFG, width=32, height=32, output_type="np",
               generator=torch.Generator("cpu").manual_seed(SEED)).images  # fmt: skip
    return np.asarray(pipe.numpy_to_pil(out)[0]).astype(int)


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
