"""A1111's `/sdapi/v1/png-info`: the `parameters` infotext of an image (a PNG text chunk, or the EXIF UserComment of a
JPEG/WEBP), its other text chunks, and the infotext read by sdkit's reader (`sdkit.infotext.parse`: A1111's
parse_generation_parameters rules) in the shape A1111 returns it: `Prompt`, `Negative prompt`, every `Key: value`
(`WxH` as `Key-1` / `Key-2`; values stay strings), then the defaults A1111 fills in for missing keys.
"""

from __future__ import annotations

import io
from typing import Any

from sdkit.errors import UserError

DEFAULTS: dict[str, Any] = {  # what A1111 fills in when the infotext does not say (Clip skip, Schedule type: sdkit's reader)
    "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint", "Hires prompt": "",
    "Hires negative prompt": "", "Mask mode": "Inpaint masked", "Masked content": "original",
    "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU", "Schedule max sigma": 0,
    "Schedule min sigma": 0, "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
    "Cache FP16 weight for LoRA": False, "Refiner switch by sampling steps": False,
}  # fmt: skip
IGNORED_INFO = ("jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
                "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop")  # fmt: skip


def parse(text: str) -> dict[str, Any]:
    """An infotext as A1111's png-info returns it: Prompt, Negative prompt, every `Key: value`, then A1111's defaults."""
    from sdkit.infotext import parse as read_infotext

    info = read_infotext(text or "")
    return {"Prompt": info.prompt, "Negative prompt": info.negative, **info.fields,
            **{k: v for k, v in DEFAULTS.items() if k not in info.fields}}  # fmt: skip


def read(data: bytes, field: str = "image") -> tuple[str, dict[str, str]]:
    """(infotext, other text chunks) of an image's bytes, read within sdkit's pixel limit (the header first)."""
    from PIL import UnidentifiedImageError

    from sdkit.image_import import EXIF_IFD, USER_COMMENT, exif_comment
    from sdkit.images import check_pixels, open_header
    from sdkit.infotext import MAX_TEXT

    try:
        with open_header(io.BytesIO(data), field) as img:
            check_pixels(img.size, field)
            info = dict(img.info)
            if img.format == "PNG":
                img.load()  # text chunks after the pixel data
                info.update(getattr(img, "text", {}))
            elif "parameters" not in info:  # JPEG / WEBP: A1111 and civitai write it as the EXIF UserComment
                comment = img.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
                if isinstance(comment, bytes) and 0 < len(comment) <= MAX_TEXT:
                    info["parameters"] = exif_comment(comment)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{field}: not a readable image ({type(err).__name__})") from None
    items = {k: v for k, v in info.items() if isinstance(k, str) and isinstance(v, str) and k not in IGNORED_INFO}
    return items.pop("parameters", ""), items
