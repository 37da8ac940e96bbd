"""The loss curve of a training run, drawn with Pillow only, and the loss files beside it.

    loss_curve([1, 2, ...], [0.9, 0.7, ...]).save("loss.png")
    write_loss_files(out, [(step, loss, lr), ...])          # loss.json, loss.csv, loss.png
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from sdkit.grids import BACKGROUND, INK, font, text_size

GRID = (225, 225, 225)
RAW = (170, 190, 230)
SMOOTH = (30, 80, 200)


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
    face = font()
    left, right, top, bottom = 64, 16, 28, 40
    draw.text((left, 8), title, fill=INK, font=face)
    finite = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
    if not finite:
        draw.text((left, height // 2), "no finite loss values", fill=INK, font=face)
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
        draw.text((left - 6 - text_size(draw, label, face)[0], py - 5), label, fill=INK, font=face)
    for tick in _ticks(x0, x1):
        px, _ = point(tick, y0)
        draw.line([(px, top), (px, top + plot_h)], fill=GRID)
        label = str(int(tick)) if float(tick).is_integer() else _fmt(tick)
        draw.text((px - text_size(draw, label, face)[0] / 2, top + plot_h + 6), label, fill=INK, font=face)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=INK)
    if len(xs) > 1:
        draw.line([point(x, y) for x, y in zip(xs, ys, strict=True)], fill=RAW, width=1)
        draw.line([point(x, y) for x, y in zip(xs, smoothed, strict=True)], fill=SMOOTH, width=2)
    else:
        px, py = point(xs[0], ys[0])
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=SMOOTH)
    draw.text((left + plot_w // 2 - 12, height - 16), "step", fill=INK, font=face)
    return image


def write_loss_files(output_dir: Path, history: Sequence[tuple[int, float, float]]) -> None:
    """loss.json, loss.csv and loss.png (raw and smoothed) in `output_dir`."""
    rows = [{"step": s, "loss": loss, "lr": lr} for s, loss, lr in history]
    (output_dir / "loss.json").write_text(json.dumps(rows) + "\n")
    (output_dir / "loss.csv").write_text("step,loss,lr\n" + "".join(f"{s},{loss:.6g},{lr:.6g}\n" for s, loss, lr in history))
    if history:
        loss_curve([s for s, _, _ in history], [loss for _, loss, _ in history]).save(output_dir / "loss.png")
