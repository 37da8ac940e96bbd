"""Training datasets as people keep them, read and checked before any model loads.

    rows = read_dataset(DIR)      # [{"file_name": Path, "text": str, "repeats": int, ...}]; UserErrors name the file

Three layouts, recognised in this order:
  * a Hugging Face imagefolder: images plus metadata.jsonl (`sdkit.training.data.read_imagefolder`);
  * kohya sd-scripts' folders: `DIR/N_name/` whose N is how often each image repeats per epoch, each image with its
    caption in `image.txt` or `image.caption` beside it (the first line, as kohya reads it); a folder with no caption
    files at all is captioned by its name (kohya's class-token captions: `10_sks dog/` → "sks dog");
  * a plain folder of images, each with its `.txt` (or `.caption`) caption beside it.

An image without a caption (where others have one), a folder without images, an empty caption and a file that is not
an image are UserErrors naming the file, before anything loads. Caption files are read up to 64 kB.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.training.data import IMAGE_SUFFIXES, check_image, read_imagefolder

CAPTION_EXTENSIONS = (".txt", ".caption")
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")
MAX_CAPTION_BYTES = 64 * 1024
LAYOUTS = "an imagefolder (images + metadata.jsonl), kohya folders (N_name/ with image.txt captions) or images with .txt captions"


def read_dataset(
    data_dir: Path,
    caption_column: str = "text",
    *,
    caption_extension: str | None = None,
    max_rows: int | None = None,
    captions_required: bool = True,
) -> list[dict[str, Any]]:
    """The dataset's rows: "file_name" (an absolute Path), the caption under `caption_column` (None for a plain
    folder without caption files when `captions_required` is false) and "repeats" (kohya's N, else 1)."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise UserError(f"dataset folder {data_dir} does not exist: give {LAYOUTS}")
    if (data_dir / "metadata.jsonl").is_file():
        rows = read_imagefolder(data_dir, caption_column, max_rows=max_rows)
        return [{**row, "repeats": 1} for row in rows]
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and KOHYA_FOLDER.match(p.name))
    loose = images_in(data_dir)
    if folders and loose:
        raise UserError(
            f"{data_dir} holds kohya folders ({folders[0].name}/) and loose images ({loose[0].name}): move the images "
            "into an N_name/ folder"
        )
    if folders:
        rows = [row for folder in folders for row in _kohya_folder(folder, caption_column, caption_extension)]
    else:
        if not loose:
            raise UserError(f"{data_dir} holds no images and no metadata.jsonl: give {LAYOUTS}")
        captions = [caption_of(image, caption_extension) for image in loose]
        if not any(c is not None for c in captions):
            if captions_required:
                raise UserError(
                    f"{data_dir} has {len(loose)} images but no captions and no metadata.jsonl: add IMAGE.txt beside each "
                    f"image (e.g. {loose[0].stem}.txt), or a metadata.jsonl"
                )
            captions = [None] * len(loose)
        else:
            _all_captioned(loose, captions)
        rows = [{"file_name": image, caption_column: caption, "repeats": 1} for image, caption in zip(loose, captions, strict=True)]
    for row in rows:
        check_image(row["file_name"], str(data_dir))
    return rows[:max_rows] if max_rows else rows


def images_in(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def caption_of(image: Path, extension: str | None = None) -> str | None:
    """The first line of the image's caption file (`extension`, or .txt, else .caption); None when there is none."""
    for suffix in (extension,) if extension else CAPTION_EXTENSIONS:
        path = image.with_suffix(suffix)
        if path.is_file():
            with path.open("rb") as f:
                raw = f.read(MAX_CAPTION_BYTES)
            try:
                lines = raw.decode("utf-8-sig").splitlines()
            except UnicodeDecodeError:
                raise UserError(f"caption file {path} is not UTF-8 text: save it as UTF-8") from None
            caption = lines[0].strip() if lines else ""
            if not caption:
                raise UserError(f"caption file {path} is empty: write the caption on its first line, or remove the image")
            return caption
    return None


def _all_captioned(images: Sequence[Path], captions: Sequence[str | None]) -> None:
    for image, caption in zip(images, captions, strict=True):
        if caption is None:
            raise UserError(
                f"image {image} has no caption file ({image.stem}.txt or {image.stem}.caption) although others in its "
                "folder have one: add it, or remove the image"
            )


def _kohya_folder(folder: Path, caption_column: str, extension: str | None) -> list[dict[str, Any]]:
    repeats, name = KOHYA_FOLDER.match(folder.name).groups()
    if int(repeats) < 1:
        raise UserError(f"kohya folder {folder} repeats its images {repeats} times: name it N_{name} with N >= 1")
    images = images_in(folder)
    if not images:
        raise UserError(f"kohya folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add some or remove it")
    captions = [caption_of(image, extension) for image in images]
    if any(c is not None for c in captions):
        _all_captioned(images, captions)
    else:  # kohya's class-token captions: the folder's name
        captions = [name.strip()] * len(images)
    return [{"file_name": image, caption_column: caption, "repeats": int(repeats)} for image, caption in zip(images, captions, strict=True)]


def repeated(rows: Sequence[dict[str, Any]]) -> list[int]:
    """The row of every dataset item: each row `repeats` times (kohya's N)."""
    return [i for i, row in enumerate(rows) for _ in range(row.get("repeats", 1))]
