"""Peak memory, step time and output size: full DreamBooth vs DreamBooth LoRA vs textual inversion on a bigger model.

On the 4 M-parameter shapes model every run's peak RSS is the process's own (torch + diffusers, ~1.3 GB), so the
shapes benchmark cannot show what LoRA saves. Here the same commands train an SD-1.5-layout pipeline with random
weights (a step's memory and compute do not depend on the weights): the SD 1.5 UNet configuration at `--width`
times its channel widths (1.0 = SD 1.5's 860 M-parameter UNet; the default 0.5 keeps a full fine-tune within a
shared 24 GB machine), CLIP-L-sized text encoder, SD's VAE. Each run: a few steps at `--resolution`, batch 1 with
prior preservation (so 2 images a step, as DreamBooth trains), one thread, in a child process (os.wait4 peak RSS).
The full fine-tune also runs with gradient checkpointing, and with 8-bit AdamW when bitsandbytes is installed.
seconds_per_step is run.json's training time (loop set-up and the final save included) over the steps: use enough
steps for it to mean the step time.

    OMP_NUM_THREADS=1 python bench/finetune_memory.py --out runs/finetune-memory --results bench/results/finetune_memory.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SDKIT = [sys.executable, "-m", "sdkit"]


def sd15_like(width: float):
    """An ArchitectureSpec with SD 1.5's layout; UNet channels scaled by `width` (multiples of 32)."""
    from sdkit.architectures import PRESETS, ArchitectureSpec, TextEncoderSpec

    channels = tuple(max(32, round(c * width / 32) * 32) for c in (320, 640, 1280, 1280))
    unet = {
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "block_out_channels": channels,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
    }  # fmt: skip
    vae = {
        "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
        "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "scaling_factor": 0.18215,
    }  # fmt: skip
    base = PRESETS["tiny-sd"]
    return ArchitectureSpec(
        name=f"sd15-x{width:g}", description="SD 1.5 layout, random weights", family="sd", image_size=512,
        model_max_length=77, unet=unet, vae=vae,
        text_encoder=TextEncoderSpec(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        text_encoder_2=None, scheduler_class=base.scheduler_class, scheduler=base.scheduler,
    )  # fmt: skip


def build(folder: Path, width: float) -> dict[str, int]:
    from sdkit.architectures import build_pipeline, save_pipeline

    pipe = build_pipeline(sd15_like(width), seed=0)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "text_encoder", "vae")}
    if not (folder / "model_index.json").is_file():
        save_pipeline(pipe, folder)
    return counts


def data(root: Path) -> Path:
    """Four 256 px images as an imagefolder (instance images, and their captions as the class images)."""
    from sdkit.data.shapes import write_dataset

    if not (root / "metadata.jsonl").is_file():
        write_dataset(root, 4, seed=0, size=256, shapes=["star"], split="all")
    return root


def train(name: str, command: list[str], out: Path) -> dict[str, Any]:
    run_dir = out / name
    log_path = out / f"{name}.log"
    with open(log_path, "w") as log:
        started = time.monotonic()
        proc = subprocess.Popen([*SDKIT, "train", *command, "-o", str(run_dir)], stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed: see {log_path}")
    info = json.loads((run_dir / "run.json").read_text())
    files = [Path(line) for line in log_path.read_text().splitlines() if line.startswith(str(run_dir))]
    size = sum(p.stat().st_size for f in files for p in ([f] if f.is_file() else f.rglob("*")) if p.is_file())
    result = {
        "wall_seconds": round(time.monotonic() - started, 1), "steps": info["steps"],
        "seconds_per_step": round(info["seconds"] / info["steps"], 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "output_bytes": size, "outputs": [f.name for f in files],
    }  # fmt: skip
    print(name, result, file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/finetune-memory"))
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--width", type=float, default=0.5, help="UNet channel width relative to SD 1.5 (1.0 = SD 1.5)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    out = args.out
    model = out / f"sd15-x{args.width:g}"
    counts = build(model, args.width)
    images = data(out / "data")
    common = ["-m", str(model), "--max-steps", str(args.steps), "--resolution", str(args.resolution), "--threads", "1",
              "--checkpointing-steps", str(args.steps), "--device", "cpu", "--log-every", "1"]  # fmt: skip
    db = ["dreambooth", "--instance-data", str(images), "--instance-prompt", "a {color} sks shape", "--train-batch-size", "1",
          "--with-prior-preservation", "--class-prompt", "a shape", "--class-data", str(images), "--num-class-images", "4"]  # fmt: skip
    runs = {
        "dreambooth_full": [*db, *common],
        "dreambooth_full_gradient_checkpointing": [*db, "--gradient-checkpointing", *common],
        "dreambooth_lora_r4": [*db, "--lora", "--rank", "4", *common],
        "textual_inversion": ["textual-inversion", "--data", str(images / "images"), "--token", "<sks>", "--init-token", "shape",
                              "--train-batch-size", "2", *common],
    }  # fmt: skip
    if importlib.util.find_spec("bitsandbytes") is not None:
        runs["dreambooth_full_8bit_adam"] = [*db, "--use-8bit-adam", *common]
    results = {"model": {"parameters": counts, "width": args.width, "resolution": args.resolution}, "runs": {}}
    for name, command in runs.items():
        saved = out / f"{name}.json"
        if not saved.is_file():
            result = train(name, command, out)
            checkpoint = out / name / "checkpoints" / f"step-{args.steps}"
            result["checkpoint_bytes"] = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
            saved.write_text(json.dumps(result))
        results["runs"][name] = json.loads(saved.read_text())
    text = json.dumps(results, indent=2)
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
