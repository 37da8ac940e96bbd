"""How faithfully the shipped shapes ControlNet follows its control map, against the same prompts without control.

For held-out scenes (a seed the training data never used; `--split heldout` also keeps to colour x shape pairs the
base model never saw), render the scene, take its Canny map (`sdkit.control.preprocess`, as at generation time) and
generate with the same prompt and seed twice: through `StableDiffusionControlNetPipeline.from_pipe` with the
ControlNet, and through the plain pipeline. Each image's foreground (pixels far from the colour of its border) is
compared with the scene's true shape mask (IoU, centre error), and `sdkit.eval.scorer` reads its colour, shape and
background. A second part conditions on TWO Canny maps at once (MultiControlNet, one shape left, one right) and
counts how often both shapes appear (each mask at least half covered by foreground, and at least half of the
foreground on the two shapes).

    python -m bench controlnet_fidelity        # the goals as figures in bench/results.md (+ controlnet_fidelity.json)
    python -m bench.controlnet_fidelity --model shapes --controlnet sdkit/assets/shapes-canny --n 200 --pairs 50 \
        --cfg 2 5 --out results.json            # the full numbers
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FG_MIN_DISTANCE = 30.0  # as sdkit.eval.scorer: RGB distance from the border colour below which a pixel is background


def foreground(image) -> np.ndarray:
    """Pixels that differ from the image's border colour (the scorer's rule, without its rejection tests)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    ring = np.ones(rgb.shape[:2], bool)
    ring[2:-2, 2:-2] = False
    dist = np.linalg.norm(rgb - np.median(rgb[ring], axis=0), axis=2)
    core = dist[dist > FG_MIN_DISTANCE]
    threshold = max(FG_MIN_DISTANCE, 0.5 * float(np.percentile(core, 25))) if core.size else FG_MIN_DISTANCE
    return dist > threshold


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def centre_error(mask: np.ndarray, x: float, y: float) -> float:
    ys, xs = np.nonzero(mask)
    return float(np.hypot(xs.mean() - x, ys.mean() - y)) if len(xs) else float("nan")


def load(model: str, controlnet: str):
    import diffusers
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    diffusers.utils.logging.set_verbosity_error()  # from_pipe's float32 casting notes
    from sdkit.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(model, hash_local=False), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    net = ControlNetModel.from_pretrained(controlnet)
    single = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=net)
    double = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=[net, net])
    for p in (single, double):
        p.set_progress_bar_config(disable=True)
    return pipe, single, double


def generate(pipe, prompts, seeds, args, cfg, **control):
    import torch

    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(
        prompts, num_inference_steps=args.steps, guidance_scale=cfg, generator=generators, height=args.size,
        width=args.size, **control,
    ).images  # fmt: skip


def single_control(pipes, args, cfg: float) -> dict:
    from sdkit.control import preprocess
    from sdkit.data.shapes import render, render_mask, sample_world
    from sdkit.eval.scorer import score_against, score_image

    samples = sample_world(np.random.default_rng(args.seed), args.n, split=args.split, canvas=args.size)
    pipe, single, _ = pipes
    rows = []
    for start in range(0, args.n, args.batch):
        batch = samples[start : start + args.batch]
        prompts, seeds = [s.text for s in batch], [args.seed + start + i for i in range(len(batch))]
        maps = [preprocess("canny", render(s)) for s in batch]
        with_control = generate(single, prompts, seeds, args, cfg, image=maps, controlnet_conditioning_scale=args.scale)
        without = generate(pipe, prompts, seeds, args, cfg)
        for sample, a, b in zip(batch, with_control, without, strict=True):
            truth = np.asarray(render_mask(sample)) > 127
            row = {"prompt": sample.text}
            for name, image in (("control", a), ("plain", b)):
                fg, scores = foreground(image), score_against(sample, score_image(image))
                row[name] = {"iou": iou(fg, truth), "centre_px": centre_error(fg, sample.x, sample.y), **scores}
            rows.append(row)
        print(f"cfg {cfg} single: {len(rows)}/{args.n}", file=sys.stderr)
    return summarise(rows, ("control", "plain"))


