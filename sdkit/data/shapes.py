"""The synthetic "shapes world": one flat shape on a flat background, captioned in a tiny regular language.

It gives sdkit a dataset it can generate offline, train a tiny model on, and score automatically
(`sdkit.eval.scorer` reads the images back without knowing how they were made).

World
  * shapes: `BASE_SHAPES` (circle, square, triangle, diamond) form the shipped model's training set; `MORE_SHAPES`
    (pentagon, hexagon, cross, heart, crescent, arrow) widen the world for a broader base; `NEW_SHAPES` (star) render
    but stay out of every base set, to be taught later as a new concept. Every shape fills a `size` x `size` box
    centred on (x, y): circle = diameter, square = side, triangle = base and height (apex up), diamond = both
    diagonals; pentagon (apex up), hexagon (flat top) and star = vertices on the circle of diameter `size` (the star's
    inner radius `STAR_INNER_RATIO` of the outer); cross = arms a third of `size` wide; heart = the classic parametric
    curve (point down), as wide as `size`; crescent = the disc with a bite, facing right; arrow = pointing right.
  * colours: `COLORS` (name -> sRGB), chosen at least ~45 CIELAB dE76 apart. The background is drawn from the same list
    and always differs from the object colour.
  * patterns: "solid" (the base set) or "striped" (new concept): diagonal stripes, period `size_px / 8`, of the object
    colour (5/8 of each period) and its darker shade (each channel halved), anchored at the object's centre. The
    shade is never a palette colour, and it is always darker than the object colour, which is how the scorer tells them
    apart.
  * `HELD_OUT` colour x shape combinations never appear in the "train" split (each colour and shape still does), so
    generating them measures composition.
  * captions: "a red circle on a blue background" / "an orange striped star on a white background" (`caption()`),
    optionally "a red shape on a blue background" (`generic_noun`: a class noun for DreamBooth's class prompts);
    `vocabulary_words()` lists every word a tokenizer needs (plus "sks" and "shape" for the concept-learning recipes).

Run: `sdkit data shapes -o DIR --n 1000 --seed 0` (the task `sdkit.tasks.data_shapes`), or `write_dataset(...)`.
Same seed => byte-identical files.
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from sdkit import atomic
from sdkit.control.preprocessors import preprocess
from sdkit.data.world import (  # noqa: F401 - re-exported: the world's vocabulary
    BASE_SHAPES,
    COLOR_NAMES,
    COLORS,
    CONCEPT_TOKEN,
    GENERIC_NOUN,
    HELD_OUT,
    MORE_SHAPES,
    NEW_SHAPES,
    PATTERNS,
    SHAPES,
    SPLITS,
    caption,
    vocabulary_words,
)
from sdkit.errors import UserError

if TYPE_CHECKING:
    pass

STAR_INNER_RATIO = 0.45
CRESCENT_SHIFT = 0.8  # the bite's disc is centred this many radii right of the crescent's
HEART_POINTS = 64
STRIPE_ON_FRACTION = 5 / 8
SIZE_RANGE = (0.35, 0.65)  # object size as a fraction of the image side
_SUPERSAMPLE = 4


def shade(color: str) -> tuple[int, int, int]:
    """The darker partner of `color` in striped fills: every channel halved."""
    return tuple(v // 2 for v in COLORS[color])  # type: ignore[return-value]


@dataclass(frozen=True)
class Sample:
    """One scene: `x`, `y` (centre) and `size` are pixels on a `canvas` x `canvas` image."""

    shape: str
    color: str
    background: str
    x: int
    y: int
    size: int
    pattern: str = "solid"
    canvas: int = 64

    def __post_init__(self) -> None:
        _check_names("shape", [self.shape], SHAPES)
        _check_names("color", [self.color, self.background], COLOR_NAMES)
        _check_names("pattern", [self.pattern], PATTERNS)
        if self.color == self.background:
            raise UserError(f"object and background are both {self.color}: pick a different background colour")
        half = self.size / 2
        if not (
            0 <= self.x - half and self.x + half <= self.canvas and 0 <= self.y - half and self.y + half <= self.canvas
        ):
            raise UserError(
                f"shape at ({self.x}, {self.y}) of size {self.size} leaves the {self.canvas} px canvas: move or shrink it"
            )

    @property
    def text(self) -> str:
        """The caption, e.g. "a red striped circle on an orange background"."""
        return caption(self.shape, self.color, self.background, self.pattern)

    def fields(self) -> dict[str, object]:
        """The structured metadata columns (without the canvas size, which the image itself carries)."""
        out = asdict(self)
        del out["canvas"]
        return out


def _check_names(kind: str, names: Iterable[str], valid: Sequence[str]) -> None:
    for name in names:
        if name not in valid:
            raise UserError(f"unknown {kind} {name!r}: choose from {', '.join(valid)}")


def _regular(k: int, cx: float, cy: float, r: float, start: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(start + 2 * math.pi * i / k), cy + r * math.sin(start + 2 * math.pi * i / k)) for i in range(k)]


def _outline(shape: str, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    """Polygon vertices of a non-circle shape (image coordinates, y down)."""
    h = size / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
    if shape == "pentagon":
        return _regular(5, cx, cy, h, -math.pi / 2)
    if shape == "hexagon":
        return _regular(6, cx, cy, h, 0.0)
    if shape == "cross":
        w = h / 3
        quarter = [(w, -h), (w, -w), (h, -w)]  # the top arm's right edge and the corner; the rest are its rotations
        return [(cx + x * c - y * s, cy + x * s + y * c) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1)) for x, y in quarter]
    if shape == "heart":
        pts = []
        for i in range(HEART_POINTS):
            t = 2 * math.pi * i / HEART_POINTS
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)  # -17..11.9
            pts.append((cx + x / 16 * h, cy - (y + 2.54) / 16 * h))  # x spans the box, y 0.9 of it
        return pts
    if shape == "crescent":
        # The arc of the disc of radius h from 54 deg to 306 deg, closed by the arc of a disc centred
        # CRESCENT_SHIFT x h to the right that meets it there (the bite).
        outer = [(cx + h * math.cos(a), cy + h * math.sin(a)) for a in np.linspace(0.3 * math.pi, 1.7 * math.pi, 48)]
        bx = cx + CRESCENT_SHIFT * h
        (x0, y0), (x1, y1) = outer[-1], outer[0]
        a0, a1 = math.atan2(y0 - cy, x0 - bx), math.atan2(y1 - cy, x1 - bx)
        r = math.hypot(x0 - bx, y0 - cy)
        bite = [(bx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(a0, a1 - 2 * math.pi * (a1 > a0), 48)[1:-1]]
        return outer + bite
    if shape == "arrow":
        shaft, neck = h / 2.5, cx + 0.1 * h  # half the shaft's width; where the head starts
        return [(cx - h, cy - shaft), (neck, cy - shaft), (neck, cy - h), (cx + h, cy), (neck, cy + h), (neck, cy + shaft),
                (cx - h, cy + shaft)]  # fmt: skip
    if shape == "star":
        pts = []
        for k in range(10):
            r = h if k % 2 == 0 else h * STAR_INNER_RATIO
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return pts
    raise UserError(f"unknown shape {shape!r}: choose from {', '.join(SHAPES)}")


def _hires_mask(sample: Sample, side: int) -> np.ndarray:
    """Boolean coverage of the shape on a `side` x `side` supersampled grid."""
    scale = side / sample.canvas
    cx, cy, s = sample.x * scale, sample.y * scale, sample.size * scale
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    if sample.shape == "circle":
        # PIL includes the far edge pixel: shrink the box by one supersampled pixel to stay symmetric.
        draw.ellipse([cx - s / 2, cy - s / 2, cx + s / 2 - 1, cy + s / 2 - 1], fill=255)
    else:
        draw.polygon([(px - 0.5, py - 0.5) for px, py in _outline(sample.shape, cx, cy, s)], fill=255)
    return np.asarray(img) > 127


def _render_arrays(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, boolean mask) at `size` px, anti-aliased by 4x supersampling and box downsampling."""
    side = size * _SUPERSAMPLE
    mask = _hires_mask(sample, side)
    rgb = np.empty((side, side, 3), np.uint8)
    rgb[:] = COLORS[sample.background]
    rgb[mask] = COLORS[sample.color]
    if sample.pattern == "striped":
        scale = side / sample.canvas
        coords = (np.arange(side) + 0.5) / scale  # pixel centres in canvas units
        diag = (coords[None, :] - sample.x) + (coords[:, None] - sample.y)
        period = sample.canvas / 8
        on = np.mod(diag / math.sqrt(2), period) < STRIPE_ON_FRACTION * period
        rgb[mask & ~on] = shade(sample.color)
    image = Image.fromarray(rgb).resize((size, size), Image.Resampling.BOX)
    small_mask = (
        np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX)) >= 128
    )
    return np.asarray(image), small_mask


