"""`sdkit preprocess TYPE IMAGE -o OUT.png`: write the control map of a picture (see `sdkit.control.preprocessors`).

Checks come first (type, options, input image, output path), so bad input fails before any model loads and leaves
nothing behind; the PNG is written to a temp file beside OUT and renamed into place. Its `sdkit-preprocess` text
chunk records the type, options and source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sdkit import atomic
from sdkit.errors import UserError
from sdkit.schema.control import PreprocessRecipe


def _check_output(path: Path, overwrite: bool) -> None:
    if path.suffix.lower() != ".png":
        raise UserError(f"--output {path}: control maps are written as PNG: give a path ending in .png")
    if path.is_dir():
        raise UserError(f"--output {path} is a folder: give a file path ending in .png")
    if path.exists() and not overwrite:
        raise UserError(f"--output {path} exists: choose another path or pass --overwrite")
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"--output {path}: {probe} is not a writable folder: choose another path")


def _write_png(image, path: Path, text: dict[str, str], overwrite: bool) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    try:  # never-overwrite publishes by hard link: fails instead of replacing a file that appeared meanwhile
        atomic.write_file(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info), overwrite=overwrite)
    except FileExistsError:
        raise UserError(f"--output {path} exists: choose another path or pass --overwrite") from None


def run(recipe: PreprocessRecipe) -> Path:
    """Compute the control map the recipe asks for and write it; return the output path."""
    from sdkit.control.preprocessors import check_options, preprocess
    from sdkit.control.weights import annotators_dir

    # 1. cheap checks: options, output path, annotator folder, the input image
    options = recipe.option_values()
    check_options(recipe.type, options)
    output = Path(recipe.output).expanduser()
    _check_output(output, recipe.overwrite)
    folder = annotators_dir(recipe.annotators_dir)
    from sdkit.images import load_image

    image = load_image(Path(recipe.image).expanduser(), "image", flag="IMAGE")

    # 2. the detector
    device = recipe.device
    if device == "auto":
        from sdkit.device import resolve

        device = str(resolve("auto").device)
    control = preprocess(recipe.type, image, annotators_dir=folder, device=device, **options)

    # 3. the PNG
    record = {"type": recipe.type, "options": options, "source": str(recipe.image)}
    _write_png(control, output, {"sdkit-preprocess": json.dumps(record)}, recipe.overwrite)
    return output
