"""How much of the shapes world a model's VAE can carry: encode → decode renders and score them with the scorer.

A generator can be no better than its decoder, so this is the ceiling of every shapes-world figure: the base world
(solid fills), striped fills (the LoRA benchmark's style) and stars (the DreamBooth concept). Each scene is rendered,
round-tripped through the VAE (posterior mode), and scored on every attribute.

    python -m bench vae_roundtrip                          (the shipped model)
    python -m bench.vae_roundtrip --model runs/shapes-base/vae-decoder/model --n 200
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.common import Figure

SETS = {  # name -> sample_world arguments
    "base world": {"shapes": ("circle", "square", "triangle", "diamond"), "pattern": "solid"},
    "striped": {"shapes": ("circle", "square", "triangle", "diamond"), "pattern": "striped"},
    "star": {"shapes": ("star",), "pattern": "solid"},
}


def roundtrip_scores(model: str = "shapes", n: int = 200, seed: int = 555) -> dict[str, dict[str, float]]:
    """Per set: the share of round-tripped renders whose colour, shape, background, pattern and all are read right."""
    import torch
    from diffusers import AutoencoderKL

    from sdkit.data.shapes import render, sample_world
    from sdkit.eval.scorer import score_against, score_image
    from sdkit.models import resolve_model

    vae = AutoencoderKL.from_pretrained(resolve_model(model, hash_local=False).location, subfolder="vae").eval()
    out = {}
    for name, spec in SETS.items():
        scenes = sample_world(np.random.default_rng(seed), n, split="all", **spec)
        hits = {"color": 0, "shape": 0, "background": 0, "pattern": 0, "all": 0}
        for start in range(0, n, 50):
            batch = scenes[start : start + 50]
            pixels = torch.stack([torch.from_numpy(np.array(render(s))).permute(2, 0, 1) for s in batch]).float() / 127.5 - 1
            with torch.no_grad():
                decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
            images = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            for scene, image in zip(batch, images, strict=True):
                for key, ok in score_against(scene, score_image(image)).items():
                    hits[key] += ok
        out[name] = {k: v / n for k, v in hits.items()}
    return out


def run(model: str = "shapes", n: int = 200) -> list[Figure]:
    scores = roundtrip_scores(model, n)
    figures = []
    for name, s in scores.items():
        key = "shape" if name != "striped" else "pattern"
        figures.append(Figure("vae_roundtrip", f"{name}: {key}", 100 * s[key], "%", "reference (ceiling)", None,
                              f"all {100 * s['all']:.1f} %, colour {100 * s['color']:.1f} %, n={n}"))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vae_roundtrip", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args(argv)
    for name, s in roundtrip_scores(args.model, args.n).items():
        print(f"{name:12s} " + "  ".join(f"{k} {100 * v:5.1f} %" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