def render(sample: Sample, size: int | None = None) -> Image.Image:
    """The scene as an RGB image of `size` px (default: the sample's canvas; geometry scales with it)."""
    rgb, _ = _render_arrays(sample, size or sample.canvas)
    return Image.fromarray(rgb)


def render_mask(sample: Sample, size: int | None = None) -> Image.Image:
    """Binary ("L", 0/255) mask of the shape at `size` px: pixels at least half covered."""
    _, mask = _render_arrays(sample, size or sample.canvas)
    return Image.fromarray(mask.astype(np.uint8) * 255)


def allowed_combos(shapes: Sequence[str], colors: Sequence[str], split: str = "train") -> list[tuple[str, str]]:
    """(colour, shape) pairs a split may draw: train excludes `HELD_OUT`, heldout is only those, all is everything."""
    _check_names("split", [split], SPLITS)
    held = set(HELD_OUT)
    combos = [(c, s) for s in shapes for c in colors]
    if split == "train":
        return [p for p in combos if p not in held]
    if split == "heldout":
        return [p for p in combos if p in held]
    return combos


def sample_world(
    rng: np.random.Generator,
    n: int,
    shapes: Sequence[str] = BASE_SHAPES,
    colors: Sequence[str] = COLOR_NAMES,
    backgrounds: Sequence[str] | None = None,
    split: str = "train",
    pattern: str = "solid",
    canvas: int = 64,
) -> list[Sample]:
    """`n` random scenes. `pattern` is "solid", "striped" or "any" (each scene 50/50)."""
    _check_names("shape", shapes, SHAPES)
    _check_names("color", colors, COLOR_NAMES)
    backgrounds = COLOR_NAMES if backgrounds is None else tuple(backgrounds)
    _check_names("background", backgrounds, COLOR_NAMES)
    _check_names("pattern", [pattern], (*PATTERNS, "any"))
    combos = allowed_combos(shapes, colors, split)
    if not combos:
        raise UserError(
            f"split {split!r} has no colour x shape combination within the chosen shapes and colours: widen --shapes/--colors or pick another split"
        )
    for color in {c for c, _ in combos}:
        if not [b for b in backgrounds if b != color]:
            raise UserError(f"no background differs from {color}: add another background colour")
    lo, hi = round(SIZE_RANGE[0] * canvas), round(SIZE_RANGE[1] * canvas)
    margin = max(1, round(0.03 * canvas))
    out = []
    for _ in range(n):
        color, shape = combos[int(rng.integers(len(combos)))]
        bgs = [b for b in backgrounds if b != color]
        background = bgs[int(rng.integers(len(bgs)))]
        size = int(rng.integers(lo, hi + 1))
        reach = math.ceil(size / 2) + margin
        x, y = (int(v) for v in rng.integers(reach, canvas - reach + 1, size=2))
        pat = pattern if pattern != "any" else PATTERNS[int(rng.integers(2))]
        out.append(Sample(shape, color, background, x, y, size, pat, canvas))
    return out


