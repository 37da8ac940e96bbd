"""Which sampler at how many steps: one generate recipe swept over samplers x steps (or cfg, or a LoRA's weight), every
cell scored by one metric.

    sdkit eval sweep --world-prompts 20 --samplers Euler --samplers "DPM++ 2M" --values 2 --values 5 --values 20 -o out
    sdkit eval sweep "a photo of a cat" -m sd15 --metric clip --num-images 8 --axis cfg --values 3 --values 7 -o out

Each cell is a `sdkit generate` run (sdkit.tasks.generate with one PipelineCache: the model loads once) into its own
folder, out/NN-<sampler>-<axis>-<value>/, with the same prompts and seeds in every cell (a random seed is drawn once
when none is given), so its images carry their recipes like any generated image. Beside the cells: sweep.json (every
cell's score), sweep.plot.png (the metric against the axis, a line per sampler) and sweep.grid.png (each cell's first
image; a row per sampler, a column per value).

Metrics: `shapes` = the share of images whose colour, shape and background all match the prompt, judged by
sdkit.eval.scorer (the prompts must be shapes-world captions, e.g. --world-prompts); `clip` = the mean CLIP score.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdkit import schedulers
from sdkit.errors import UserError
from sdkit.eval.report import Report, show, write_json
from sdkit.outputs import check_output_dir
from sdkit.pipelines import PipelineCache
from sdkit.progress import bar
from sdkit.schema.adapters import LoraRef
from sdkit.schema.eval import EvalSweepRecipe
from sdkit.schema.generate import SEED_RANGE, GenerateRecipe, image_seed
from sdkit.tasks import generate

METRIC_LABELS = {"shapes": "shapes adherence", "clip": "CLIP score"}  # adherence: colour, shape and background all right
SHAPES_RATES = ("color", "shape", "background", "pattern", "all", "rejected")
GRID_SIDE = 128  # cells smaller than this are enlarged (nearest neighbour) in the grid


@dataclass(frozen=True)
class Cell:
    sampler: str
    value: float
    folder: Path
    score: float
    rates: dict[str, float]
    images: list[Any]  # generate.Result of every image, in prompt order


def run(recipe: EvalSweepRecipe, cache: PipelineCache | None = None) -> Report:
    # 1. everything checked before the model loads: samplers, output folder, model and files, prompts
    samplers = recipe.samplers or [recipe.scheduler]
    for name in samplers:
        schedulers.resolve(name)
    check_output_dir(recipe.out)
    seed = recipe.seed if recipe.seed is not None else secrets.randbelow(SEED_RANGE)
    base = GenerateRecipe.model_validate(recipe.model_dump(include=set(GenerateRecipe.model_fields)) | {"seed": seed})
    generate.check(base)
    prompts = sweep_prompts(recipe, seed)
    expected = expected_scenes(prompts) if recipe.metric == "shapes" else []
    clip = load_metric_clip(recipe) if recipe.metric == "clip" else None

    # 2. every cell: the same prompts and seeds, one generate run per prompt, one shared pipeline cache
    cache = cache if cache is not None else PipelineCache()
    plan = [(i, sampler, value) for i, sampler in enumerate(samplers) for value in recipe.axis_values]
    cell_steps = [generate.effective_steps(cell_recipe(base, recipe, s, v, "", 0, Path())) for _, s, v in plan]
    cells = []
    with bar(f"sweep {len(samplers)}x{len(recipe.axis_values)}", sum(cell_steps) * len(prompts) * recipe.num_images) as advance:
        for i, sampler, value in plan:
            folder = Path(recipe.out) / f"{i + 1:02d}-{slug(sampler)}-{recipe.axis}-{value:g}"
            results = []
            for j, prompt in enumerate(prompts):
                cell = cell_recipe(base, recipe, sampler, value, prompt, image_seed(seed, j * recipe.num_images), folder)
                results += generate.run(cell, cache, advance=advance)
            score, rates = score_cell(recipe, results, expected, clip)
            cells.append(Cell(sampler, value, folder, score, rates, results))

    # 3. the JSON, the plot and the grid beside the cells
    return report(recipe, samplers, seed, len(prompts), cells)


def sweep_prompts(recipe: EvalSweepRecipe, seed: int) -> list[str]:
    """PROMPT, or --world-prompts N captions drawn from the shapes world's training split with `seed`."""
    if not recipe.world_prompts:
        return [recipe.prompt]
    import numpy as np

    from sdkit.data.shapes import sample_world

    return [s.text for s in sample_world(np.random.default_rng(seed), recipe.world_prompts)]


