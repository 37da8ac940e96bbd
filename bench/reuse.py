"""Reuse: one recipe file of 8 generate jobs vs 8 separate `sdkit generate` processes (goal ≤ 0.35x).

Uses a tiny random-weight SD pipeline built locally (sdkit.architectures "tiny-sd"), so the figure measures what
sdkit adds around the model: process start, imports, loading, hashing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import PY, Figure, median_of, wall

SDKIT = str(Path(PY).parent / "sdkit")
ENV = {"HF_HUB_OFFLINE": "1"}


def run(repeats: int = 3) -> list[Figure]:
    from sdkit.architectures import build_pipeline, save_pipeline

    root = Path(tempfile.mkdtemp(prefix="sdkit-bench-reuse-"))
    model = save_pipeline(build_pipeline("tiny-sd", seed=0), root / "model")
    seeds = range(1, 9)
    recipe = root / "eight.yaml"
    jobs = "\n".join(f"  - {{task: generate, prompt: a red circle, seed: {s}, cfg: {1 + s % 4}}}" for s in seeds)
    recipe.write_text(f"defaults: {{model: {model}, steps: 4, out: {root / 'run'}}}\njobs:\n{jobs}\n")

    def separate() -> float:
        return sum(wall([SDKIT, "generate", "a red circle", "-m", str(model), "--steps", "4", "--seed", str(s),
                         "--cfg", str(1 + s % 4), "-o", str(root / "cli")], ENV) for s in seeds)

    cli = median_of(repeats, separate)
    one = median_of(repeats, lambda: wall([SDKIT, "run", str(recipe)], ENV))
    ratio = one / cli
    return [
        Figure("reuse", "8 separate sdkit generate", cli, "s", "reference", None),
        Figure("reuse", "one 8-job recipe", one, "s", "≤ 0.35× separate runs", ratio <= 0.35,
               f"{ratio:.3f}× (tiny model, 4 steps, median of {repeats})"),
    ]
