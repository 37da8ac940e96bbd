"""Pictures of a training run, drawn with Pillow only: a labelled image grid and a loss curve.

    labelled_grid([("a red circle", img), ...], columns=2).save("validation/step-100.png")
    loss_curve([1, 2, ...], [0.9, 0.7, ...]).save("loss.png")
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GRID = (225, 225, 225)
RAW = (170, 190, 230)
SMOOTH = (30, 80, 200)


def _font():
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
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
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1, _text_size(probe, "abcdefghij", font)[0] // 10)
    line_h = _text_size(probe, "Ag", font)[1] + 3
    width_chars = max(8, (max(cell_w, 96) - 4) // char_w)
    labels = [textwrap.wrap(label, width_chars)[:4] or [""] for label, _ in items]
    label_h = line_h * max(len(lines) for lines in labels) + 4
    col_w = max(cell_w, 96)
    title_h = line_h + 6 if title else 0
    pad = 4
    grid = Image.new("RGB", (columns * (col_w + pad) + pad, title_h + rows * (cell_h + label_h + pad) + pad), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, 3), title, fill=INK, font=font)
    for i, ((_, image), lines) in enumerate(zip(items, labels, strict=True)):
        row, col = divmod(i, columns)
        x = pad + col * (col_w + pad)
        y = title_h + pad + row * (cell_h + label_h + pad)
        grid.paste(image.convert("RGB"), (x + (col_w - image.width) // 2, y))
        for j, line in enumerate(lines):
            draw.text((x + 1, y + cell_h + 2 + j * line_h), line, fill=INK, font=font)
    return grid


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard-style smoothing)."""
    out, avg = [], 0.0
    for i, value in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight**i))
    return out


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def loss_curve(
    steps: Sequence[int], losses: Sequence[float], title: str = "training loss", size: tuple[int, int] = (720, 420)
) -> Image.Image:
    """Raw loss (light) and its smoothed curve (dark) against the step, with labelled axes."""
    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    left, right, top, bottom = 64, 16, 28, 40
    draw.text((left, 8), title, fill=INK, font=font)
    finite = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
    if not finite:
        draw.text((left, height // 2), "no finite loss values", fill=INK, font=font)
        return image
    xs, ys = zip(*finite, strict=True)
    smoothed = smooth(ys, 0.9 if len(ys) > 20 else 0.0)
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    plot_w, plot_h = width - left - right, height - top - bottom

    def point(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * plot_w, top + (1 - (y - y0) / (y1 - y0)) * plot_h

    for tick in _ticks(y0, y1):
        _, py = point(x0, tick)
        draw.line([(left, py), (left + plot_w, py)], fill=GRID)
        label = _fmt(tick)
        draw.text((left - 6 - _text_size(draw, label, font)[0], py - 5), label, fill=INK, font=font)
    for tick in _ticks(x0, x1):
        px, _ = point(tick, y0)
        draw.line([(px, top), (px, top + plot_h)], fill=GRID)
        label = str(int(tick)) if float(tick).is_integer() else _fmt(tick)
        draw.text((px - _text_size(draw, label, font)[0] / 2, top + plot_h + 6), label, fill=INK, font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=INK)
    if len(xs) > 1:
        draw.line([point(x, y) for x, y in zip(xs, ys, strict=True)], fill=RAW, width=1)
        draw.line([point(x, y) for x, y in zip(xs, smoothed, strict=True)], fill=SMOOTH, width=2)
    else:
        px, py = point(xs[0], ys[0])
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=SMOOTH)
    draw.text((left + plot_w // 2 - 12, height - 16), "step", fill=INK, font=font)
    return image


def write_loss_files(output_dir: Path, history: Sequence[tuple[int, float, float]]) -> None:
    """loss.json, loss.csv and loss.png (raw and smoothed) in `output_dir`."""
    rows = [{"step": s, "loss": loss, "lr": lr} for s, loss, lr in history]
    (output_dir / "loss.json").write_text(json.dumps(rows) + "\n")
    (output_dir / "loss.csv").write_text("step,loss,lr\n" + "".join(f"{s},{loss:.6g},{lr:.6g}\n" for s, loss, lr in history))
    if history:
        loss_curve([s for s, _, _ in history], [loss for _, loss, _ in history]).save(output_dir / "loss.png")