def expected_scenes(prompts: list[str]) -> list[dict[str, str]]:
    from sdkit.data.world import parse_caption

    scenes = [parse_caption(p) for p in prompts]
    bad = next((p for p, s in zip(prompts, scenes, strict=True) if s is None), None)
    if bad is not None:
        raise UserError(
            f"metric shapes scores shapes-world captions such as 'a red circle on a blue background', not {bad!r}: "
            "use --world-prompts N, or --metric clip"
        )
    return scenes  # type: ignore[return-value]


def load_metric_clip(recipe: EvalSweepRecipe):
    from sdkit import device
    from sdkit.eval.clip import load_clip

    return load_clip(recipe.clip_model, device.resolve(recipe.device, "fp32").device)


def cell_recipe(base: GenerateRecipe, recipe: EvalSweepRecipe, sampler: str, value: float, prompt: str, seed: int,
                folder: Path) -> GenerateRecipe:  # fmt: skip
    """The generate recipe of one cell and one prompt."""
    update: dict[str, Any] = {"scheduler": sampler, "prompt": prompt, "seed": seed, "out": folder}
    if recipe.axis == "steps":
        update["steps"] = int(value)
    elif recipe.axis == "cfg":
        update["cfg"] = value
    else:
        update["lora"] = [LoraRef(path=base.lora[0].path, weight=value)]
    return base.model_copy(update=update)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def score_cell(recipe: EvalSweepRecipe, results: list, expected: list[dict[str, str]], clip) -> tuple[float, dict[str, float]]:
    """The cell's score and, for the shapes metric, the rate of each attribute (and of rejected detections)."""
    if recipe.metric == "clip":
        from sdkit.eval.clip import clip_scores, mean

        return mean(clip_scores(clip, [r.image for r in results], [r.recipe.prompt for r in results])), {}
    from sdkit.eval.scorer import score_against, score_image

    verdicts = []
    for k, result in enumerate(results):
        detection = score_image(result.image)
        verdicts.append(score_against(expected[k // recipe.num_images], detection) | {"rejected": not detection.clean})
    rates = {key: sum(v[key] for v in verdicts) / len(verdicts) for key in SHAPES_RATES}
    return rates["all"], rates


def report(recipe: EvalSweepRecipe, samplers: list[str], seed: int, n_prompts: int, cells: list[Cell]) -> Report:
    from sdkit.plots import line_plot

    out = Path(recipe.out)
    label = METRIC_LABELS[recipe.metric]
    series = {s: [c.score for c in cells if c.sampler == s] for s in samplers}
    values = list(recipe.axis_values)
    wide = recipe.axis == "steps" and max(values) >= 8 * min(values)
    plot = line_plot(out / "sweep.plot.png", {s: (values, ys) for s, ys in series.items()}, recipe.axis.replace("-", " "),
                     label, f"{label} vs {recipe.axis} ({n_prompts * recipe.num_images} images per point)", log_x=wide)  # fmt: skip
    grid = write_grid(out / "sweep.grid.png", recipe, cells)
    data = {
        "metric": recipe.metric, "metric_label": label, "axis": recipe.axis, "values": values, "samplers": samplers,
        "seed": seed, "prompts": n_prompts, "images_per_cell": n_prompts * recipe.num_images,
        "series": series,
        "cells": [{"sampler": c.sampler, "value": c.value, "score": c.score, "folder": str(c.folder),
                   **({"rates": c.rates} if c.rates else {})} for c in cells],
        "recipe": recipe.model_dump(mode="json") | {"seed": seed},
        "files": {"plot": str(plot), "grid": str(grid)},
    }  # fmt: skip
    path = write_json(out / "sweep.json", data)
    rows = [(s, *ys) for s, ys in series.items()]
    show(data, recipe.as_json, label, (f"sampler / {recipe.axis}", *(f"{v:g}" for v in values)), rows,
         f"report: {path}; plot: {plot}; grid: {grid}")  # fmt: skip
    return Report(data, [path, plot, grid])


def write_grid(path: Path, recipe: EvalSweepRecipe, cells: list[Cell]) -> Path:
    """Each cell's first image, labelled with its sampler and value: a row per sampler."""
    from PIL import Image

    from sdkit import atomic
    from sdkit.grids import labelled_grid

    def enlarged(image):
        factor = max(1, -(-GRID_SIDE // max(image.size)))
        return image.resize((image.width * factor, image.height * factor), Image.NEAREST)

    items = [(f"{c.sampler}, {recipe.axis} {c.value:g}", enlarged(c.images[0].image)) for c in cells]
    grid = labelled_grid(items, columns=len(recipe.axis_values), title=f"prompt: {cells[0].images[0].recipe.prompt}")
    return atomic.write_file(path, lambda tmp: grid.save(tmp, format="PNG"))
