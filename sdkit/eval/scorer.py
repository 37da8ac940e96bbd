"""Read a shapes-world image back: shape, colour, background and fill pattern, by classical image analysis.

The scorer knows the world's vocabulary (`sdkit.data.shapes`) but nothing about how an image was made, so it can
judge any generator. It refuses to guess: an image that is not one clean shape on a flat background is reported with
shape "none" (nothing in front of the background) or "unknown" (noise, several blobs, an unrecognisable outline).

Steps (on the image resized to 64 x 64):
 1. background = per-channel median of the 2-pixel border; it must cover most of the border ("purity").
 2. foreground = pixels far (RGB distance) from the background; 8-connected components. Exactly one dominant
    component of sane size is required.
 3. shape: the outer contour of that component, traced on a 4x bilinear upsampling of the distance map (sub-pixel):
    notches (deep convexity defects: star 5, cross 4, arrow 2, heart and crescent 1, the convex shapes none), the
    share of area in the upper half of the bounding box (the apex-up triangle 0.25, the heart 0.65, the rest 0.5),
    the radial harmonics (k-fold symmetry: pentagon 5, hexagon 6) and the fills of the enclosing circle and upright
    box (circle, square, diamond). Outlines that fit no shape, or sit near a boundary, are "unknown"
    (`classify_shape`).
 4. pattern: among interior pixels of the object's own hue (RGB direction within 10 degrees of the bright half's
    median; this drops pixels blended with the background), a 2-means split of brightness (HSV value). A dark
    cluster well below the bright one and well populated = striped (the stripe shade halves every channel).
 5. colour: nearest palette colour (CIELAB dE76) to the interior median, or, if striped, to the brighter cluster.

Run: `python -m sdkit.eval.scorer IMAGE...` prints one detection per image.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from sdkit.data.shapes import COLORS, Sample

WORK_SIZE = 64
BORDER = 2
MIN_PURITY = 0.6  # share of border pixels that must match the background colour
FG_MIN_DISTANCE = 30.0  # RGB distance from the background below which a pixel is always background
FG_RANGE = (0.015, 0.6)  # main component area as a share of the image
MIN_MAIN_SHARE = 0.9  # main component's share of all foreground pixels
MAX_COLOR_DE = 40.0  # farther than this from every palette colour = "unknown"
STRIPE_MAX_CONTRAST = 0.83  # dark / bright cluster brightness below this = striped (the shade is 0.5)
STRIPE_MIN_SHARE = 0.15
SAME_HUE_DEGREES = 10.0  # a stripe's shade points the same way as the object colour in RGB space
MAX_ELONGATION = 0.1  # 2nd radial harmonic above this: an oval or oblong, not a circle, square or diamond
NOTCH_DEPTH = 0.1  # convexity defect depth, as a share of the enclosing radius, that counts as a notch


@dataclass(frozen=True)
class Outline:
    """Geometry of the object's outer contour."""

    solidity: float  # area / convex hull area: 1 for convex shapes, ~0.6 for the star
    circle_fill: float  # area / minimum enclosing circle: 1 circle, 0.64 square and diamond, 0.41 triangle
    box_fill: float  # area / upright bounding box: 1 square, 0.79 circle, 0.5 diamond and triangle
    top_share: float  # share of the area in the upper half of the bounding box: 0.25 triangle, 0.65 heart, ~0.5 the rest
    notches: int  # convexity defects deeper than NOTCH_DEPTH x enclosing radius: star 5, cross 4, arrow 2, heart and
    # crescent 1, the convex shapes 0
    deepest: float  # deepest convexity defect / enclosing radius
    harmonics: tuple[float, ...]  # amplitudes 1..8 of the radius-vs-angle profile / mean radius (star: 5th ~0.23)

    def harmonic(self, k: int) -> float:
        return self.harmonics[k - 1]

    def dominance(self, k: int) -> float:
        """Harmonic k over the largest other harmonic in 2..8: > 1 when k-fold symmetry dominates the outline."""
        others = [self.harmonic(j) for j in range(2, 9) if j != k]
        return self.harmonic(k) / max(max(others), 1e-9)


@dataclass(frozen=True)
class Detection:
    """What the scorer saw. `clean` is True when no rejection rule fired (`reasons` lists those that did)."""

    shape: str
    color: str
    background: str
    pattern: str
    clean: bool
    reasons: tuple[str, ...]
    fg_fraction: float = 0.0
    main_share: float = 0.0
    n_components: int = 0
    background_purity: float = 0.0
    background_de: float = float("nan")
    color_de: float = float("nan")
    outline: Outline | None = None


