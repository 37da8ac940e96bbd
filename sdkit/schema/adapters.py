"""References to LoRA and embedding files, as written on the command line (`PATH[:WEIGHT]`, `PATH[:TOKEN]`) or in YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from sdkit.schema.base import Schema

TOKEN_RULE = "a token must be one word without spaces or ':', e.g. <my-thing>"


def token_problem(token: str) -> str | None:
    """Why `token` cannot name an embedding (None if it can): prompts are split into words at spaces, and
    `--embedding PATH:TOKEN` at the first ':' of the file name. (Validation errors add "(got TOKEN)".)"""
    if not token or any(c.isspace() or c == ":" for c in token):
        return TOKEN_RULE
    return None


def _split(value: str, cast) -> tuple[str, Any]:
    """'path:x' → ('path', cast(x)) when x parses; otherwise the whole string is the path."""
    head, sep, tail = value.rpartition(":")
    if sep and head and "/" not in tail and "\\" not in tail:
        try:
            return head, cast(tail)
        except ValueError:
            pass
    return value, None


class LoraRef(Schema):
    """A LoRA file (or library name) and its weight; written `PATH[:WEIGHT[:UNET_WEIGHT]]` on the command line."""

    path: Path = Field(description="LoRA .safetensors file (diffusers/peft, kohya or A1111 format), or a library name.")
    weight: float = Field(1.0, ge=-10, le=10, description="Adapter weight (scale); with unet_weight: the text encoders' weight.")
    unet_weight: float | None = Field(
        None, ge=-10, le=10, description="The UNet's weight when it differs from the text encoders' (A1111's <lora:NAME:TE:UNET>)."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            path, weight = _split(value, float)
            if weight is None:
                return {"path": path}
            head, first = _split(path, float)
            if first is not None:  # PATH:TE:UNET
                return {"path": head, "weight": first, "unet_weight": weight}
            return {"path": path, "weight": weight}
        return value


class EmbeddingRef(Schema):
    """A textual-inversion embedding and the token it binds; written `PATH[:TOKEN]`."""

    path: Path = Field(description="Embedding file (.safetensors; diffusers or A1111 format).")
    token: str | None = Field(None, description="Token to use in prompts (default: the file's own, else its name).")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            cut = max(value.rfind("/"), value.rfind("\\")) + 1  # the token starts at the file name's first ':'
            name, sep, token = value[cut:].partition(":")
            return {"path": value[:cut] + name, "token": token} if sep else {"path": value}
        return value

    @field_validator("token")
    @classmethod
    def _one_word(cls, value: str | None) -> str | None:
        problem = None if value is None else token_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class ControlRef(Schema):
    """One ControlNet condition; written `TYPE=IMAGE[@SCALE]` (IMAGE `map:PATH` = already a control map)."""

    type: str = Field(description="Condition type: canny, openpose, depth, seg, normal, mlsd, hed, scribble, lineart, ...")
    image: Path = Field(description="Source image (preprocessed automatically) or, with preprocessed, a ready control map.")
    scale: float = Field(1.0, ge=0, le=5, description="controlnet_conditioning_scale for this condition.")
    preprocessed: bool = Field(False, description="The image is already a control map: skip the preprocessor.")
    start: float = Field(0.0, ge=0, le=1, description="Fraction of the steps at which this control starts.")
    end: float = Field(1.0, ge=0, le=1, description="Fraction of the steps at which this control stops.")
    model: str | None = Field(None, description="ControlNet to use (folder, hub id or alias); default: the standard one for the type and model family.")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        kind, sep, rest = value.partition("=")
        if not sep or not kind or not rest:
            raise ValueError(f"control {value!r}: write TYPE=IMAGE[@SCALE], e.g. canny=photo.png@0.8")
        image, at, scale = rest.rpartition("@") if "@" in rest else (rest, "", "")
        out: dict[str, Any] = {"type": kind.strip().lower(), "image": image if at else rest}
        if at:
            try:
                out["scale"] = float(scale)
            except ValueError:
                raise ValueError(f"control {value!r}: the scale after @ must be a number") from None
        if str(out["image"]).startswith("map:"):
            out.update(image=str(out["image"])[4:], preprocessed=True)
        return out
