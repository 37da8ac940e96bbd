"""Training data: a Hugging Face "imagefolder" (images + metadata.jsonl), checked, decoded once and kept in memory.

    rows = read_imagefolder(DIR, caption_column="text")      # [{"file_name": Path, "text": str, ...}]; UserErrors
    images = load_images([r["file_name"] for r in rows], resolution=64, center_crop=True)   # uint8 tensors
    dataset = CaptionedImages(images, tokenize(tokenizer, captions))
    pixels = to_pixels(batch["pixels"], 64, center_crop=True, random_flip=False, generator=g)   # float in [-1, 1]

Images are held as uint8 (a 64 px image is 12 kB; 1,000 images at 512 px ≈ 0.8 GB). Augmentations (random crop,
flip) are drawn in the training step from the step's own generator, so a resumed run sees the same ones.
With a frozen VAE, `encode_latents` caches each image's latent distribution (mean and log-variance) instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from sdkit.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def read_imagefolder(
    data_dir: Path,
    caption_column: str = "text",
    image_columns: Sequence[str] = ("file_name",),
    max_rows: int | None = None,
) -> list[dict[str, Any]]:
    """Read and check `data_dir/metadata.jsonl`: every row names existing image file(s) (their headers are read) and a
    non-empty caption.

    Image columns come back as absolute Paths; other columns as they are in the file.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise UserError(f"dataset folder {data_dir} does not exist: give an imagefolder (images + metadata.jsonl)")
    metadata = data_dir / "metadata.jsonl"
    if not metadata.is_file():
        images = [p for p in data_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise UserError(f"{data_dir} has no images and no metadata.jsonl: point --data-dir at an imagefolder dataset")
        raise UserError(
            f"{data_dir} has {len(images)} images but no metadata.jsonl: add one JSON line per image, e.g. "
            '{"file_name": "' + images[0].name + '", "text": "a caption"}'
        )
    rows = []
    with metadata.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{metadata} line {line_no} is not valid JSON ({err.msg}): fix that line") from None
            if not isinstance(row, dict):
                raise UserError(f"{metadata} line {line_no} is not a JSON object: write one {{...}} per line")
            for column in (*image_columns, caption_column):
                if column not in row:
                    raise UserError(
                        f"{metadata} line {line_no} has no {column!r} column (it has: {', '.join(sorted(row))}): "
                        + ("set --caption-column to the caption's column" if column == caption_column else "add it")
                    )
            caption = row[caption_column]
            if not isinstance(caption, str) or not caption.strip():
                raise UserError(
                    f"{metadata} line {line_no} ({row[image_columns[0]]}) has no caption in {caption_column!r}: "
                    "give every image a non-empty caption"
                )
            for column in image_columns:
                path = data_dir / str(row[column])
                if not path.is_file():
                    raise UserError(f"{metadata} line {line_no}: image {path} does not exist: fix {column!r} or add the file")
                check_image(path, f"{metadata} line {line_no}")
                row[column] = path
            rows.append(row)
            if max_rows is not None and len(rows) >= max_rows:
                break
    if not rows:
        raise UserError(f"{metadata} has no rows: add one JSON line per image")
    return rows


def check_image(path: Path, where: str) -> None:
    """Refuse a file that is not an image (a .txt listed in metadata.jsonl, a broken header) from its header alone, so
    a bad dataset fails before any model loads; full decoding (`open_rgb`) comes later, still before anything is
    written."""
    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(
            f"{where}: {path} is not an image ({type(err).__name__}: {err}): list only image files, or replace it"
        ) from None


def open_rgb(path: Path) -> Image.Image:
    """Open and fully decode an image as RGB; a broken file is a UserError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"image {path} cannot be read ({type(err).__name__}: {err}): replace or remove it") from None


def resize_and_crop(image: Image.Image, resolution: int, center_crop: bool) -> Image.Image:
    """Resize the shorter side to `resolution`; with center_crop also crop the centre square."""
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        image = image.resize(size, Image.Resampling.BICUBIC)
    if center_crop:
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    return image


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """HWC PIL RGB → CHW uint8 tensor."""
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_images(paths: Sequence[Path], resolution: int, center_crop: bool) -> list[torch.Tensor]:
    """Decode every image once: CHW uint8 tensors (resolution² with center_crop, else shorter side = resolution)."""
    return [pil_to_uint8(resize_and_crop(open_rgb(p), resolution, center_crop)) for p in paths]


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's model_max_length (what the pipeline's text encoder sees)."""
    return tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


class CaptionedImages:
    """A map-style dataset over in-memory tensors: {"index", "input_ids", "pixels" | "latent_dist"} per item."""

    def __init__(self, input_ids: torch.Tensor, pixels: list[torch.Tensor] | None = None, latent_dist: torch.Tensor | None = None):
        if (pixels is None) == (latent_dist is None):
            raise ValueError("give pixels or latent_dist")
        self.input_ids, self.pixels, self.latent_dist = input_ids, pixels, latent_dist

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"index": index, "input_ids": self.input_ids[index]}
        if self.pixels is not None:
            item["pixels"] = self.pixels[index]
        else:
            item["latent_dist"] = self.latent_dist[index]
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; images of different sizes (random crop pending) stay a list."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "index":
            batch[key] = torch.tensor(values)
        elif all(v.shape == values[0].shape for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


def to_pixels(
    images: torch.Tensor | list[torch.Tensor],
    resolution: int,
    center_crop: bool,
    random_flip: bool,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """uint8 images → float pixels in [-1, 1] on `device`, random crop/flip drawn from `generator` (a CPU one)."""
    out = []
    for image in images:
        if not center_crop:
            _, h, w = image.shape
            top = int(torch.randint(0, h - resolution + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - resolution + 1, (1,), generator=generator))
            image = image[:, top : top + resolution, left : left + resolution]
        if random_flip and bool(torch.rand((), generator=generator) < 0.5):
            image = image.flip(-1)
        out.append(image)
    return torch.stack(out).to(device=device, dtype=torch.float32).div(127.5).sub(1.0)


@torch.no_grad()
def encode_latents(vae, images: list[torch.Tensor], batch_size: int, device, dtype) -> torch.Tensor:
    """The VAE's latent distribution parameters (mean ‖ log-variance, N×2C×h×w, fp32 on CPU) for center-cropped images."""
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack(images[start : start + batch_size]).to(device=device, dtype=dtype).div(127.5).sub(1.0)
        chunks.append(vae.encode(pixels).latent_dist.parameters.float().cpu())
    return torch.cat(chunks)


def sample_latents(latent_dist: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw latents from cached distribution parameters (mean ‖ log-variance), as AutoencoderKL's posterior does."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return DiagonalGaussianDistribution(latent_dist).sample(generator=generator)