def write_dataset(out_dir: str | os.PathLike[str], n: int, **settings: Any) -> Path:
    """Write `n` scenes as a Hugging Face imagefolder dataset and return its directory. `settings` are
    `plan_dataset`'s: seed, size, shapes, colors, backgrounds, split, pattern, conditioning, caption_noise, generic_noun.

    Layout: `images/NNNNN.png` + `metadata.jsonl` (`file_name`, `text`, shape, color, background, x, y, size,
    pattern); with `conditioning`, also `conditioning/NNNNN.png` (Canny edges of the image, column
    `conditioning_image`) and `masks/NNNNN.png` (binary shape mask, column `mask_image`), as diffusers'
    train_controlnet example expects. With `caption_noise` p, each caption names a wrong shape, colour and background
    with probability p apiece (as web alt-text does; the structured columns and `true_text` keep the truth). With
    `generic_noun` p, a caption calls the object "shape" instead of naming it ("a red shape on a blue background"),
    so the world has a class noun, as "a photo of a dog" is to "a photo of sks dog" in DreamBooth. Written into a
    temporary sibling directory, renamed into place when complete (`sdkit.atomic.staged_dir`); on a full disk the
    temporary directory is removed and the error is a UserError: a dataset folder is always complete.
    """
    out = Path(out_dir)
    if n < 1:
        raise UserError(f"n must be at least 1 (got {n}): ask for one image or more")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            f"{out} already exists and is not an empty directory: choose a new output directory or remove it"
        )
    samples, rows = plan_dataset(n, **settings)
    try:
        with atomic.staged_dir(out) as tmp:  # an existing `out` is empty (checked above)
            _write_files(tmp, samples, rows)
    except OSError as err:
        if err.errno not in atomic.NO_SPACE:
            raise
        why = "" if err.errno == errno.ENOSPC else f" ({err.strerror})"
        raise UserError(
            f"no space left on {atomic.device_of(out)} while writing the dataset {out}{why}; nothing was kept: "
            "free space or pass another --out"
        ) from None
    return out


