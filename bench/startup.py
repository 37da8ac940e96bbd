"""Start-up: `sdkit --help` and `sdkit generate --help` against `python -c "import diffusers"` (goal ≤ 0.05x)."""

from __future__ import annotations

from pathlib import Path

from bench.common import PY, Figure, median_of, wall

SDKIT = str(Path(PY).parent / "sdkit")


def run(repeats: int = 5) -> list[Figure]:
    diffusers = median_of(repeats, lambda: wall([PY, "-c", "import diffusers"]))
    figures = [Figure("startup", "import diffusers", diffusers, "s", "reference", None)]
    for args in (["--help"], ["generate", "--help"]):
        t = median_of(repeats, lambda a=args: wall([SDKIT, *a]))
        ratio = t / diffusers
        figures.append(Figure("startup", f"sdkit {' '.join(args)}", t, "s", "≤ 0.05× import diffusers, ≤ 0.3 s",
                              ratio <= 0.05 and t <= 0.3, f"{ratio:.3f}× import diffusers (median of {repeats})"))
    return figures
