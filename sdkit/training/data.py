"""Training data: a Hugging Face "imagefolder" (images + metadata.jsonl) checked row by row, the dataset of captioned
images the trainers share, and its collate function. Other layouts (kohya's folders, a plain folder of images with
.txt captions) are read by `sdkit.training.datasets`; images become tensors in `sdkit.training.pictures`.

    rows = read_imagefolder(DIR, caption_column="text")      # [{"file_name": Path, "text": str, ...}]; UserErrors
    dataset = CaptionedImages(captions, pictures.entries())
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import UnidentifiedImageError

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
            raise UserError(f"{data_dir} has no images and no metadata.jsonl: point --data (data_dir in a recipe) at an imagefolder dataset")
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
    from sdkit.images import open_checked

    try:
        with open_checked(path, f"{where}: {path}"):  # past sdkit.images.MAX_PIXELS: refused from the header
            pass
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(
            f"{where}: {path} is not an image ({type(err).__name__}: {err}): list only image files, or replace it"
        ) from None


class CaptionedImages:
    """A map-style dataset over in-memory entries: item k is image `order[k]` (default k) with `captions[k]`:
    {"index", "caption", "pixels" | "latent_dist", "target_size", "original_size", "crop"} (`Pictures.entries`). Captions
    stay text: they are tokenised in the training step (shuffled first, with kohya's shuffle_caption)."""

    def __init__(self, captions: Sequence[str], entries: Sequence[dict[str, Any]], order: Sequence[int] | None = None):
        self.captions, self.entries = list(captions), entries
        self.order = list(range(len(self.captions))) if order is None else list(order)
        if len(self.order) != len(self.captions):
            raise ValueError("one caption per item")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "caption": self.captions[index], **self.entries[self.order[index]]}

    def buckets(self, image_buckets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Each item's bucket, from its image's."""
        return [image_buckets[i] for i in self.order]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of one shape; text, and images of different sizes (buckets, random crops pending), stay lists."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "index":
            batch[key] = torch.tensor(values)
        elif all(isinstance(v, torch.Tensor) for v in values) and all(v.shape == values[0].shape for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
