"""Progress bars and notices on stderr (stdout carries only results, one path per line)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with it/s and ETA on stderr when it is a terminal; yields `advance(n)`."""
    if not sys.stderr.isatty():  # logs and pipes get no bar: skip importing rich (≈ 0.1 s of every run)
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.speed:.2f} it/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
