"""The embedded shapes model against issue 3's goals: 200 prompts, 20 steps, DPM++ 2M, cfg 1 and 5.

    python -m bench shapes_eval            (or: sdkit eval shapes --n 200 --cfg 1 --cfg 5)
"""

from __future__ import annotations

from bench.common import Figure


def run(model: str = "shapes", n: int = 200) -> list[Figure]:
    from sdkit.schema.eval import EvalShapesRecipe
    from sdkit.tasks import eval_shapes

    scores = {s.cfg: s for s in eval_shapes.run(EvalShapesRecipe(model=model, n=n, cfg=[1.0, 5.0], steps=20,
                                                                  scheduler="DPM++ 2M", device="cpu", dtype="fp32"))}
    low, high = scores[1.0], scores[5.0]
    gain = 100 * (high.all - low.all)
    return [
        Figure("shapes_eval", "colour @cfg5", 100 * high.color, "%", "≥ 95 %", high.color >= 0.95, f"n={n}"),
        Figure("shapes_eval", "shape @cfg5", 100 * high.shape, "%", "≥ 90 %", high.shape >= 0.90, f"n={n}"),
        Figure("shapes_eval", "background @cfg5", 100 * high.background, "%", "≥ 95 %", high.background >= 0.95, f"n={n}"),
        Figure("shapes_eval", "all @cfg5", 100 * high.all, "%", "reference", None, f"rejected {100 * high.rejected:.0f} %"),
        Figure("shapes_eval", "all @cfg1", 100 * low.all, "%", "reference", None, f"rejected {100 * low.rejected:.0f} %"),
        Figure("shapes_eval", "cfg5 - cfg1 (all)", gain, "points", "≥ 20 points", gain >= 20, ""),
        Figure("shapes_eval", "held-out combos all @cfg5", 100 * (high.heldout_all or 0), "%", "≥ 70 %",
               (high.heldout_all or 0) >= 0.70, f"n={high.heldout_n}"),
    ]
