"""Training images as tensors: decoded once, sized (a square, or an aspect-ratio bucket), cropped, with the sizes SDXL's
micro-conditioning records.

    pictures = load_pictures(paths, resolution=64, center_crop=True, bucket_step=16)   # buckets; None: squares
    entries = pictures.entries()           # per image: {"pixels", "target_size", "original_size", "crop"}
    pixels, crops = to_pixels(batch["pixels"], batch["target_size"], batch["crop"], random_flip, generators)

Every image keeps (as diffusers' SDXL training examples record them) its original size (h, w), the size it trains at
(h, w: the square `resolution`, or its bucket) and the top-left corner (top, left) of its crop in the resized image.
With `center_crop` the crop is fixed and only the cropped pixels are kept; otherwise the resized image is kept and the
crop is drawn at every step from the sample's own generator (a flip then mirrors the recorded corner, as cropping the
flipped image would). Images are held as uint8 (a 64 px image is 12 kB); with a frozen VAE `encode_pictures` caches
each image's latent distribution instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from sdkit.errors import UserError
from sdkit.training.buckets import Fit, bucket_sizes, fit_image

RANDOM_CROP = (-1, -1)  # an entry's "crop" when it is drawn at every step


def open_rgb(path: Path) -> Image.Image:
    """Open and fully decode an image as RGB; a broken file, or one past sdkit.images.MAX_PIXELS (from its header, before
    decoding), is a UserError naming it."""
    from sdkit.images import open_checked

    try:
        with open_checked(path, f"image {path}") as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"image {path} cannot be read ({type(err).__name__}: {err}): replace or remove it") from None


def resize_and_crop(image: Image.Image, resolution: int, center_crop: bool) -> Image.Image:
    """Resize the shorter side to `resolution`; with center_crop also crop the centre square."""
    fit = square_fit(image.size, resolution)
    image = _resized(image, fit.resized)
    if center_crop:
        image = _cropped(image, fit)
    return image


def square_fit(size: tuple[int, int], resolution: int) -> Fit:
    """The square of side `resolution`: the shorter side resized to it, the centre cropped."""
    w, h = size
    scale = resolution / min(w, h)
    resized = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    return Fit((resolution, resolution), resized, ((resized[1] - resolution) // 2, (resized[0] - resolution) // 2))


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def _cropped(image: Image.Image, fit: Fit) -> Image.Image:
    top, left = fit.crop
    return image.crop((left, top, left + fit.bucket[0], top + fit.bucket[1]))


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """HWC PIL RGB → CHW uint8 tensor."""
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


@dataclass
class Pictures:
    """Decoded images: uint8 CHW pixels (exactly the target size with a fixed crop, else the resized image), each
    image's target (h, w), original size (h, w) and crop (top, left), `RANDOM_CROP` when drawn at every step."""

    pixels: list[torch.Tensor]
    targets: list[tuple[int, int]]
    originals: list[tuple[int, int]]
    crops: list[tuple[int, int]]
    bucket_step: int | None = None  # aspect-ratio buckets' step in px; None: squares

    def entries(self, latents: Sequence[torch.Tensor] | None = None) -> list[dict[str, Any]]:
        """One dataset entry per image: its pixels (or cached latent distribution) and its sizes as tensors."""
        out = []
        for i, pixels in enumerate(self.pixels):
            entry = {"latent_dist": latents[i]} if latents is not None else {"pixels": pixels}
            entry.update(target_size=torch.tensor(self.targets[i]), original_size=torch.tensor(self.originals[i]),
                         crop=torch.tensor(self.crops[i]))  # fmt: skip
            out.append(entry)
        return out

    @property
    def buckets(self) -> list[tuple[int, int]]:
        """Each image's trained size as (w, h): its bucket."""
        return [(w, h) for h, w in self.targets]


def load_pictures(paths: Sequence[Path], resolution: int, center_crop: bool, bucket_step: int | None = None) -> Pictures:
    """Decode every image once. Without `bucket_step` each trains as a `resolution` square (shorter side resized);
    with it, in the aspect-ratio bucket nearest its shape among `bucket_sizes(resolution, bucket_step)`."""
    sizes = bucket_sizes(resolution, bucket_step) if bucket_step else None
    pictures = Pictures([], [], [], [], bucket_step)
    for path in paths:
        image = open_rgb(Path(path))
        original = (image.height, image.width)
        fit = fit_image(image.size, sizes) if sizes else square_fit(image.size, resolution)
        image = _resized(image, fit.resized)
        if center_crop:
            image = _cropped(image, fit)
        pictures.pixels.append(pil_to_uint8(image))
        pictures.targets.append((fit.bucket[1], fit.bucket[0]))
        pictures.originals.append(original)
        pictures.crops.append(fit.crop if center_crop else RANDOM_CROP)
    return pictures


def to_pixels(
    images: torch.Tensor | Sequence[torch.Tensor],
    targets: torch.Tensor | Sequence[Sequence[int]],
    crops: torch.Tensor | Sequence[Sequence[int]],
    random_flip: bool,
    generators: Sequence[torch.Generator],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images → (float pixels in [-1, 1] on `device`, the crops' top-left corners (n, 2)). Each image is cropped
    to its target (at its fixed corner, or at one drawn from its own generator) and maybe flipped."""
    out, corners = [], []
    for image, target, crop, generator in zip(images, targets, crops, generators, strict=True):
        th, tw = (int(v) for v in target)
        top, left = (int(v) for v in crop)
        _, h, w = image.shape
        if (h, w) != (th, tw):  # a random crop, drawn now
            top = int(torch.randint(0, h - th + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - tw + 1, (1,), generator=generator))
            image = image[:, top : top + th, left : left + tw]
            if random_flip and bool(torch.rand((), generator=generator) < 0.5):
                image, left = image.flip(-1), w - left - tw  # the corner in the flipped image
        elif random_flip and bool(torch.rand((), generator=generator) < 0.5):
            image = image.flip(-1)  # a centre crop is the same in the flipped image
        out.append(image)
        corners.append((max(top, 0), max(left, 0)))
    pixels = torch.stack(out).to(device=device, dtype=torch.float32).div(127.5).sub(1.0)
    return pixels, torch.tensor(corners)


@torch.no_grad()
def encode_latents(vae, images: list[torch.Tensor], batch_size: int, device, dtype) -> torch.Tensor:
    """The VAE's latent distribution parameters (mean ‖ log-variance, N×2C×h×w, fp32 on CPU) of same-size images."""
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack(images[start : start + batch_size]).to(device=device, dtype=dtype).div(127.5).sub(1.0)
        chunks.append(vae.encode(pixels).latent_dist.parameters.float().cpu())
    return torch.cat(chunks)


def encode_pictures(vae, pictures: Pictures, batch_size: int, device, dtype) -> list[torch.Tensor]:
    """`encode_latents` of centre-cropped pictures of any sizes (grouped by size): one distribution per image."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, pixels in enumerate(pictures.pixels):
        by_size.setdefault(tuple(pixels.shape), []).append(i)
    out: list[Any] = [None] * len(pictures.pixels)
    for members in by_size.values():
        encoded = encode_latents(vae, [pictures.pixels[i] for i in members], batch_size, device, dtype)
        for i, dist in zip(members, encoded, strict=True):
            out[i] = dist
    return out


def sample_latents(latent_dist: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw latents from cached distribution parameters (mean ‖ log-variance), as AutoencoderKL's posterior does."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return DiagonalGaussianDistribution(latent_dist).sample(generator=generator)