def noisy_captions(
    rng: np.random.Generator, samples: Sequence[Sample], p: float, shapes: Sequence[str], generic: Sequence[bool] | None = None
) -> list[str]:
    """Each sample's caption with its shape, colour and background each replaced, with probability `p`, by another
    value; a wrong caption never names a held-out colour x shape pair nor an object the colour of its background.
    Where `generic[i]`, the caption says `GENERIC_NOUN` in the shape's place."""
    held = set(HELD_OUT)
    texts = []
    for i, sample in enumerate(samples):
        flip = rng.random(3) < p
        for _ in range(100):
            shape, color, background = sample.shape, sample.color, sample.background
            if flip[0] and len(shapes) > 1:
                shape = str(rng.choice([s for s in shapes if s != sample.shape]))
            if flip[1]:
                color = str(rng.choice([c for c in COLOR_NAMES if c != sample.color]))
            if flip[2]:
                background = str(rng.choice([c for c in COLOR_NAMES if c != sample.background]))
            if color != background and (color, shape) not in held:
                break
        else:
            shape, color, background = sample.shape, sample.color, sample.background
        texts.append(caption(GENERIC_NOUN if generic and generic[i] else shape, color, background, sample.pattern))
    return texts


def plan_dataset(
    n: int,
    seed: int = 0,
    size: int = 64,
    shapes: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
    split: str = "train",
    pattern: str = "solid",
    conditioning: bool = False,
    caption_noise: float = 0.0,
    generic_noun: float = 0.0,
) -> tuple[list[Sample], list[dict[str, object]]]:
    """The scenes of a dataset and its metadata.jsonl rows, drawn without rendering (see `write_dataset`)."""
    shapes = BASE_SHAPES if shapes is None else tuple(shapes)
    samples = sample_world(
        np.random.default_rng(seed),
        n,
        shapes=shapes,
        colors=COLOR_NAMES if colors is None else tuple(colors),
        backgrounds=backgrounds,
        split=split,
        pattern=pattern,
        canvas=size,
    )
    texts = None
    if caption_noise or generic_noun:
        generic = np.random.default_rng([seed, 2]).random(n) < generic_noun
        texts = noisy_captions(np.random.default_rng([seed, 1]), samples, caption_noise, shapes, generic.tolist())
    width = max(5, len(str(n - 1)))
    rows = []
    for i, sample in enumerate(samples):
        name = f"{i:0{width}d}.png"
        row: dict[str, object] = {"file_name": f"images/{name}", "text": sample.text, **sample.fields()}
        if texts is not None:
            row.update(text=texts[i], true_text=sample.text)
        if conditioning:
            row["conditioning_image"] = f"conditioning/{name}"
            row["mask_image"] = f"masks/{name}"
        rows.append(row)
    return samples, rows


def metadata_text(rows: Sequence[dict[str, object]]) -> str:
    """metadata.jsonl as `write_dataset` writes it."""
    return "\n".join(json.dumps(row) for row in rows) + "\n"


def _write_files(root: Path, samples: Sequence[Sample], rows: Sequence[dict[str, object]]) -> None:
    """Render every sample at its canvas size into the files its row names, then metadata.jsonl."""
    conditioning = "conditioning_image" in rows[0]
    for sub in ("images", "conditioning", "masks") if conditioning else ("images",):
        (root / sub).mkdir()
    for sample, row in zip(samples, rows, strict=True):
        rgb, mask = _render_arrays(sample, sample.canvas)
        Image.fromarray(rgb).save(root / str(row["file_name"]))
        if conditioning:
            preprocess("canny", Image.fromarray(rgb)).save(root / str(row["conditioning_image"]))  # as --control canny=
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / str(row["mask_image"]))
    (root / "metadata.jsonl").write_text(metadata_text(rows), encoding="utf-8")


def read_metadata(dataset_dir: str | os.PathLike[str]) -> list[dict[str, object]]:
    """The rows of a dataset's metadata.jsonl."""
    path = Path(dataset_dir) / "metadata.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found: point at a directory written by `sdkit data shapes`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

