"""Reading user images (init images, masks, control maps) with one-line errors.

An image may have at most `MAX_PIXELS` = 8192 x 8192 = 67,108,864 pixels, the largest output sdkit makes (width and
height <= 8192); a 12000x12000 PNG would take 432 MB decoded as RGB, and a small "decompression bomb" file can claim
far more. The size is read from the file's header (`Image.open` reads no pixel data) and a larger image is refused
before anything is decoded. Pillow's own bomb guard (`Image.MAX_IMAGE_PIXELS`, refusing about 179 Mpx at open) stops
the largest claims before sdkit sees the header; they are reported the same way.

16-bit images: Pillow opens a 16-bit grayscale PNG as mode I;16 (values 0..65535), which `convert("RGB")` clips to
255 (white); it is scaled to 0..255 first. Pillow already reduces 16-bit RGB(A) PNGs to 8 bits per channel.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sdkit.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

MAX_SIDE = 8192
MAX_PIXELS = MAX_SIDE * MAX_SIDE
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_FIX = "give a smaller image (downscale it)"


def load_image(path: Path, what: str, mode: str = "RGB", flag: str | None = None) -> Image.Image:
    """Open `path`, refuse it past MAX_PIXELS before decoding, decode it fully (so truncated files fail here) and
    convert it to `mode` (16-bit grayscale scaled to 8 bits). Messages name it `--what` (or `flag`, e.g. `IMAGE`)."""
    from PIL import UnidentifiedImageError

    flag = flag or "--" + what.replace(" ", "-")
    if not Path(path).is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        with open_checked(path, f"{flag} {path}") as img:
            img.load()
            return to_mode(img, mode)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{flag} {path} is not a readable image ({type(err).__name__}): give a PNG or JPEG") from None


def open_header(path: Path, name: str) -> Image.Image:
    """`Image.open(path)`: reads the header only. Pillow's bomb warning is silenced (sdkit's own limit is lower) and
    its bomb error becomes a UserError naming the pixel count and sdkit's limit."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as err:
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "more pixels than Pillow opens"
        raise UserError(f"{name} claims {size}, more than the limit of {MAX_PIXELS:,} ({MAX_SIDE}x{MAX_SIDE}): {_FIX}") from None


def open_checked(path: Path, name: str) -> Image.Image:
    """`open_header`, then `check_pixels` on the header's size: an image to decode only within MAX_PIXELS."""
    img = open_header(path, name)
    try:
        check_pixels(img.size, name)
    except UserError:
        img.close()
        raise
    return img


def check_pixels(size: tuple[int, int], name: str) -> None:
    """Refuse an image (by its header size) past MAX_PIXELS, before it is decoded."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise UserError(
            f"{name} is {width}x{height} ({width * height:,} pixels), more than the limit of {MAX_PIXELS:,} "
            f"({MAX_SIDE}x{MAX_SIDE}): {_FIX}"
        )


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """`img.convert(mode)`, with 16-bit grayscale scaled from 0..65535 to 0..255 (rounded) instead of clipped."""
    if img.mode not in SIXTEEN_BIT_MODES:
        return img.convert(mode)
    import numpy as np
    from PIL import Image

    wide = np.asarray(img).astype(np.uint32)
    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert(mode)


def check_same_size(image: Image.Image, mask: Image.Image) -> None:
    if image.size != mask.size:
        raise UserError(
            f"--mask is {mask.size[0]}x{mask.size[1]} but --init-image is {image.size[0]}x{image.size[1]}: "
            "give a mask of the same size"
        )