def two_controls(pipes, args, cfg: float) -> dict:
    from sdkit.control import preprocess
    from sdkit.data.shapes import BASE_SHAPES, COLOR_NAMES, Sample, render, render_mask

    rng = np.random.default_rng(args.seed + 1)
    pipe, _, double = pipes
    rows = []
    half = args.size // 2
    for start in range(0, args.pairs, args.batch):
        count = min(args.batch, args.pairs - start)
        prompts, seeds, maps_a, maps_b, truths = [], [], [], [], []
        for i in range(count):
            size = int(rng.integers(round(0.28 * args.size), round(0.36 * args.size) + 1))
            reach = size // 2 + 2
            colours = rng.permutation(COLOR_NAMES)[:3]
            shapes = rng.choice(BASE_SHAPES, 2)
            a = Sample(shapes[0], colours[0], colours[2], int(rng.integers(reach, half - reach + 1)),
                       int(rng.integers(reach, args.size - reach + 1)), size, canvas=args.size)  # fmt: skip
            b = Sample(shapes[1], colours[1], colours[2], int(rng.integers(half + reach, args.size - reach + 1)),
                       int(rng.integers(reach, args.size - reach + 1)), size, canvas=args.size)  # fmt: skip
            prompts.append(a.text)
            seeds.append(args.seed + 100_000 + start + i)
            maps_a.append(preprocess("canny", render(a)))
            maps_b.append(preprocess("canny", render(b)))
            truths.append((np.asarray(render_mask(a)) > 127, np.asarray(render_mask(b)) > 127))
        pairs = [[a, b] for a, b in zip(maps_a, maps_b, strict=True)]  # per prompt: one map per ControlNet
        control = {"image": pairs, "controlnet_conditioning_scale": [args.scale, args.scale]}
        with_control = generate(double, prompts, seeds, args, cfg, **control)
        without = generate(pipe, prompts, seeds, args, cfg)
        for (ta, tb), x, y in zip(truths, with_control, without, strict=True):
            row = {}
            for name, image in (("control", x), ("plain", y)):
                fg = foreground(image)
                cover_a, cover_b = (float(fg[t].mean()) for t in (ta, tb))
                precision = float(fg[ta | tb].sum() / max(fg.sum(), 1))  # foreground that lies on the two shapes
                both = cover_a >= 0.5 and cover_b >= 0.5 and precision >= 0.5
                row[name] = {
                    "iou": iou(fg, ta | tb), "cover_left": cover_a, "cover_right": cover_b, "precision": precision,
                    "both": both,
                }  # fmt: skip
            rows.append(row)
        print(f"cfg {cfg} two controls: {len(rows)}/{args.pairs}", file=sys.stderr)
    return summarise(rows, ("control", "plain"))


def summarise(rows: list[dict], conditions: tuple[str, ...]) -> dict:
    out: dict = {"n": len(rows)}
    for name in conditions:
        keys = rows[0][name].keys()
        stats = {}
        for key in keys:
            values = np.array([float(r[name][key]) for r in rows], dtype=np.float64)
            stats[key] = round(float(np.nanmean(values)), 4)
            if key == "iou":
                stats["iou_median"] = round(float(np.median(values)), 4)
                stats["share_iou_ge_0.8"] = round(float(np.mean(values >= 0.8)), 4)
        out[name] = stats
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.controlnet_fidelity", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes", help="base pipeline (alias, folder or hub id)")
    p.add_argument("--controlnet", default=str(ROOT / "sdkit/assets/shapes-canny"), help="ControlNet folder")
    p.add_argument("--n", type=int, default=200, help="single-control scenes")
    p.add_argument("--pairs", type=int, default=50, help="two-control scenes (0: skip)")
    p.add_argument("--split", default="all", choices=("train", "heldout", "all"), help="colour x shape pairs drawn")
    p.add_argument("--seed", type=int, default=90_000, help="scene and noise seed (training data used 0..10)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, nargs="+", default=[2.0, 5.0], help="guidance scales to measure")
    p.add_argument("--scale", type=float, default=1.0, help="controlnet_conditioning_scale")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    return p


def measure(args: argparse.Namespace) -> dict:
    """Every measurement, per guidance scale: {"cfg 2.0": {"single_control": ..., "two_controls": ...}, ...}."""
    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    pipes = load(args.model, args.controlnet)
    result: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with torch.no_grad():
        for cfg in args.cfg:
            result[f"cfg {cfg}"] = {"single_control": single_control(pipes, args, cfg)}
            if args.pairs:
                result[f"cfg {cfg}"]["two_controls"] = two_controls(pipes, args, cfg)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def run() -> list:
    """`python -m bench controlnet_fidelity`: the issue's goals as Figures (IoU with/without control, colour, two
    controls), at cfg 2 (the best setting measured) and cfg 5; the full numbers go to bench/controlnet_fidelity.json."""
    from bench.common import HERE, Figure

    args = parser().parse_args([])
    result = measure(args)
    (HERE / "controlnet_fidelity.json").write_text(json.dumps(result, indent=2) + "\n")
    figures = []
    for cfg in args.cfg:
        single, two = result[f"cfg {cfg}"]["single_control"], result[f"cfg {cfg}"].get("two_controls")
        with_c, plain = single["control"], single["plain"]
        detail = f"n={single['n']}, cfg {cfg:g}, {args.steps} steps"
        figures += [
            Figure("controlnet", f"mask IoU with control @cfg{cfg:g}", with_c["iou"], "", "≥ 0.8", with_c["iou"] >= 0.8,
                   f"{detail}; {100 * with_c['share_iou_ge_0.8']:.0f} % of images ≥ 0.8; centre error "
                   f"{with_c['centre_px']:.1f} px"),
            Figure("controlnet", f"mask IoU without control @cfg{cfg:g}", plain["iou"], "", "≤ 0.4", plain["iou"] <= 0.4,
                   f"{detail}; centre error {plain['centre_px']:.1f} px"),
            Figure("controlnet", f"colour with control @cfg{cfg:g}", 100 * with_c["color"], "%", "≥ 90 %",
                   with_c["color"] >= 0.9, f"{detail}; without control {100 * plain['color']:.0f} %"),
        ]  # fmt: skip
        if two:
            figures.append(
                Figure("controlnet", f"two controls both shown @cfg{cfg:g}", 100 * two["control"]["both"], "%",
                       "≥ 80 %", two["control"]["both"] >= 0.8,
                       f"n={two['n']}; without control {100 * two['plain']['both']:.0f} %; IoU with the two masks "
                       f"{two['control']['iou']:.2f}")
            )  # fmt: skip
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = measure(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
