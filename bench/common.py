"""Timing helpers and the results file. Figures are ratios measured side by side in one run, medians of repeats."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).parent
PY = sys.executable


@dataclass
class Figure:
    bench: str
    name: str
    value: float
    unit: str
    goal: str
    met: bool | None
    detail: str = ""


def wall(command: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def median_of(repeats: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(repeats))


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{model}, {os.cpu_count()} CPUs, {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def write_results(figures: list[Figure], folder: Path | None = None) -> Path:
    """Merge these figures into results.json (by bench+name) and rewrite results.md, in `folder` (default bench/)."""
    folder = Path(folder) if folder is not None else HERE
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {"figures": []}
    merged = {(f["bench"], f["name"]): f for f in old["figures"]}
    merged.update({(f.bench, f.name): asdict(f) for f in figures})
    data = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "figures": list(merged.values())}
    path.write_text(json.dumps(data, indent=2))
    lines = ["# sdkit benchmark results", "", f"Machine: {data['machine']}  ", f"Last run: {data['date']}", "",
             "| bench | figure | value | goal | met | detail |", "|---|---|---|---|---|---|"]
    for f in data["figures"]:
        met = {True: "yes", False: "**no**", None: "-"}[f["met"]]
        lines.append(f"| {f['bench']} | {f['name']} | {f['value']:.3g} {f['unit']} | {f['goal']} | {met} | {f['detail']} |")
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    return folder / "results.md"