def _to_rgb(img: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(img, Image.Image):
        arr = np.asarray(img.convert("RGB"))
    else:
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an H x W x 3 RGB array, got shape {arr.shape}")
        arr = arr[:, :, :3]
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr.astype(np.float64) * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255).astype(
                np.uint8
            )
    if arr.shape[:2] != (WORK_SIZE, WORK_SIZE):
        shrink = arr.shape[0] > WORK_SIZE or arr.shape[1] > WORK_SIZE
        arr = cv2.resize(arr, (WORK_SIZE, WORK_SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(arr)


def _lab(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def nearest_color(rgb: np.ndarray | tuple[float, float, float]) -> tuple[str, float]:
    """The palette colour nearest to one sRGB colour in CIELAB, and its dE76 distance."""
    names = list(COLORS)
    palette = _lab(np.array([COLORS[n] for n in names]))
    d = np.linalg.norm(palette - _lab(np.asarray(rgb)), axis=1)
    k = int(np.argmin(d))
    return names[k], float(d[k])


def _two_means_1d(v: np.ndarray, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 1-D 2-means started at the extremes: boolean masks (dark, bright)."""
    lo, hi = float(v.min()), float(v.max())
    bright = v > (lo + hi) / 2
    for _ in range(iters):
        if bright.all() or not bright.any():
            break
        lo, hi = float(v[~bright].mean()), float(v[bright].mean())
        bright = v > (lo + hi) / 2
    return ~bright, bright


def _interior(filled: np.ndarray) -> np.ndarray:
    """The object's pixels away from its anti-aliased, blurred edge: 2 px in, else 1 px, else all."""
    for k in (5, 3):
        inner = cv2.erode(filled, np.ones((k, k), np.uint8)).astype(bool)
        if inner.sum() >= 20:
            return inner
    return filled.astype(bool)


def outline_features(region: np.ndarray, dist: np.ndarray, threshold: float) -> Outline | None:
    """Trace the outer contour of `region` sub-pixel (the distance map, upsampled 4x, cut at `threshold`)."""
    scale = 4
    big = cv2.resize(
        np.where(region, dist, 0).astype(np.float32), None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR
    )
    mask = (big > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(c)
    if area < 4 * scale * scale:
        return None
    solidity = area / max(cv2.contourArea(cv2.convexHull(c)), 1e-9)
    _, radius = cv2.minEnclosingCircle(c)
    x, y, w, h = cv2.boundingRect(c)
    box_fill = area / max((w - 1) * (h - 1), 1e-9)  # boundingRect counts pixels; the contour runs through centres
    solid = np.zeros_like(mask)
    cv2.drawContours(solid, [c], -1, 1, thickness=cv2.FILLED)
    rows = solid.sum(axis=1).astype(np.float64)
    top_share = float(rows[: y + h // 2].sum() + (rows[y + h // 2] / 2 if h % 2 else 0)) / max(rows.sum(), 1.0)
    defects = cv2.convexityDefects(c, cv2.convexHull(c, returnPoints=False))
    depths = defects.reshape(-1, 4)[:, 3] / 256.0 / radius if defects is not None else np.zeros(1)
    return Outline(
        harmonics=_radial_harmonics(c[:, 0].astype(np.float64)),
        solidity=float(solidity),
        circle_fill=float(area / (np.pi * radius * radius)),
        box_fill=float(box_fill),
        top_share=top_share,
        notches=int(np.sum(depths > NOTCH_DEPTH)),
        deepest=float(depths.max(initial=0.0)),
    )


def _radial_harmonics(points: np.ndarray, bins: int = 72) -> tuple[float, ...]:
    """Fourier amplitudes 1..8 of the contour's farthest radius per angle bin around its centroid, / mean radius."""
    rel = points - points.mean(axis=0)
    angle = np.arctan2(rel[:, 1], rel[:, 0])
    radius = np.hypot(rel[:, 0], rel[:, 1])
    idx = ((angle + np.pi) / (2 * np.pi) * bins).astype(np.int64) % bins
    profile = np.full(bins, -1.0)
    np.maximum.at(profile, idx, radius)
    seen = profile >= 0
    grid = np.arange(bins)
    profile = np.interp(grid, grid[seen], profile[seen], period=bins)
    amp = 2 * np.abs(np.fft.rfft(profile)) / (bins * max(profile.mean(), 1e-9))
    return tuple(float(a) for a in amp[1:9])


def classify_shape(o: Outline) -> tuple[str, str]:
    """(shape, reason): shape is "unknown" with a reason when the outline is implausible or near a decision boundary.

    Thresholds sit between the ranges measured on rendered shapes, clean and degraded (noise 8/255, Gaussian blur
    0.6 px, JPEG 75; at blur 1 px and JPEG 60, small shapes are sometimes refused, rarely misread). Notched outlines:
    star 4-5 notches with a dominant 5th radial harmonic (>= 0.17; noise blobs with notches lack it), cross 4 notches
    with a dominant 4th (>= 0.19, the star's <= 0.10), arrow 2 notches, strong 2nd and 5th harmonics (>= 0.17,
    >= 0.11) and mirror symmetry (top share 0.45-0.55), heart 1-2 notches and top share 0.61-0.69 (the rest <= 0.55),
    crescent 1 deep notch (>= 0.41 of the radius, the heart's <= 0.34) and a strong 1st harmonic (>= 0.19, the
    heart's <= 0.10).
    Convex outlines: triangle top share <= 0.34 vs >= 0.44; pentagon 5th harmonic >= 0.064 vs <= 0.02 for the other
    convex shapes; hexagon 6th >= 0.031 vs <= 0.019; diamond circle+box fill <= 1.47 vs >= 1.57; circle circle-box
    fill >= 0.10 vs square <= -0.16.
    """
    if o.top_share >= 0.56 and 1 <= o.notches <= 2 and o.solidity >= 0.88 and 0.08 <= o.deepest <= 0.45:
        return "heart", ""
    if o.notches >= 2:
        if 4 <= o.notches <= 6 and o.solidity <= 0.92 and o.harmonic(5) >= 0.08 and o.dominance(5) >= 1.2:
            return "star", ""
        if o.notches == 4 and o.solidity <= 0.92 and o.harmonic(4) >= 0.12 and o.dominance(4) >= 1.5:
            return "cross", ""
        if o.notches == 2 and o.solidity <= 0.92 and o.harmonic(2) >= 0.12 and o.harmonic(5) >= 0.08 and abs(o.top_share - 0.5) <= 0.08:
            return "arrow", ""
        return "unknown", f"notched outline ({o.notches} notches) that is no star, cross or arrow"
    if o.notches == 1 and o.deepest >= 0.37 and o.solidity <= 0.88 and o.harmonic(1) >= 0.14:
        return "crescent", ""
    if o.solidity < 0.85 or o.deepest > 0.2:
        return "unknown", f"outline is dented but no known shape (solidity {o.solidity:.2f})"
    margin = 0.03
    if abs(o.top_share - 0.40) < margin:
        return "unknown", f"between triangle and not (top share {o.top_share:.2f})"
    if o.top_share < 0.40:
        if o.top_share < 0.15 or o.dominance(3) < 1.2:
            return "unknown", f"top-heavy outline that is not a triangle (top share {o.top_share:.2f})"
        return "triangle", ""
    if o.top_share > 0.6:
        return "unknown", f"upside-down or lopsided outline (top share {o.top_share:.2f})"
    if o.harmonic(2) > MAX_ELONGATION:
        return "unknown", f"elongated outline (2nd harmonic {o.harmonic(2):.2f})"
    for k, name, low, high in ((5, "pentagon", 0.035, 0.05), (6, "hexagon", 0.02, 0.025)):
        if o.dominance(k) >= 1.2 and o.harmonic(k) >= low:
            if o.harmonic(k) < high:
                return "unknown", f"between {name} and rounder (harmonic {k} {o.harmonic(k):.3f})"
            return name, ""
    round_square = o.circle_fill + o.box_fill
    if abs(round_square - 1.52) < margin:
        return "unknown", f"between diamond and circle/square (fill sum {round_square:.2f})"
    if round_square < 1.52:
        return "diamond", ""
    roundness = o.circle_fill - o.box_fill
    if abs(roundness + 0.03) < margin:
        return "unknown", f"between circle and square (fill difference {roundness:.2f})"
    return ("circle" if roundness > -0.03 else "square"), ""


def score_image(img: Image.Image | np.ndarray) -> Detection:
    """Analyse one image (PIL or H x W x 3 array, any size; resized to 64 x 64) without knowing what was asked for."""
    rgb = _to_rgb(img).astype(np.float64)
    reasons: list[str] = []

    # 1. background from the border
    ring = np.ones(rgb.shape[:2], bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    bg_rgb = np.median(rgb[ring], axis=0)
    purity = float(np.mean(np.linalg.norm(rgb[ring] - bg_rgb, axis=1) < FG_MIN_DISTANCE))
    background, background_de = nearest_color(bg_rgb)
    if purity < MIN_PURITY:
        reasons.append(f"border is not one colour (purity {purity:.2f})")
        background = "unknown"
    elif background_de > MAX_COLOR_DE:
        reasons.append(f"background colour is off-palette (dE {background_de:.0f})")
        background = "unknown"

    # 2. foreground components
    dist = np.linalg.norm(rgb - bg_rgb, axis=2)
    core = dist[dist > FG_MIN_DISTANCE]
    threshold = max(FG_MIN_DISTANCE, 0.5 * float(np.percentile(core, 25))) if core.size else FG_MIN_DISTANCE
    fg = (dist > threshold).astype(np.uint8)
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    common = dict(background_purity=purity, background_de=background_de)
    if areas.size == 0:
        return Detection("none", "unknown", background, "unknown", False, (*reasons, "no foreground"), **common)
    main = 1 + int(np.argmax(areas))
    fg_fraction = float(areas.max()) / fg.size
    main_share = float(areas.max()) / float(areas.sum())
    common.update(fg_fraction=fg_fraction, main_share=main_share, n_components=int(n_labels - 1))
    if not FG_RANGE[0] <= fg_fraction <= FG_RANGE[1]:
        reasons.append(f"object covers {fg_fraction:.1%} of the image (sane: {FG_RANGE[0]:.1%}..{FG_RANGE[1]:.0%})")
    if main_share < MIN_MAIN_SHARE:
        reasons.append(f"foreground is not one blob (largest component holds {main_share:.0%})")
    if reasons:
        return Detection("unknown", "unknown", background, "unknown", False, tuple(reasons), **common)

    # 3. shape from the outer contour (holes filled)
    region = labels == main
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(fg)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    region = cv2.dilate(filled, np.ones((3, 3), np.uint8)).astype(bool)
    dist_filled = np.where(filled.astype(bool), np.maximum(dist, threshold + 1), dist)
    outline = outline_features(region, dist_filled, threshold)
    shape, why = classify_shape(outline) if outline is not None else ("unknown", "no outline")
    if why:
        reasons.append(why)

    # 4. pattern and 5. colour from the interior (2 px in from the edge where the object is big enough)
    pixels = rgb[_interior(filled)]
    value = pixels.max(axis=1)  # HSV value: a stripe's shade halves it, a solid fill keeps it flat
    ref = np.median(pixels[value >= np.median(value)], axis=0)  # the bright half: the object colour
    cosine = pixels @ ref / np.maximum(np.linalg.norm(pixels, axis=1) * np.linalg.norm(ref), 1e-9)
    same_hue = cosine > np.cos(np.radians(SAME_HUE_DEGREES))  # drops pixels mixed with the background at the edge
    dark, bright = _two_means_1d(value[same_hue])
    minor = min(float(np.mean(dark)), float(np.mean(bright)))
    contrast = float(value[same_hue][dark].mean() / max(value[same_hue][bright].mean(), 1e-9)) if minor > 0 else 1.0
    striped = contrast < STRIPE_MAX_CONTRAST and minor >= STRIPE_MIN_SHARE
    obj_rgb = np.median(pixels[same_hue][bright], axis=0) if striped else np.median(pixels, axis=0)
    color, color_de = nearest_color(obj_rgb)
    if color_de > MAX_COLOR_DE:
        reasons.append(f"object colour is off-palette (dE {color_de:.0f})")
        color = "unknown"
    return Detection(
        shape,
        color,
        background,
        "striped" if striped else "solid",
        not reasons,
        tuple(reasons),
        color_de=color_de,
        outline=outline,
        **common,
    )


def score_against(expected: Sample | Mapping[str, Any], detection: Detection) -> dict[str, bool]:
    """Per-attribute correctness of a detection against the intended scene (a Sample or its metadata row)."""
    want = expected.fields() if isinstance(expected, Sample) else dict(expected)
    out = {
        "color": detection.color == want["color"],
        "shape": detection.shape == want["shape"],
        "background": detection.background == want["background"],
        "pattern": detection.pattern == want.get("pattern", "solid"),
    }
    out["all"] = all(out.values())
    return out


def main(argv: list[str] | None = None) -> None:
    for path in argv if argv is not None else sys.argv[1:]:
        d = score_image(Image.open(path))
        verdict = "clean" if d.clean else "; ".join(d.reasons)
        print(f"{path}: {d.color} {d.pattern} {d.shape} on {d.background} ({verdict})")


if __name__ == "__main__":
    main()
