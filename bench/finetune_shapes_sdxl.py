"""Does SDXL training learn? The SDXL shapes model (recipes/train/shapes-sdxl.yaml) and sdkit's fine-tunes of it,
scored by `sdkit eval shapes` (cfg 5, 20 steps, DPM++ 2M) and, for the two aspect ratios, by the same scorer.

Goals (issue 24): the base at colour >= 90 %, shape >= 85 %, background >= 90 %; a striped LoRA >= 80 % striped at
weight 1 and <= 5 % at 0; a DreamBooth LoRA "sks" -> star >= 80 % with the base prompts dropping <= 5 points; textual
inversion ("<zig>" -> triangle) >= 60 %; aspect-ratio buckets: a fine-tune on a mixed-aspect world (half 64x96, half
96x64) draws the prompted shape >= 80 % at each aspect, against the same fine-tune on centre crops.

The LoRA, DreamBooth and textual-inversion recipes and data are bench/finetune_shapes.py's (the SD 1.x figures), run
through the SDXL code path: both text encoders (DreamBooth's text-encoder LoRA on both; one embedding per encoder),
the pooled embedding and micro-conditioning. The aspect fine-tunes train the UNet on 2,000 renders of the base world,
each a 64 px scene set into a 64x96 or 96x64 canvas at a random place along its long side: `buckets` at an 80² px
budget (so the buckets are exactly 64x96 and 96x64: 16 px steps, the shapes VAE's factor 4 x the UNet's 4), and
`center_crop` at 64 px without buckets (the 64 px centre square of every image). Images at each aspect are generated
with the SDXL pipeline's own micro-conditioning (original = target size, no crop) and scored by sdkit's scorer after
padding to a square with their border colour (the scorer reads 64 x 64 squares).

    OMP_NUM_THREADS=1 python -m bench.finetune_shapes_sdxl --model runs/shapes-sdxl/base/model \\
        --out runs/finetune-shapes-sdxl --results bench/results/finetune_shapes_sdxl.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.finetune_shapes import INPUTS, RECIPES, TI_TOKEN, make_data, merged, scorer, train, write

LORA_FILE = "pytorch_lora_weights.safetensors"
ASPECTS = {"64x96": (64, 96), "96x64": (96, 64)}  # width x height
ASPECT = {"stage": "unet", "max_steps": 1500, "train_batch_size": 16, "learning_rate": 1e-4, "lr_scheduler": "constant",
          "cache_latents": True, "snr_gamma": 5.0, "caption_dropout": 0.1, "use_ema": True, "ema_decay": 0.999}  # fmt: skip
SDXL_RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "lora_striped": RECIPES["lora_striped"],
    "dreambooth_lora": RECIPES["dreambooth_lora"],
    "textual_inversion": RECIPES["textual_inversion"],
    "buckets": ("text-to-image", {**ASPECT, "resolution": 80, "buckets": True}),
    "center_crop": ("text-to-image", {**ASPECT, "resolution": 64, "buckets": False}),
}
SDXL_INPUTS = {**INPUTS, "buckets": ("mixed", "a red circle on a blue background"),
               "center_crop": ("mixed", "a red circle on a blue background")}  # fmt: skip
EVAL_SEEDS = (1234, 4321)  # DreamBooth's drift: two seeds, 400 prompts


def mixed_aspect_world(out: Path, n: int = 2000, seed: int = 301) -> Path:
    """`n` base-world scenes (64 px), each set into a 64x96 (even rows) or 96x64 canvas of its background colour at a
    random place along the long side; an imagefolder with the world's captions."""
    import numpy as np
    from PIL import Image

    from sdkit.data.shapes import COLORS, render, sample_world

    if (out / "metadata.jsonl").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, sample in enumerate(sample_world(rng, n)):
        size = ASPECTS["64x96"] if i % 2 == 0 else ASPECTS["96x64"]
        canvas = Image.new("RGB", size, COLORS[sample.background])
        shift = int(rng.integers(0, 33))
        canvas.paste(render(sample), (0, shift) if size[1] > size[0] else (shift, 0))
        name = f"images/{i:05d}.png"
        canvas.save(tmp / name)
        rows.append({"file_name": name, "text": sample.text, **sample.fields(), "width": size[0], "height": size[1]})
    (tmp / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(out)
    return out


def square(image):
    """The image padded to a square with its border colour (the scorer reads 64 x 64 squares)."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"))
    border = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3), rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)])
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), tuple(int(v) for v in np.median(border, axis=0)))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def score_at(model: Path | str, width: int, height: int, n: int, steps: int, out: Path, seed: int = 1234) -> dict[str, Any]:
    """Prompts of the base world (seed `seed`, as `sdkit eval shapes`) drawn at width x height, cfg 5, DPM++ 2M; rates
    of colour, shape, background and all from sdkit's scorer; a sample grid in `out`."""
    import numpy as np
    import torch

    from sdkit import device, schedulers
    from sdkit.data.shapes import sample_world
    from sdkit.eval.scorer import score_against, score_image
    from sdkit.grids import labelled_grid
    from sdkit.models import resolve_model
    from sdkit.pipelines import PipelineCache

    loaded = PipelineCache().get(resolve_model(str(model)), device.resolve("cpu", "fp32", "none"))
    pipe = loaded.pipe
    pipe.scheduler = schedulers.build("DPM++ 2M", loaded.scheduler_config)
    world = sample_world(np.random.default_rng(seed), n)
    verdicts, samples = [], []
    for start in range(0, n, 50):
        batch = world[start : start + 50]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(batch))]
        with torch.inference_mode():
            images = pipe([s.text for s in batch], num_inference_steps=steps, guidance_scale=5.0, width=width, height=height,
                          generator=generators).images  # fmt: skip
        for sample, image in zip(batch, images, strict=True):
            verdicts.append(score_against(sample, score_image(square(image))))
            if len(samples) < 8:
                samples.append((sample.text, image))
    out.mkdir(parents=True, exist_ok=True)
    labelled_grid(samples, columns=8).save(out / "samples.png")
    rates = {key: round(sum(v[key] for v in verdicts) / n, 4) for key in ("color", "shape", "background", "all")}
    return {"cfg": 5.0, "n": n, "width": width, "height": height, **rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/shapes-sdxl/base/model", help="the SDXL shapes model")
    parser.add_argument("--out", type=Path, default=Path("runs/finetune-shapes-sdxl"), help="work folder")
    parser.add_argument("--results", type=Path, default=None, help="write the results JSON here too")
    parser.add_argument("--n", type=int, default=200, help="prompts per evaluation")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per evaluation image")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/20 of the training steps, n=10")
    args = parser.parse_args(argv)
    model = str(Path(args.model).resolve())
    if not (Path(model) / "model_index.json").is_file():
        raise SystemExit(f"{model} is not a diffusers folder: train it first (sdkit run recipes/train/shapes-sdxl.yaml)")
    n, out = (10 if args.quick else args.n), args.out
    data = {**make_data(out / "data"), "mixed": mixed_aspect_world(out / "data" / "mixed")}
    trained = {name: train(name, model, data, out, args.quick, SDXL_RECIPES, SDXL_INPUTS) for name in SDXL_RECIPES}
    results: dict[str, Any] = {"model": model, "n": n, "steps": args.steps, "cfg": 5.0, "training": trained, "eval": {}}
    ev = results["eval"]

    score = scorer(ev, out, n, args.steps)

    star = {"template": "a {color} sks on a {background} background", "expect_shape": "star", "shapes": ["star"], "heldout": False}
    striped = {"pattern": "striped", "heldout": False}
    zig = {"template": f"a {{color}} {TI_TOKEN} on a {{background}} background", "expect_shape": "triangle",
           "shapes": ["triangle"], "heldout": False}  # fmt: skip
    score("base/world", model, EVAL_SEEDS)
    score("lora_striped@0/striped", model, **striped)
    score("lora_striped@1/striped", merged(model, out / "merged/striped", [(out / "lora_striped" / LORA_FILE, 1.0)]), **striped)
    db = merged(model, out / "merged/dreambooth_lora", [(out / "dreambooth_lora" / LORA_FILE, 1.0)])
    score("base/sks_star", model, **star)
    score("dreambooth_lora/sks_star", db, **star)
    score("dreambooth_lora/world", db, EVAL_SEEDS)
    score("base/zig_triangle", model, **zig)
    ti = merged(model, out / "merged/ti", embedding=out / "textual_inversion/learned_embeds.safetensors")
    score("textual_inversion/zig_triangle", ti, **zig)
    for name, folder in (("base", model), ("buckets", out / "buckets/model"), ("center_crop", out / "center_crop/model")):
        for aspect, (width, height) in ASPECTS.items():
            ev[f"{name}@{aspect}/world"] = score_at(folder, width, height, n, args.steps, out / "eval" / f"{name}_{aspect}")
    print(write(results, out, args.results, summary))
    return 0


