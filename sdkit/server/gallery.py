"""The gallery: the PNGs of the output folder, newest first, in pages; a thumbnail of each; and the settings each
image carries (the A1111 `parameters` infotext and sdkit's recipe chunk). An image is named by its path inside
the output folder ('/'-separated); companion files (`NNNNN-seed.control-0-canny.png`), grids and the server's state
folder are left out.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from sdkit.server.uploads import gallery_path

THUMB_SIDE = 192


def images(output_dir: Path, state_dir: Path) -> list[tuple[float, str]]:
    """(mtime, name) of every gallery image, newest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    state = Path(state_dir).resolve()
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".") and (here / d).resolve() != state]
        for name in files:
            if name.endswith(".png") and name.count(".") == 1 and not name.startswith(("grid-", ".")):
                path = here / name
                try:
                    found.append((path.stat().st_mtime, path.relative_to(root).as_posix()))
                except OSError:  # removed while listing
                    continue
    found.sort(key=lambda item: (-item[0], item[1]))
    return found


def page(output_dir: Path, state_dir: Path, number: int, size: int) -> dict[str, Any]:
    listed = images(output_dir, state_dir)
    start = max(number - 1, 0) * size
    items = [{"name": name, "mtime": mtime} for mtime, name in listed[start:start + size]]
    return {"page": number, "per_page": size, "total": len(listed), "items": items}


def thumbnail(output_dir: Path, state_dir: Path, name: str) -> bytes:
    from PIL import Image

    with Image.open(gallery_path(name, output_dir, state_dir)) as img:
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buffer = io.BytesIO()
        img.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def settings(output_dir: Path, state_dir: Path, name: str) -> dict[str, Any]:
    """What an image says about how it was made: infotext, the parsed infotext, and sdkit's recipe when present."""
    from sdkit.errors import UserError
    from sdkit.outputs import read_recipe, read_text_chunks
    from sdkit.server.pnginfo import parse

    path = gallery_path(name, output_dir, state_dir)
    chunks = read_text_chunks(path)
    infotext = chunks.get("parameters", "")
    try:
        record = read_recipe(path)
    except UserError:
        record = None
    return {"name": name, "parameters": infotext, "parsed": parse(infotext) if infotext else {},
            "recipe": record.get("recipe") if record else None, "model": record.get("model") if record else None}  # fmt: skip


def as_form(recipe: dict[str, Any] | None, models_dir: Path | None) -> dict[str, Any] | None:
    """An image's recipe as the page's form (and the job API) takes it: files as library names. A model or LoRA that
    is not in the library any more is left out (None) rather than sent back as a path."""
    if not recipe:
        return None
    from sdkit.errors import UserError
    from sdkit.server import catalog

    def name_of(kind: str, ref: Any) -> str | None:
        if not ref:
            return None
        target = Path(str(ref)).resolve()
        return next((e.name for e in catalog.entries(kind, models_dir) if ref == e.ref or e.path.resolve() == target), None)

    keys = ("prompt", "negative", "scheduler", "schedule_type", "steps", "cfg", "width", "height", "seed", "strength")
    form = {key: recipe.get(key) for key in keys}
    if form["schedule_type"] is not None:
        from sdkit.schedulers import schedule_label

        try:
            form["schedule_type"] = schedule_label(form["schedule_type"])  # the page lists A1111's labels
        except UserError:
            form["schedule_type"] = None
    form["model"] = name_of("checkpoints", recipe.get("model"))
    form["lora"] = [{"name": name_of("loras", item.get("path")), "weight": item.get("weight", 1.0)}
                    for item in recipe.get("lora") or [] if isinstance(item, dict)]  # fmt: skip
    return form
