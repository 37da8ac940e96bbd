"""Images from clients: base64 (A1111) or data: URLs, checked as the CLI checks its input images, and stored under the
state folder by content hash; and images of the gallery, named by their path inside the output folder.

A client never names a file on the server: an URL is refused (the server fetches nothing), a path is not an image
reference, and a gallery name must resolve (symlinks included) to a PNG inside the output folder. An image has at
most sdkit.images.MAX_PIXELS pixels, read from its header before any pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from sdkit.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

GALLERY_PREFIX = "gallery:"


class NotFound(UserError):
    """A name that is well formed but names nothing (answered 404)."""


def decode_base64(text: str, field: str) -> bytes:
    """The bytes of an A1111 image field: base64, optionally as a `data:image/...;base64,` URL."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{field}: give an image as a base64 string")
    text = text.strip()
    if text.startswith(("http://", "https://", "file:")):
        raise UserError(f"{field}: the server does not fetch URLs; send the image itself as base64")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise UserError(f"{field}: a data URL must be data:image/...;base64,<data>")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{field}: not valid base64 (send the image file's bytes, base64-encoded)") from None


def open_image(data: bytes, field: str) -> Image.Image:
    """Decode image bytes within sdkit's pixel limit (checked from the header first); UserError naming the field."""
    from PIL import UnidentifiedImageError

    from sdkit.images import check_pixels, open_header

    try:
        img = open_header(io.BytesIO(data), field)
        check_pixels(img.size, field)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{field}: not a readable image ({type(err).__name__}): send a PNG or JPEG") from None


def store(image: Image.Image, state_dir: Path) -> Path:
    """Save `image` as a PNG named by its content hash under STATE/uploads (once: equal images share a file)."""
    from sdkit import atomic

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    path = Path(state_dir) / "uploads" / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, data)
    return path.resolve()


def upload(text: str, field: str, state_dir: Path, mode: str = "RGB") -> Path:
    """A base64 image field → a checked PNG under STATE/uploads (converted to `mode`)."""
    from sdkit.images import to_mode

    return store(to_mode(open_image(decode_base64(text, field), field), mode), state_dir)


def gallery_path(name: str, output_dir: Path, state_dir: Path, field: str = "image") -> Path:
    """The PNG a gallery name (its path inside the output folder, '/'-separated) refers to; UserError otherwise."""
    rel = PurePosixPath(str(name).removeprefix(GALLERY_PREFIX))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.suffix.lower() != ".png":
        raise UserError(f"{field}: {str(name)!r} is not a gallery image name (a .png path inside the output folder)")
    root = Path(output_dir).resolve()
    path = (root / rel).resolve()
    state = Path(state_dir).resolve()
    if root not in path.parents or state == path or state in path.parents or not path.is_file():
        raise NotFound(f"{field}: no gallery image {str(rel)!r}")
    return path


def image_ref(value: str, field: str, output_dir: Path, state_dir: Path, mode: str = "RGB") -> Path:
    """sdkit's job API: an image is `gallery:NAME` (an output) or a data: URL / base64 (an upload)."""
    if isinstance(value, str) and value.startswith(GALLERY_PREFIX):
        return gallery_path(value, output_dir, state_dir, field)
    return upload(value, field, state_dir, mode)


def encode_file(path: Path) -> str:
    """A file's bytes as base64 text (A1111's response images: the PNG as written, text chunks included)."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def encode_image(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
