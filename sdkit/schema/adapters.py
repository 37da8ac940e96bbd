"""References to LoRA and embedding files, as written on the command line (`PATH[:WEIGHT]`, `PATH[:TOKEN]`) or in YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from sdkit.schema.base import Schema


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
    """A LoRA file and its weight; written `PATH[:WEIGHT]` on the command line."""

    path: Path = Field(description="LoRA .safetensors file (diffusers/peft, kohya or A1111 format).")
    weight: float = Field(1.0, ge=-10, le=10, description="Adapter weight (scale).")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            path, weight = _split(value, float)
            return {"path": path} if weight is None else {"path": path, "weight": weight}
        return value


class EmbeddingRef(Schema):
    """A textual-inversion embedding and the token it binds; written `PATH[:TOKEN]`."""

    path: Path = Field(description="Embedding file (.safetensors; diffusers or A1111 format).")
    token: str | None = Field(None, description="Token to use in prompts (default: the file's own, else its name).")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            path, token = _split(value, str)
            return {"path": path} if token is None else {"path": path, "token": token}
        return value
