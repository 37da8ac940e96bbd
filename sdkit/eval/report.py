"""How every metric command reports: a JSON file beside the images (written atomically), and on stdout either that
JSON (`--json`) or a table."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdkit import atomic
from sdkit.outputs import confine


@dataclass(frozen=True)
class Report:
    """What a metric task returns. (Not named `files`: a recipe file's ${jobs.NAME.output} stays the task's output
    field, the folder or file evaluated, on every process.)"""

    data: dict[str, Any]
    written: list[Path] = field(default_factory=list)  # the JSON first, then any figures


def write_json(path: Path, data: dict[str, Any]) -> Path:
    confine(path, "report")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_text(path, json.dumps(data, indent=2) + "\n")


def show(data: dict[str, Any], as_json: bool, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
         footer: str = "") -> None:  # fmt: skip
    """The report on stdout: its JSON, or a table of `rows` (and a footer line)."""
    if as_json:
        print(json.dumps(data, indent=2), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    console = Console(file=sys.stdout, width=140)
    console.print(table)
    if footer:
        console.print(footer, markup=False, highlight=False)