def summary(results: dict[str, Any]) -> str:
    ev = results["eval"]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    base = ev["base/world"]
    lines = [
        f"base             colour {pct(base['color'])}, shape {pct(base['shape'])}, background {pct(base['background'])}, all {pct(base['all'])}",
        f"LoRA striped     weight 1: {pct(ev['lora_striped@1/striped']['pattern'])}, weight 0: {pct(ev['lora_striped@0/striped']['pattern'])}",
        f"DreamBooth LoRA  sks->star {pct(ev['dreambooth_lora/sks_star']['shape'])} (base {pct(ev['base/sks_star']['shape'])}); "
        f"world {pct(ev['dreambooth_lora/world']['all'])} vs base {pct(base['all'])}",
        f"Textual inv.     <zig>->triangle {pct(ev['textual_inversion/zig_triangle']['shape'])} (base {pct(ev['base/zig_triangle']['shape'])})",
    ]
    for name in ("base", "buckets", "center_crop"):
        shapes = ", ".join(f"{a} {pct(ev[f'{name}@{a}/world']['shape'])}" for a in ASPECTS)
        lines.append(f"aspects {name:11s} shape {shapes}")
    for name, t in results["training"].items():
        lines.append(f"train {name:18s} {t['steps']} steps {t['wall_seconds']} s wall, peak RSS {t['peak_rss_mb']} MB, files {t['file_bytes']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
