"""Writing results: output-folder checks, atomic never-overwriting PNGs, A1111 infotext and the sdkit recipe chunk.

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


def infotext(prompt: str, negative: str, fields: dict[str, Any]) -> str:
    """A1111's `parameters` text: prompt, `Negative prompt:` line, then `Key: value, ...`."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def read_text_chunks(path: Path) -> dict[str, str]:
    """The PNG text chunks of an image, or a UserError when it is not a readable PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return dict(getattr(img, "text", {}) or {})
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: give the path of a PNG written by sdkit") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path} is not a readable image ({err}): give a PNG written by sdkit") from None


def read_recipe(path: Path) -> dict[str, Any]:
    """The `sdkit` JSON chunk of a PNG written by sdkit."""
    chunks = read_text_chunks(path)
    if "sdkit" not in chunks:
        raise UserError(f"{path} has no sdkit metadata (was it written by sdkit, and not re-saved?)")
    try:
        return json.loads(chunks["sdkit"])
    except json.JSONDecodeError:
        raise UserError(f"{path}: its sdkit metadata is not valid JSON (was the file edited?)") from None
