"""ControlNet units as sd-webui-controlnet takes them in `alwayson_scripts.controlnet.args`, turned into sdkit's
`control` entries: module (the preprocessor), model (a ControlNet from the library), weight, image, guidance
start/end. A unit's unknown keys are ignored, as the extension's own model ignores them; a known setting that sdkit
cannot honour is an error naming it (`alwayson_scripts.controlnet.args.N.FIELD`), never dropped.

`enabled` defaults to true: a unit sent without it was enabled in every release before 2024's (the extension's
default changed to false and back more than once); send `"enabled": false` to turn a unit off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdkit.errors import UserError

# the extension's preprocessor names (and their old aliases) -> sdkit's control types; "none" takes a ready map
MODULES: dict[str, str | None] = {
    "none": None, "canny": "canny", "invert": None,
    "depth": "depth", "depth_midas": "depth", "midas": "depth",
    "openpose": "openpose", "openpose_full": "openpose", "openpose_hand": "openpose", "openpose_face": "openpose",
    "dw_openpose_full": "openpose",
    "mlsd": "mlsd", "normal_bae": "normal", "normal_map": "normal",
    "seg_ofade20k": "seg", "seg_ufade20k": "seg", "segmentation": "seg",
    "softedge_hed": "hed", "softedge_hedsafe": "hed", "hed": "hed",
    "scribble_hed": "scribble", "scribble_pidinet": "scribble", "fake_scribble": "scribble", "pidinet_scribble": "scribble",
    "lineart_realistic": "lineart", "lineart": "lineart", "lineart_coarse": "lineart",
    "shuffle": "shuffle",
}  # fmt: skip
TYPE_WORDS = ("canny", "openpose", "depth", "seg", "normal", "mlsd", "softedge", "hed", "scribble", "lineart", "shuffle")
NEUTRAL: dict[str, tuple[Any, ...]] = {  # settings sdkit honours only at these values (what the extension does by default)
    "control_mode": ("Balanced", 0),
    "pixel_perfect": (False,),
    "mask": (None, ""),
    "mask_image": (None, ""),
    "effective_region_mask": (None,),
    "advanced_weighting": (None,),
    "ipadapter_input": (None,),
    "input_mode": ("simple", "SIMPLE", None),
    "hr_option": ("Both", "BOTH", None),
}
RESIZE_MODES = {"Just Resize": "resize", 0: "resize", "Crop and Resize": "crop", 1: "crop", "Inner Fit (Scale to Fit)": "crop",
                "Scale to Fit (Inner Fit)": "crop", "Resize and Fill": "fill", 2: "fill", "Outer Fit (Shrink to Fit)": "fill",
                "Envelope (Outer Fit)": "fill"}  # fmt: skip
CANNY_DEFAULTS = {"threshold_a": 100, "threshold_b": 200}


class FieldError(UserError):
    """Bad input in one field of a request: answered 422 with the field's location, as FastAPI reports its own."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(f"{'.'.join(map(str, loc))}: {message}")
        self.loc, self.msg = loc, message


@dataclass
class Unit:
    control: dict[str, Any]  # an sdkit ControlRef as fields
    model: str  # the ControlNet's path
    save_detected_map: bool = True
    size: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)


def control_type(module: str, model_name: str) -> str:
    """sdkit's type for a unit: the preprocessor's, or for a ready map the word in the ControlNet's name."""
    kind = MODULES.get(module)
    if kind:
        return kind
    words = re.split(r"[^a-z]+", model_name.lower())
    for word in TYPE_WORDS:
        if word in words:
            return "hed" if word == "softedge" else word
    return "canny"  # only names the saved map: with a ready map and a named ControlNet the type picks nothing else


def units(args: Any, ctx, output_size: tuple[int, int], init_image: Path | None) -> list[Unit]:
    """The enabled units of `alwayson_scripts.controlnet.args`, each checked and its image stored."""
    base = ("alwayson_scripts", "controlnet", "args")
    if not isinstance(args, list):
        raise FieldError(base, "give a list of ControlNet units")
    found = []
    for i, raw in enumerate(args):
        loc = (*base, i)
        if not isinstance(raw, dict):
            raise FieldError(loc, "a ControlNet unit is an object of settings")
        unit = {**raw}
        for old, new in (("guidance", "guidance_end"), ("lowvram", "low_vram"), ("input_image", "image")):
            if old in unit:
                unit.setdefault(new, unit.pop(old))
        if not unit.get("enabled", True):
            continue
        found.append(one_unit(unit, loc, ctx, output_size, init_image))
    return found


