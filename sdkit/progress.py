"""Progress bars and notices on stderr (stdout carries only results, one path per line).

One implementation serves every loop (generation, evaluation, training). On a terminal it is a rich bar with the
step count, extra fields (training's loss and lr), it/s and ETA; both are computed here from the time the bar was
created, so they show from the first step on (rich's own `task.speed` stays None until two updates have arrived).
When stderr is not a terminal (CI, pipes, `2>log`) rich is not used at all, so no control code can reach a log,
whatever FORCE_COLOR or TTY_COMPATIBLE say: the bar prints nothing, or one plain `step k/N ...` line every
`log_every` steps (training).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # None, a replaced stream without isatty, or a closed one
        return False


def live_terminal() -> bool:
    """Whether stderr is a terminal that takes a live bar (not a pipe or file, not TERM=dumb, not TTY_COMPATIBLE=0)."""
    if not isatty(sys.stderr):
        return False
    from rich.console import Console

    console = Console(stderr=True)
    return console.is_terminal and not console.is_dumb_terminal


class StepBar:
    """Progress of `total` steps on stderr: a live rich bar on a terminal, else plain lines every `log_every` steps
    (0: none). `fields` are extra columns (name -> initial text), shown as `name value`. Disabled (`enabled=False`,
    e.g. on non-main processes) it prints nothing at all. Use as a context manager, or call `close()`."""

    def __init__(self, description: str, total: int, *, start: int = 0, fields: dict[str, str] | None = None,
                 log_every: int = 0, enabled: bool = True):  # fmt: skip
        self.total, self.done, self.log_every, self.enabled = total, start, log_every, enabled
        self.fields = dict(fields or {})
        self.window: deque[tuple[float, int]] = deque([(time.monotonic(), start)], maxlen=50)
        self.progress = self.task = None
        if enabled and live_terminal():
            self._start_live(description, start)

    def _start_live(self, description: str, start: int) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in self.fields]
        columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}")]
        # Paths printed on stdout during the bar go above it only when stdout is the terminal too; rich would
        # otherwise send them to stderr (its console's file), emptying `sdkit generate ... > paths.txt`.
        self.progress = Progress(*columns, console=Console(stderr=True), redirect_stdout=isatty(sys.stdout))
        self.task = self.progress.add_task(escape(description), total=self.total, completed=start, rate="- it/s", eta="-",
                                           **self.fields)  # fmt: skip
        self.progress.start()

    def rate_and_eta(self) -> tuple[str, str]:
        """it/s over the last (up to 50) updates, counted from the bar's start; ETA for the remaining steps."""
        (t0, s0), now = self.window[0], time.monotonic()
        speed = (self.done - s0) / (now - t0) if now > t0 and self.done > s0 else 0.0
        if not speed:
            return "- it/s", "-"
        return f"{speed:.2f} it/s", time.strftime("%H:%M:%S", time.gmtime(max(self.total - self.done, 0) / speed))

    def update(self, done: int, **fields: str) -> None:
        """`done` steps are complete; `fields` replace the extra columns' text."""
        if not self.enabled:
            return
        self.done = done
        self.fields.update(fields)
        self.window.append((time.monotonic(), done))
        rate, eta = self.rate_and_eta()
        if self.progress is not None:
            self.progress.update(self.task, completed=done, rate=rate, eta=eta, **self.fields)
        elif self.log_every and (done % self.log_every == 0 or done == self.total):
            extra = "".join(f"  {name} {value}" for name, value in self.fields.items())
            print(f"step {done}/{self.total}{extra}  {rate}  eta {eta}", file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def print(self, message: str) -> None:
        """A notice on stderr (above the bar on a terminal), printed as is: no rich markup or highlighting."""
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A `StepBar` for a loop with nothing but a step count (generation, evaluation); yields `advance(n=1)`."""
    with StepBar(description, total) as steps:
        yield steps.advance
