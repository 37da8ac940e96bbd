"""Aspect-ratio buckets, as kohya sd-scripts makes them: train portrait and landscape images whole, not centre-cropped.

    sizes = bucket_sizes(512, step=64)                 # [(w, h), ...] with w * h <= 512², sides multiples of 64
    fit = fit_image((1200, 800), sizes)               # the bucket nearest in aspect ratio, the covering resize, the crop
    sampler = BucketBatches([fit.bucket for fit in fits], batch_size=4, seed=0)   # every batch from one bucket

* The buckets (kohya's `make_bucket_resolutions`): the square of side `resolution` (rounded down to the step), and for
  every width from `min_side` to `max_side` in steps of `step` the largest height within the pixel budget
  `resolution²`, both ways round.
* An image goes to the bucket whose aspect ratio is nearest its own (kohya's `select_bucket`), is resized to cover it
  (one side equal, the other at least as long) and cropped at the centre: the crop is as small as the buckets allow
  and is recorded (top, left) for SDXL's micro-conditioning.
* `BucketBatches` is a batch sampler: each epoch shuffles every bucket's images and the order of the batches, from a
  generator seeded by (seed, epoch) alone, so a resumed run sees the same batches in the same order. accelerate sets
  the epoch through its `sampler` attribute (`DataLoaderShard.set_epoch`), with one process or several.

The step: kohya uses 64 px for SD and SDXL (a multiple of the VAE factor 8 times the UNet's downsampling). Models
made at small sizes (the shapes world's 64 px, the tiny test models) use their own constraint instead, the VAE factor
times the UNet's downsampling 2^(down blocks - 1): 16 px for the shapes architectures (4 x 4), 4 px for the tiny
ones (2 x 2); a latent of any multiple of that passes through every down and up block whole (`step_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

KOHYA_STEP = 64  # kohya's bucket_reso_steps for SD 1.x/2.x and SDXL
KOHYA_MIN_NATIVE = 512  # models made at this size or larger use KOHYA_STEP


def step_for(pipe, native: int) -> int:
    """The bucket step for a pipeline: 64 px for models made at 512 px or more, else the VAE factor times the UNet's
    downsampling (the smallest size change every block accepts)."""
    if native >= KOHYA_MIN_NATIVE:
        return KOHYA_STEP
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return vae_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1)


def bucket_sizes(resolution: int, step: int, min_side: int | None = None, max_side: int | None = None) -> list[tuple[int, int]]:
    """(width, height) buckets within the pixel budget resolution², sides multiples of `step` between `min_side`
    (default resolution / 2) and `max_side` (default 2 x resolution), sorted by aspect ratio."""
    budget = resolution * resolution
    low = max(step, (min_side or resolution // 2) // step * step)
    high = max(low, (max_side or resolution * 2) // step * step)
    square = max(step, resolution // step * step)
    sizes = {(square, square)}
    for width in range(low, high + 1, step):
        height = min(high, budget // width // step * step)
        if height >= low:
            sizes.update({(width, height), (height, width)})
    return sorted(sizes, key=lambda wh: (wh[0] / wh[1], wh[0]))


@dataclass(frozen=True)
class Fit:
    """Where one image goes: its bucket (w, h), the size it is resized to (w, h, covering the bucket) and the crop's
    top-left corner (top, left) in the resized image."""

    bucket: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]


def fit_image(size: tuple[int, int], sizes: Sequence[tuple[int, int]]) -> Fit:
    """The bucket nearest in aspect ratio to an image of `size` (w, h), the resize that covers it and the centre
    crop (kohya's select_bucket and its resize: one side equal to the bucket's, the other rounded half up)."""
    width, height = size
    ratio = width / height
    bucket = min(sizes, key=lambda wh: abs(wh[0] / wh[1] - ratio))
    if ratio > bucket[0] / bucket[1]:  # wider than the bucket: match heights
        scale = bucket[1] / height
    else:
        scale = bucket[0] / width
    resized = (max(bucket[0], int(width * scale + 0.5)), max(bucket[1], int(height * scale + 0.5)))
    crop = ((resized[1] - bucket[1]) // 2, (resized[0] - bucket[0]) // 2)
    return Fit(bucket, resized, crop)


class EpochOf:
    """Holds the epoch for `BucketBatches` where accelerate looks for it (a batch sampler's `sampler.set_epoch`)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class BucketBatches:
    """A batch sampler whose batches each hold images of one bucket: per epoch, each bucket's images shuffled and cut
    into batches of `batch_size` (the last one of a bucket may be smaller, as kohya's), the batches shuffled; all
    drawn from a generator seeded by (seed, epoch)."""

    drop_last = False

    def __init__(self, buckets: Sequence[tuple[int, int]], batch_size: int, seed: int):
        self.batch_size, self.seed, self.sampler = batch_size, seed, EpochOf()
        self.groups: dict[tuple[int, int], list[int]] = {}
        for index, bucket in enumerate(buckets):
            self.groups.setdefault(tuple(bucket), []).append(index)

    def __len__(self) -> int:
        return sum(-(-len(members) // self.batch_size) for members in self.groups.values())

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.sampler.epoch)
        batches = []
        for key in sorted(self.groups):
            members = self.groups[key]
            order = torch.randperm(len(members), generator=generator).tolist()
            shuffled = [members[i] for i in order]
            batches += [shuffled[i : i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)]
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]

    def describe(self) -> str:
        """'3 buckets: 64x96 (12), 96x64 (12), ...' for the log."""
        parts = [f"{w}x{h} ({len(m)})" for (w, h), m in sorted(self.groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
        return f"{len(self.groups)} bucket{'s' * (len(self.groups) != 1)}: " + ", ".join(parts)
