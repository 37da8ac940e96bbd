"""Reading user images (init images, masks, control maps) with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sdkit.errors import UserError

if TYPE_CHECKING:
    from PIL import Image


def load_image(path: Path, what: str, mode: str = "RGB") -> Image.Image:
    """Open `path` fully (so truncated files fail here) and convert it to `mode`."""
    from PIL import Image, UnidentifiedImageError

    flag = "--" + what.replace(" ", "-")
    if not Path(path).is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{flag} {path} is not a readable image ({type(err).__name__}): give a PNG or JPEG") from None


def check_same_size(image: Image.Image, mask: Image.Image) -> None:
    if image.size != mask.size:
        raise UserError(
            f"--mask is {mask.size[0]}x{mask.size[1]} but --init-image is {image.size[0]}x{image.size[1]}: "
            "give a mask of the same size"
        )
