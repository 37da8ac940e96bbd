"""Writing results: output-folder checks, atomic never-overwriting PNGs, reading back their text chunks and the sdkit recipe
chunk (the A1111 infotext itself is written and read by `sdkit.infotext`).

A PNG is written to a temp file in the target folder and then hard-linked to its final name, which fails instead of
overwriting when another process took that name first: two `sdkit generate` runs into one folder never clobber
each other, and an interrupted run leaves no partial file. Files get the permissions the umask gives any new file
(`sdkit.atomic`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdkit import atomic
from sdkit.atomic import NO_SPACE
from sdkit.errors import SdkitError, UserError

if TYPE_CHECKING:
    from PIL import Image

NUMBERED = re.compile(r"^(\d{5,})-")


OUTPUT_ROOT_ENV = "SDKIT_OUTPUT_ROOT"


def confine(path: Path, what: str = "output path") -> None:
    """With SDKIT_OUTPUT_ROOT set (`sdkit run --output-root`), refuse paths that resolve outside it (.., symlinks)."""
    root = os.environ.get(OUTPUT_ROOT_ENV)
    if not root:
        return
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise UserError(f"{what} {path} resolves to {resolved}, outside the output root {base}: write inside it")


def check_output_dir(out: Path) -> None:
    """Fail early, before any work, if `out` cannot become a folder we can write into. Creates nothing."""
    out = Path(out)
    confine(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file: pass a folder with --out")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"output path {out} is under {probe}, which is a file: pass a folder with --out")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UserError(f"output folder {probe} is not writable ({err.strerror}): pass a writable folder with --out") from None


def next_index(out: Path) -> int:
    """1 + the highest NNNNN- number in `out` (1 for a new folder)."""
    numbers = [int(m.group(1)) for p in out.glob("*.png") if (m := NUMBERED.match(p.name))] if out.is_dir() else []
    return max(numbers, default=0) + 1


def write_png(out: Path, stem_suffix: str, image: Image.Image, text: dict[str, str], index: int | None = None) -> Path:
    """Write `image` as out/NNNNN-<suffix>.png with PNG text chunks, atomically and without overwriting.

    `index` fixes the number (planned runs: every process knows its names in advance); it is never bumped."""
    from PIL.PngImagePlugin import PngInfo

    confine(out)
    out.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)  # tEXt, or iTXt when not latin-1: what A1111 reads
    with atomic.staged_file(out, "sdkit-png") as tmp:
        try:
            image.save(tmp, format="PNG", pnginfo=info)
            planned = index is not None
            index = index if planned else next_index(out)
            while True:
                final = out / f"{index:05d}-{stem_suffix}.png"
                try:
                    return atomic.publish(tmp, final, overwrite=False)
                except FileExistsError:
                    if planned:
                        raise SdkitError(f"{final} appeared while this run was writing: another process writes into {out}") from None
                    index += 1
        except OSError as err:
            if err.errno in NO_SPACE:
                raise UserError(f"no space left to write into {out} ({err.strerror}): free disk space or pass another --out") from None
            raise


def write_beside(image_path: Path, tag: str, image: Image.Image) -> Path:
    """A companion PNG next to an output (e.g. the control map): `<stem>.<tag>.png`, written atomically."""
    target = image_path.with_name(f"{image_path.stem}.{tag}.png")
    return atomic.write_file(target, lambda tmp: image.save(tmp, format="PNG"))


MAX_RECIPE_TEXT = 2**20  # 1 MiB: Pillow's own bound on one decompressed text chunk (PngImagePlugin.MAX_TEXT_CHUNK)
RECORD_FIELDS = {"recipe": (dict, "an object"), "task": (str, "a string"), "sdkit": (str, "a string"), "model": (dict, "an object")}


def read_text_chunks(path: Path) -> dict[str, str]:
    """The PNG text chunks of an image, or a UserError when it is not a readable PNG. Decodes no pixels.

    The image comes from anyone, so its text is read within Pillow's limits: 1 MiB per compressed chunk
    (`PngImagePlugin.MAX_TEXT_CHUNK`) and 64 MiB for all text chunks together (`MAX_TEXT_MEMORY`); past them Pillow
    raises ValueError, reported here as bad input. Chunks written before the pixel data (where sdkit writes them)
    are read from the header; chunks after it only when the image is within sdkit.images.MAX_PIXELS."""
    from PIL import UnidentifiedImageError

    from sdkit.images import MAX_PIXELS, open_header

    try:
        with open_header(path, str(path)) as img:
            chunks = {k: str(v) for k, v in img.info.items() if isinstance(v, str)}
            if "sdkit" not in chunks and img.format == "PNG" and img.width * img.height <= MAX_PIXELS:
                chunks = {**chunks, **img.text}  # Pillow decodes the image to reach chunks after the pixel data
            return chunks
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: give the path of an image written by sdkit, A1111, Forge or ComfyUI") from None
    except ValueError as err:  # Pillow's text limits (MAX_TEXT_CHUNK, MAX_TEXT_MEMORY)
        raise UserError(f"{path}: its text chunks are too large to read ({err}): not an image a generator wrote") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path} is not a readable image ({err}): give a PNG, JPEG or WEBP written by a generator") from None


def read_recipe(path: Path) -> dict[str, Any]:
    """The `sdkit` JSON chunk of a PNG written by sdkit, checked for shape: a mapping whose `recipe` is a mapping.

    The chunk may have been written by anyone: it is refused past MAX_RECIPE_TEXT characters (sdkit writes a few
    KB) before it is parsed, and a JSON value of the wrong shape is bad input, not a crash later."""
    chunks = read_text_chunks(path)
    if "sdkit" not in chunks:
        raise UserError(f"{path} has no sdkit metadata (was it written by sdkit, and not re-saved?)")
    text = chunks["sdkit"]
    if len(text) > MAX_RECIPE_TEXT:
        raise UserError(
            f"{path}: its sdkit metadata is {len(text):,} characters, more than the limit of {MAX_RECIPE_TEXT:,} "
            "(sdkit writes a few thousand): not a recipe sdkit wrote"
        )
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise UserError(f"{path}: its sdkit metadata is not valid JSON (was the file edited?)") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: its sdkit metadata is a JSON {_json_type(record)}, not an object: not a recipe sdkit wrote")
    if "recipe" not in record:
        raise UserError(f"{path}: its sdkit metadata has no recipe: not a recipe sdkit wrote")
    for key, (kind, name) in RECORD_FIELDS.items():
        if key in record and not isinstance(record[key], kind):
            raise UserError(
                f"{path}: in its sdkit metadata, {key} is a JSON {_json_type(record[key])}, not {name}: not a recipe sdkit wrote"
            )
    sha256 = record.get("model", {}).get("sha256")
    if sha256 is not None and not isinstance(sha256, str):
        raise UserError(f"{path}: in its sdkit metadata, model.sha256 is a JSON {_json_type(sha256)}, not a string: not a recipe sdkit wrote")
    return record


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
