"""Aspect-ratio buckets: kohya's bucket sizes and image fit, batches from one bucket in an order fixed by seed and epoch,
and training on mixed portrait and landscape images: both buckets train, exact resume holds, `--no-buckets` crops."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import FAST, invoke, tensors
from PIL import Image

from sdkit.lora_io import LORA_FILE
from sdkit.training.buckets import BucketBatches, bucket_sizes, fit_image, step_for


def test_bucket_sizes_are_kohyas_at_512() -> None:
    # kohya sd-scripts' make_bucket_resolutions((512, 512), 256, 1024, 64): each width with its largest height within
    # 512² px, and both ways round
    widths = [(256, 1024), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448), (640, 384), (704, 320),
              (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256)]  # fmt: skip
    sizes = bucket_sizes(512, 64)
    assert sorted(sizes) == sorted({*widths, *((h, w) for w, h in widths)}) and len(sizes) == 17
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in sizes)


def test_an_image_goes_to_the_nearest_bucket_with_the_least_crop() -> None:
    fit = fit_image((1200, 800), bucket_sizes(512, 64))  # 3:2 -> 640x384 (5:3) is nearer than 576x448
    assert fit.bucket == (640, 384) and fit.resized == (640, 427) and fit.crop == (21, 0)
    tall = fit_image((64, 96), bucket_sizes(80, 16))  # the shapes world's portrait images at an 80² px budget
    assert tall.bucket == (64, 96) and tall.resized == (64, 96) and tall.crop == (0, 0)  # no crop at all


def test_the_step_follows_the_model(tiny_sd_dir: Path) -> None:
    from sdkit.architectures import build_pipeline

    assert step_for(build_pipeline("shapes"), 64) == 16  # VAE factor 4 x UNet downsampling 4
    assert step_for(build_pipeline("tiny-sd"), 32) == 4  # 2 x 2
    assert step_for(build_pipeline("tiny-sd"), 512) == 64  # kohya's for models made at 512 px or more


def test_batches_come_from_one_bucket_in_an_order_fixed_by_seed_and_epoch() -> None:
    buckets = [(64, 96)] * 5 + [(96, 64)] * 7
    sampler = BucketBatches(buckets, batch_size=2, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 3 + 4  # the last batch of a bucket may be smaller
    assert all(len({buckets[i] for i in batch}) == 1 for batch in first)
    assert sorted(i for batch in first for i in batch) == list(range(12))  # every image once per epoch
    assert list(BucketBatches(buckets, 2, 3)) == first
    sampler.sampler.set_epoch(1)  # accelerate sets the epoch through `sampler`
    assert list(sampler) != first


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """8 captioned images, half 24x40 (portrait), half 40x24 (landscape), as .txt captions beside them."""
    folder = tmp_path_factory.mktemp("buckets") / "mixed"
    folder.mkdir()
    colors = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)]
    for i in range(8):
        size = (24, 40) if i % 2 else (40, 24)
        Image.new("RGB", size, colors[i % 4]).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"a {'tall' if i % 2 else 'wide'} picture\n")
    return folder


def train(tiny_sd_dir: Path, data: Path, out: Path, *extra: str):
    args = ["train", "lora", "-m", tiny_sd_dir, "--data", data, "-o", out, "--max-steps", "4", "--train-batch-size", "2",
            "--learning-rate", "0.05", "--checkpointing-steps", "2", "--threads", "1", "--resolution", "32", *extra]  # fmt: skip
    return invoke(*args)


def test_mixed_data_trains_in_buckets_and_resumes_exactly(tiny_sd_dir: Path, mixed: Path, tmp_path: Path) -> None:
    full = train(tiny_sd_dir, mixed, tmp_path / "full")
    assert full.exit_code == 0, full.output
    assert "aspect-ratio buckets (sides in steps of 4 px): 2 buckets: 24x40 (4), 40x24 (4)" in full.stderr  # on by default
    resumed = train(tiny_sd_dir, mixed, tmp_path / "resumed", "--resume", tmp_path / "full/checkpoints/step-2")
    assert resumed.exit_code == 0, resumed.output
    a, b = tensors(tmp_path / "full" / LORA_FILE), tensors(tmp_path / "resumed" / LORA_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed bucketed run differs from the uninterrupted one"
    squares = train(tiny_sd_dir, mixed, tmp_path / "squares", "--no-buckets")
    assert squares.exit_code == 0 and "buckets" not in squares.stderr
    c = tensors(tmp_path / "squares" / LORA_FILE)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # centre-cropped squares train something else
    recipe = json.loads(json.dumps(__import__("yaml").safe_load((tmp_path / "full/recipe.yaml").read_text())))
    assert recipe["buckets"] is None and recipe["resolution"] == 32


def test_sdxl_micro_conditioning_gets_each_bucket(tiny_sdxl_dir: Path, mixed: Path, tmp_path: Path) -> None:
    from sdkit.schema.finetune import TrainLoraRecipe
    from sdkit.tasks.train_lora import LoraTrainer
    from sdkit.training.trainer import train as run_trainer

    seen = []

    class Recording(LoraTrainer):
        def prepare(self, s):
            spec = super().prepare(s)
            unet = s.pipe.unet
            original = unet.forward

            def forward(sample, timesteps, hidden, **kwargs):
                seen.append(kwargs["added_cond_kwargs"]["time_ids"].tolist())
                return original(sample, timesteps, hidden, **kwargs)

            unet.forward = forward
            return spec

    recipe = TrainLoraRecipe(model=str(tiny_sdxl_dir), data_dir=mixed, output_dir=tmp_path / "run", max_steps=4,
                             train_batch_size=2, resolution=32, checkpointing_steps=None, **FAST)  # fmt: skip
    run_trainer(Recording(recipe))
    rows = {tuple(row) for batch in seen for row in batch}
    assert rows == {(24.0, 40.0, 0.0, 0.0, 24.0, 40.0), (40.0, 24.0, 0.0, 0.0, 40.0, 24.0)}  # h, w: whole, uncropped


@pytest.mark.parametrize(
    "trainer",
    [
        ["dreambooth", "--instance-prompt", "a sks picture", "--lora"],
        ["textual-inversion", "--token", "<pic>", "--init-token", "circle"],
        ["text-to-image"],
        ["controlnet", "--control-type", "canny"],
    ],
)
def test_every_trainer_trains_in_buckets(trainer: list[str], tiny_sd_dir: Path, mixed: Path, tmp_path: Path) -> None:
    import json as json_

    data = mixed
    if trainer[0] == "textual-inversion":  # images without captions: captioned from the templates
        data = tmp_path / "bare"
        data.mkdir()
        for image in mixed.glob("*.png"):
            Image.open(image).save(data / image.name)
    if trainer[0] == "controlnet":  # an imagefolder with a control map of each image's size
        data = tmp_path / "control"
        data.mkdir()
        rows = []
        for image in sorted(mixed.glob("*.png")):
            Image.open(image).save(data / image.name)
            Image.open(image).convert("L").convert("RGB").save(data / f"map-{image.name}")
            rows.append({"file_name": image.name, "conditioning_image": f"map-{image.name}", "text": "a picture"})
        (data / "metadata.jsonl").write_text("".join(json_.dumps(r) + "\n" for r in rows))
    flag = "--instance-data" if trainer[0] == "dreambooth" else "--data"
    result = invoke("train", trainer[0], "-m", tiny_sd_dir, flag, data, "-o", tmp_path / "run", *trainer[1:], "--max-steps",
                    "2", "--train-batch-size", "2", "--threads", "1", "--resolution", "32", "--checkpointing-steps", "1000")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"aspect-ratio buckets \(sides in steps of 4 px\): 2 buckets: 24x40 \(\d+\), 40x24 \(\d+\)", result.stderr)
