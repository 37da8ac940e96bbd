"""The shapes world's vocabulary: shapes, colours, patterns, held-out combinations and captions.

Pure Python (no numpy), so schemas and the CLI can import it at start-up; `sdkit.data.shapes` renders it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

BASE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Drawable and scorable, but outside the shipped model's training set: a broader base world trains on them too.
MORE_SHAPES: tuple[str, ...] = ("pentagon", "hexagon", "cross", "heart", "crescent", "arrow")
NEW_SHAPES: tuple[str, ...] = ("star",)
SHAPES: tuple[str, ...] = BASE_SHAPES + MORE_SHAPES + NEW_SHAPES
PATTERNS: tuple[str, ...] = ("solid", "striped")
COLORS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 40, 40),
        "orange": (245, 140, 20),
        "yellow": (240, 215, 40),
        "green": (40, 165, 65),
        "blue": (30, 100, 225),
        "purple": (160, 40, 170),
        "white": (245, 245, 245),
    }
)
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("purple", "diamond"),
)
SPLITS: tuple[str, ...] = ("train", "heldout", "all")
CONCEPT_TOKEN = "sks"
GENERIC_NOUN = "shape"  # the class noun: "a red shape on a blue background"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(shape: str, color: str, background: str, pattern: str = "solid") -> str:
    """The caption of a scene, e.g. "an orange striped star on a white background" (`shape` may be `GENERIC_NOUN`)."""
    stripe = "striped " if pattern == "striped" else ""
    return f"{_article(color)} {color} {stripe}{shape} on {_article(background)} {background} background"


def vocabulary_words() -> list[str]:
    """Every word a caption can contain (and the concept words "sks", "shape"), sorted."""
    return sorted({"a", "an", "on", "background", GENERIC_NOUN, "striped", CONCEPT_TOKEN, *SHAPES, *COLOR_NAMES})


def parse_caption(text: str) -> dict[str, str] | None:
    """The scene a caption describes ({"shape", "color", "background", "pattern"}), for captions `caption()` writes
    ("a red circle on a blue background", "an orange striped star on a white background"); None for any other text."""
    words = text.strip().lower().split()
    if len(words) not in (7, 8) or words[0] != _article(words[1]) or words[-1] != "background" or words[-4] != "on":
        return None
    color, *middle, shape = words[1:-4]
    background = words[-2]
    pattern = "striped" if middle == ["striped"] else "solid"
    if middle not in ([], ["striped"]) or color not in COLORS or background not in COLORS or shape not in SHAPES:
        return None
    if words[-3] != _article(background):
        return None
    return {"shape": shape, "color": color, "background": background, "pattern": pattern}
