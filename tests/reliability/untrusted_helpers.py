"""Helpers for the untrusted-input tests: the real CLI in a subprocess, and PNG files written chunk by chunk."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

SAFETY_TIMEOUT = 120  # seconds: a hang fails the test (TimeoutExpired kills the child) instead of stalling the suite


def sdkit(*args, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m sdkit ARGS` (the console script's code) to completion, offline, one thread."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sdkit", *map(str, args)], capture_output=True, text=True,
                          env=environ, cwd=cwd, timeout=SAFETY_TIMEOUT)


def assert_refused(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 with exactly one line on stderr (`error: ...`) holding every fragment, no traceback, nothing on stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: "), lines
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert proc.stdout.strip() == ""
    return lines[0]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, rows, *, bit_depth: int = 8, colour_type: int = 0, before: bytes = b"") -> bytes:
    """A PNG from its chunks: IHDR (whatever size it claims), `before` (e.g. text chunks), IDAT of `rows` (each a
    scanline without its filter byte; an iterable, so huge images stream through zlib), IEND."""
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(b"\0" + row) for row in rows) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + before + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
