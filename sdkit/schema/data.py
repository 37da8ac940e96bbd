"""Schema of `sdkit data shapes`: which synthetic shapes-world dataset to write (see `sdkit.data.shapes`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdkit.data.world import COLOR_NAMES, SHAPES
from sdkit.schema.base import Schema, cli


def _known(kind: str, names: list[str] | None, valid: tuple[str, ...]) -> list[str] | None:
    if names is None:
        return None
    if not names:
        raise ValueError(f"empty {kind} list: leave it out for the default or name at least one of {', '.join(valid)}")
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown))}: choose from {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} list {names} repeats a name: list each once")
    return names


class ShapesDataRecipe(Schema):
    """A synthetic shapes-world dataset in Hugging Face imagefolder layout."""

    out: Path = Field(
        description="Output directory; must not exist or be empty. Written to a temp dir, then renamed.", json_schema_extra=cli("-o")
    )
    n: int = Field(ge=1, description="Number of images.")
    seed: int = Field(0, description="Random seed; the same seed writes byte-identical files.")
    size: int = Field(64, ge=32, le=512, multiple_of=8, description="Image side in pixels (multiple of 8, 32..512).")
    shapes: list[str] | None = Field(
        None, description=f"Shapes to draw, from {', '.join(SHAPES)}. Default: the base set (circle, square, triangle, diamond)."
    )
    colors: list[str] | None = Field(None, description=f"Object colours, from {', '.join(COLOR_NAMES)}. Default: all.")
    backgrounds: list[str] | None = Field(
        None, description="Background colours (never the object's own colour). Default: all colours."
    )
    split: Literal["train", "heldout", "all"] = Field(
        "train",
        description="train: without the held-out colour x shape combinations; heldout: only those; all: everything.",
    )
    pattern: Literal["solid", "striped", "any"] = Field(
        "solid", description="Fill: solid (base set), striped (new concept), or any (each image 50/50)."
    )
    conditioning: bool = Field(
        False,
        description="Also write Canny edge maps (conditioning_image) and shape masks (mask_image) for ControlNet.",
    )
    caption_noise: float = Field(
        0.0,
        ge=0.0,
        le=0.9,
        description="Probability that a caption names a wrong shape, colour and background (each independently), as "
        "noisy web captions do; the true caption stays in the true_text column.",
    )
    generic_noun: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description='Probability that a caption calls the object "shape" instead of naming it ("a red shape on a blue '
        'background"): a class noun for DreamBooth class prompts. The true caption stays in the true_text column.',
    )

    @field_validator("shapes")
    @classmethod
    def _shapes(cls, v: list[str] | None) -> list[str] | None:
        return _known("shape", v, SHAPES)

    @field_validator("colors", "backgrounds")
    @classmethod
    def _colors(cls, v: list[str] | None) -> list[str] | None:
        return _known("colour", v, COLOR_NAMES)

    @model_validator(mode="after")
    def _some_background(self) -> ShapesDataRecipe:
        colors = self.colors or list(COLOR_NAMES)
        backgrounds = self.backgrounds or list(COLOR_NAMES)
        lonely = [c for c in colors if not [b for b in backgrounds if b != c]]
        if lonely:
            raise ValueError(f"no background differs from {', '.join(lonely)}: add another background colour")
        return self
