"""A1111's `/sdapi/v1/png-info`: the `parameters` infotext of an image, its other text chunks, and the infotext
parsed by A1111's documented rules (modules/infotext_utils.parse_generation_parameters): prompt lines, a
`Negative prompt:` line, then `Key: value, ...` where a quoted value is JSON and `WxH` becomes `Key-1` / `Key-2`.
Values stay strings, as A1111 returns them; the defaults A1111 fills in for missing keys are added the same way.

`parse` is also how a txt2img request's `infotext` field is read. It is the seam for sdkit's own infotext reader
(A1111 parity work) when that lands.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from sdkit.errors import UserError

PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
DEFAULTS: dict[str, Any] = {  # what A1111 fills in when the infotext does not say
    "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint", "Hires prompt": "",
    "Hires negative prompt": "", "Mask mode": "Inpaint masked", "Masked content": "original",
    "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU", "Schedule type": "Automatic",
    "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full",
    "FP8 weight": "Disable", "Cache FP16 weight for LoRA": False, "Refiner switch by sampling steps": False,
}  # fmt: skip
IGNORED_INFO = ("jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
                "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop")  # fmt: skip


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def parse(text: str) -> dict[str, Any]:
    """An infotext as A1111 reads it: Prompt, Negative prompt, every `Key: value`, then A1111's defaults."""
    res: dict[str, Any] = {}
    prompt, negative, in_negative = [], [], False
    *lines, last = (text or "").strip().split("\n")
    if len(PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    res["Prompt"] = "\n".join(prompt)
    res["Negative prompt"] = "\n".join(negative)
    for key, value in PARAM.findall(last):
        value = unquote(value)
        size = IMAGE_SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    for key, value in DEFAULTS.items():
        res.setdefault(key, value)
    return res


def read(data: bytes, field: str = "image") -> tuple[str, dict[str, str]]:
    """(infotext, other text chunks) of an image's bytes, read within sdkit's pixel limit (the header first)."""
    from PIL import UnidentifiedImageError

    from sdkit.images import check_pixels, open_header

    try:
        with open_header(io.BytesIO(data), field) as img:
            check_pixels(img.size, field)
            info = dict(img.info)
            if img.format == "PNG":
                img.load()  # text chunks after the pixel data
                info.update(getattr(img, "text", {}))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{field}: not a readable image ({type(err).__name__})") from None
    items = {k: v for k, v in info.items() if isinstance(k, str) and isinstance(v, str) and k not in IGNORED_INFO}
    return items.pop("parameters", ""), items
