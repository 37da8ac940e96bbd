"""Score prompt adherence on the shapes world.

    sdkit eval shapes -m shapes --n 200 --cfg 1 --cfg 5

Prompts come from the world's own captions (or a template, for taught concepts), with a seed the training data did
not use; each image is judged by `sdkit.eval.scorer`, which never sees the generator. Rates are the share of images
whose colour / shape / background / all of them match the prompt; "heldout" is the same on the colour x shape
combinations kept out of training (composition). Unclean detections (several blobs, noise) count as wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sdkit import backends, device, schedulers
from sdkit.adapters import adapters_applied, check_file
from sdkit.models import resolve_model
from sdkit.pipelines import PipelineCache
from sdkit.progress import bar
from sdkit.schema.eval import EvalShapesRecipe

METRICS = ("color", "shape", "background", "pattern", "all")


@dataclass(frozen=True)
class Score:
    cfg: float
    n: int
    color: float
    shape: float
    background: float
    pattern: float
    all: float
    rejected: float
    heldout_n: int
    heldout_all: float | None


def run(recipe: EvalShapesRecipe, cache: PipelineCache | None = None) -> list[Score]:
    from sdkit.data.shapes import BASE_SHAPES, sample_world
    from sdkit.outputs import check_output_dir

    # 1. check inputs, then the prompts: the world's captions (or a template) from a seed training did not use
    if recipe.out is not None:
        check_output_dir(recipe.out)
    schedulers.resolve(recipe.scheduler)
    for lora in recipe.lora:
        check_file(lora.path, "--lora", False)
    for emb in recipe.embedding:
        check_file(emb.path, "--embedding", False)
    model = resolve_model(recipe.model)
    engine = generation_settings(recipe)  # the backend, as sdkit generate would run it
    placement = device.resolve(engine.device, backends.torch_dtype(engine), recipe.offload)
    import numpy as np

    shapes = tuple(recipe.shapes or BASE_SHAPES)
    rng = np.random.default_rng(recipe.seed)
    split = "train" if recipe.heldout else "all"
    sets = {"base": sample_world(rng, recipe.n, shapes=shapes, split=split, pattern=recipe.pattern)}
    if recipe.heldout and set(shapes) <= set(BASE_SHAPES):
        sets["heldout"] = sample_world(rng, recipe.n, shapes=shapes, split="heldout", pattern=recipe.pattern)

    # 2. load the model once
    cache = cache if cache is not None else PipelineCache()
    loaded = cache.get(model, placement)
    pipe = loaded.pipe
    pipe.scheduler = schedulers.build(recipe.scheduler, loaded.scheduler_config)

    # 3. generate and score every set at every guidance value
    scores, samples = [], []
    total = len(recipe.cfg) * sum(len(v) for v in sets.values())
    with (
        bar(f"eval {model.name}", total) as advance,
        adapters_applied(pipe, recipe.lora, recipe.embedding, fuse=engine.fuse_lora),
        backends.applied(pipe, engine, model, cache.converted),  # the UNet, VAE and text encoder in OpenVINO, or as loaded
    ):
        for cfg in recipe.cfg:
            judged = {name: judge(pipe, recipe, world, cfg, advance) for name, world in sets.items()}
            samples.extend((f"cfg {cfg}: {s.text}", img) for s, img, _ in judged["base"][:8])
            scores.append(summarise(cfg, judged))

    # 4. report
    report = {"model": model.location, "sha256": model.sha256, "recipe": recipe.model_dump(mode="json"),
              "loras": [str(lora.path) for lora in recipe.lora],
              "scores": [asdict(s) for s in scores]}
    if recipe.out is not None:
        write_report(Path(recipe.out), report, samples)
    if recipe.as_json:
        print(json.dumps(report, indent=2))
    else:
        print_table(model.name, scores)
    return scores


def generation_settings(recipe: EvalShapesRecipe):
    """The eval's model, placement, adapters and backend as a generate recipe, resolved as `sdkit generate` resolves
    them (openvino: CPU, its precision hint, LoRAs fused) and checked by the same one-line errors."""
    from sdkit.schema.generate import GenerateRecipe

    engine = GenerateRecipe(prompt="", model=recipe.model, device=recipe.device, dtype=recipe.dtype, lora=recipe.lora,
                            embedding=recipe.embedding, backend=recipe.backend)  # fmt: skip
    backends.check(engine)
    return backends.resolve(engine)


def prompt_for(recipe: EvalShapesRecipe, sample) -> str:
    if recipe.template is None:
        return sample.text
    return recipe.template.format(color=sample.color, shape=sample.shape, background=sample.background, pattern=sample.pattern)


def judge(pipe, recipe: EvalShapesRecipe, world, cfg: float, advance):
    """[(sample, image, per-attribute verdicts)] for one set of scenes at one guidance value."""
    import torch

    from sdkit.eval.scorer import score_against, score_image

    out = []
    side = world[0].canvas if world else 64
    for start in range(0, len(world), recipe.batch_size):
        batch = world[start : start + recipe.batch_size]
        generators = [torch.Generator("cpu").manual_seed(recipe.seed + start + i) for i in range(len(batch))]
        with torch.inference_mode():
            images = pipe([prompt_for(recipe, s) for s in batch], num_inference_steps=recipe.steps, guidance_scale=cfg,
                          width=side, height=side, generator=generators).images
        for sample, image in zip(batch, images, strict=True):
            expected = sample.fields() | ({"shape": recipe.expect_shape} if recipe.expect_shape else {})
            detection = score_image(image)
            verdict = score_against(expected, detection)
            out.append((sample, image, verdict | {"rejected": not detection.clean}))
        advance(len(batch))
    return out


def summarise(cfg: float, judged) -> Score:
    def rate(items, key):
        return round(sum(v[key] for _, _, v in items) / len(items), 4) if items else None

    base = judged["base"]
    held = judged.get("heldout", [])
    return Score(cfg, len(base), *(rate(base, m) for m in METRICS), rate(base, "rejected"), len(held), rate(held, "all"))


def print_table(name: str, scores: list[Score]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    table = Table("cfg", "n", "colour", "shape", "background", "pattern", "all", "held-out all", "rejected", title=f"shapes eval: {name}")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for s in scores:
        table.add_row(f"{s.cfg:g}", str(s.n), pct(s.color), pct(s.shape), pct(s.background), pct(s.pattern), pct(s.all),
                      pct(s.heldout_all), pct(s.rejected))
    Console(file=sys.stdout, width=140).print(table)


def write_report(out: Path, report: dict, samples) -> None:
    from sdkit.grids import labelled_grid

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    labelled_grid([(label, img.resize((128, 128))) for label, img in samples], columns=8).save(out / "samples.png")
