"""Helpers for driving the real CLI in tests."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from sdkit.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


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