def one_unit(unit: dict[str, Any], loc: tuple, ctx, output_size: tuple[int, int], init_image: Path | None) -> Unit:
    from sdkit.server import catalog
    from sdkit.server.uploads import open_image

    for key, allowed in NEUTRAL.items():
        if key in unit and unit[key] not in allowed:
            raise FieldError((*loc, key), f"{unit[key]!r} is not supported by sdkit (it takes {allowed[0]!r})")
    module = str(unit.get("module") or "none")
    if module not in MODULES or (module == "invert"):
        raise FieldError((*loc, "module"), f"preprocessor {module!r} is not available: use one of {', '.join(MODULES)}")
    model_name = str(unit.get("model") or "None")
    if model_name in ("None", "none", ""):
        raise FieldError((*loc, "model"), "name a ControlNet from /controlnet/model_list")
    try:
        entry = catalog.find("controlnet", model_name, ctx.models_dir)
    except UserError as err:
        raise FieldError((*loc, "model"), str(err)) from None
    kind = control_type(module, entry.name)
    check_processor(unit, loc, module)
    weight = unit.get("weight", 1.0)
    start, end = unit.get("guidance_start", 0.0), unit.get("guidance_end", 1.0)
    for key, value, low, high in (("weight", weight, 0, 2), ("guidance_start", start, 0, 1), ("guidance_end", end, 0, 1)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            raise FieldError((*loc, key), f"give a number in {low}..{high} (got {value!r})")
    if start >= end:
        raise FieldError((*loc, "guidance_start"), f"guidance_start {start} must be below guidance_end {end}")
    image = unit.get("image")
    if isinstance(image, dict):
        if image.get("mask"):
            raise FieldError((*loc, "image", "mask"), "masked ControlNet inputs are not supported by sdkit")
        image = image.get("image")
    elif isinstance(image, (list, tuple)):
        if len(image) != 2 or image[1]:
            raise FieldError((*loc, "image"), "give one image (masked ControlNet inputs are not supported by sdkit)")
        image = image[0]
    if image:
        try:
            picture = open_image(decode(image, loc), ".".join(map(str, (*loc, "image"))))
        except FieldError:
            raise
        except UserError as err:
            raise FieldError((*loc, "image"), str(err)) from None
        path = ctx.store_image(picture, "RGB")
    elif init_image is not None:
        from PIL import Image

        path = init_image
        with Image.open(path) as img:
            picture = img.copy()
    else:
        raise FieldError((*loc, "image"), "controlnet is enabled but no input image is given")
    check_resize(unit.get("resize_mode", "Crop and Resize"), picture.size, output_size, (*loc, "resize_mode"))
    control = {"type": kind, "image": str(path), "scale": float(weight), "start": float(start), "end": float(end),
               "preprocessed": module == "none", "model": entry.ref}  # fmt: skip
    return Unit(control, entry.ref, bool(unit.get("save_detected_map", True)), picture.size)


def decode(image: Any, loc: tuple) -> bytes:
    from sdkit.server.uploads import decode_base64

    if not isinstance(image, str):
        raise FieldError((*loc, "image"), "give the image as base64")
    try:
        return decode_base64(image, ".".join(map(str, (*loc, "image"))))
    except UserError as err:
        raise FieldError((*loc, "image"), str(err)) from None


def check_processor(unit: dict[str, Any], loc: tuple, module: str) -> None:
    """processor_res / threshold_a / threshold_b: -1 (the extension's 'default') or the default of sdkit's
    preprocessor (canny 100/200, detectors 512 px); canny ignores the resolution, a ready map everything."""
    if module == "none":
        return
    for key in ("threshold_a", "threshold_b"):
        value = unit.get(key, -1)
        default = CANNY_DEFAULTS[key] if module == "canny" else None
        if value not in (-1, None) and value != default:
            raise FieldError((*loc, key), f"sdkit's {module} preprocessor runs with its default "
                                         f"({default if default is not None else 'no threshold'}): send -1")  # fmt: skip
    if module != "canny" and unit.get("processor_res", -1) not in (-1, None, 512):
        raise FieldError((*loc, "processor_res"), f"sdkit's {module} preprocessor runs at 512 px: send -1 or 512")


def check_resize(mode: Any, size: tuple[int, int], output: tuple[int, int], loc: tuple) -> None:
    """sdkit stretches the control map to the output size ("Just Resize"); the other modes give the same map when
    the aspect ratios agree, so they are accepted then and refused otherwise."""
    kind = RESIZE_MODES.get(mode)
    if kind is None:
        raise FieldError(loc, f"unknown resize mode {mode!r}: use Just Resize, Crop and Resize or Resize and Fill")
    if kind != "resize" and size[0] * output[1] != size[1] * output[0]:
        raise FieldError(loc, f"{mode!r} with a {size[0]}x{size[1]} image for a {output[0]}x{output[1]} output: sdkit "
                             "stretches the map (send \"Just Resize\") or send an image of the output's aspect ratio")  # fmt: skip
