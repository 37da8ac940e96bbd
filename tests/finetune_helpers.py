"""Shared by the fine-tuning tests: tiny datasets, generating through the CLI, and the same image from a pipeline in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cli_helpers import invoke
from PIL import Image

SEED, STEPS, CFG = 2, 3, 7.0  # what `sdkit generate` below uses (cfg: its default)
GEN = ["--steps", str(STEPS), "--seed", str(SEED), "--scheduler", "Euler"]
FAST = {"threads": 1, "log_every": 1, "validation_inference_steps": 2, "validation_images": 1}


def shapes_dataset(root: Path, n: int = 6) -> Path:
    """A 32 px shapes-world imagefolder (images/ + metadata.jsonl captions)."""
    from sdkit.data.shapes import write_dataset

    return write_dataset(root, n, seed=0, size=32)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def generate(out: Path, model: Path, prompt: str, *extra) -> np.ndarray:
    """`sdkit generate` one 32 px image; its pixels."""
    result = invoke("generate", prompt, "-m", model, *GEN, "-o", out, *map(str, extra))
    assert result.exit_code == 0, result.output
    return pixels(next(Path(out).glob("*.png")))


def in_memory(pipe, prompt: str) -> np.ndarray:
    """The image `generate` above makes, from a pipeline object in memory (the trained one, adapters attached)."""
    import torch

    from sdkit import schedulers

    pipe.scheduler = schedulers.build("Euler", pipe.scheduler.config)
    out = pipe(prompt, num_inference_steps=STEPS, guidance_scale=CFG, width=32, height=32, output_type="np",
               generator=torch.Generator("cpu").manual_seed(SEED)).images  # fmt: skip
    return np.asarray(pipe.numpy_to_pil(out)[0]).astype(int)


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
