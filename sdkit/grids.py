"""Labelled image grids, drawn with Pillow only: validation grids, sweep grids and eval sample sheets.

    labelled_grid([("a red circle", img), ...], columns=2, title="step 100").save("grid.png")
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def font():
    """Pillow's built-in font (no font files needed)."""
    return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    """Width and height of `text` drawn in `font`."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def labelled_grid(items: Sequence[tuple[str, Image.Image]], columns: int | None = None, title: str = "") -> Image.Image:
    """Images in a grid, each with its (wrapped) label underneath; an optional title on top."""
    if not items:
        raise ValueError("labelled_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(items)))
    rows = math.ceil(len(items) / columns)
    cell_w = max(image.width for _, image in items)
    cell_h = max(image.height for _, image in items)
    face = font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1, text_size(probe, "abcdefghij", face)[0] // 10)
    line_h = text_size(probe, "Ag", face)[1] + 3
    width_chars = max(8, (max(cell_w, 96) - 4) // char_w)
    labels = [textwrap.wrap(label, width_chars)[:4] or [""] for label, _ in items]
    label_h = line_h * max(len(lines) for lines in labels) + 4
    col_w = max(cell_w, 96)
    title_h = line_h + 6 if title else 0
    pad = 4
    grid = Image.new("RGB", (columns * (col_w + pad) + pad, title_h + rows * (cell_h + label_h + pad) + pad), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, 3), title, fill=INK, font=face)
    for i, ((_, image), lines) in enumerate(zip(items, labels, strict=True)):
        row, col = divmod(i, columns)
        x = pad + col * (col_w + pad)
        y = title_h + pad + row * (cell_h + label_h + pad)
        grid.paste(image.convert("RGB"), (x + (col_w - image.width) // 2, y))
        for j, line in enumerate(lines):
            draw.text((x + 1, y + cell_h + 2 + j * line_h), line, fill=INK, font=face)
    return grid
