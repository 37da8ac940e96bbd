"""Which sampler at how many steps, on the shapes world: `sdkit eval sweep` over five samplers x 2..50 steps.

    python -m bench sampler_sweep
    (= sdkit eval sweep --world-prompts 100 --samplers Euler --samplers "Euler a" --samplers "DPM++ 2M"
       --samplers UniPC --samplers DDIM --values 2 --values 3 ... --values 50 --cfg 5 --seed 1234 --device cpu)

The embedded shapes model, cfg 5, the same 100 shapes-world prompts and seeds in every cell; adherence = the share
of images whose colour, shape and background the independent scorer (sdkit.eval.scorer) reads as prompted. Figures:
each sampler's adherence at 50 steps, and the fewest steps at which it first reaches 95 % of that. The sweep's plot
and JSON are kept in bench/results/ (sampler_sweep.png, sampler_sweep.json); its 5,500 images go to a temporary
folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import HERE, Figure

SAMPLERS = ("Euler", "Euler a", "DPM++ 2M", "UniPC", "DDIM")
STEPS = (2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50)
PROMPTS = 100
SEED = 1234  # the eval seed sdkit eval shapes uses: not one the training data used


def steps_to_reach(values: list[float], scores: list[float], share: float = 0.95) -> float | None:
    """The fewest steps whose score is at least `share` of the score at the most steps (None if none is)."""
    target = share * scores[-1]
    return next((v for v, s in zip(values, scores, strict=True) if s >= target), None)


def run(prompts: int = PROMPTS) -> list[Figure]:
    from sdkit.schema.eval import EvalSweepRecipe
    from sdkit.tasks import eval_sweep

    with tempfile.TemporaryDirectory(prefix="sdkit-bench-sweep-") as tmp:
        recipe = EvalSweepRecipe(world_prompts=prompts, samplers=list(SAMPLERS), values=list(STEPS), cfg=5.0, seed=SEED,
                                 device="cpu", dtype="fp32", out=Path(tmp))  # fmt: skip
        start = time.perf_counter()
        data = eval_sweep.run(recipe).data
        seconds = time.perf_counter() - start
        results = HERE / "results"
        results.mkdir(exist_ok=True)
        shutil.copyfile(Path(tmp) / "sweep.plot.png", results / "sampler_sweep.png")
    data = {k: v for k, v in data.items() if k not in ("files", "recipe")}
    data["cells"] = [{k: v for k, v in cell.items() if k != "folder"} for cell in data["cells"]]
    data["seconds"] = round(seconds, 1)
    (results / "sampler_sweep.json").write_text(json.dumps(data, indent=2) + "\n")

    figures = []
    for sampler, scores in data["series"].items():
        reached = steps_to_reach(data["values"], scores)
        figures += [
            Figure("sampler_sweep", f"{sampler} adherence @50 steps", 100 * scores[-1], "%", "reference", None,
                   f"n={prompts}, cfg 5"),
            Figure("sampler_sweep", f"{sampler} steps to 95 % of 50-step", reached or 0, "steps", "reference", None,
                   " ".join(f"{v:g}:{100 * s:.0f}" for v, s in zip(data["values"], scores, strict=True))),
        ]  # fmt: skip
    return figures
