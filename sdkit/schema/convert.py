"""`ConvertRecipe`: `sdkit convert SOURCE -o OUTPUT`, between a diffusers folder and a single-file checkpoint (both
directions), a VAE folder and a VAE file, and LoRA formats (diffusers/peft <-> kohya/A1111)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from sdkit.schema.base import Schema, cli


class ConvertRecipe(Schema):
    """Convert a model between formats; what SOURCE is decides what is done (see `sdkit convert --help`)."""

    task: Literal["convert"] = Field("convert", description="Task name in YAML job lists.", json_schema_extra=cli(hidden=True))
    source: str = Field(
        description="A diffusers pipeline folder, a single-file checkpoint (.safetensors), a VAE folder or file, or a "
        "LoRA file; a name or short hash in the model library works too.",
        json_schema_extra=cli(argument=True),
    )
    output: Path = Field(
        description="Where to write: a .safetensors file (a single-file checkpoint, VAE or LoRA) or a new folder "
        "(diffusers). Never overwritten.",
        json_schema_extra=cli("-o"),
    )
    to: Literal["auto", "kohya", "diffusers"] = Field(
        "auto", description="LoRAs: the format to write (auto: kohya from diffusers/peft, diffusers from kohya)."
    )
    dtype: Literal["keep", "fp32", "fp16", "bf16"] = Field(
        "keep", description="Precision of the written weights (keep: the source's own)."
    )
    config: str | None = Field(
        None,
        description="Single-file sources: the configs to read it with (a diffusers folder, a family such as sd1, "
        "sd2-v or sdxl, or an original .yaml); default: detected from the keys.",
    )
    vae: str | None = Field(None, description="Checkpoint -> folder: the VAE to include when the file has none (PATH|NAME).")
    models_dir: list[Path] = Field([], description="Model library folder(s) for names (default: $SDKIT_MODELS, ...).")
    allow_pickle: bool = Field(False, description="Allow a pickled (.ckpt) source, read with torch's weights_only loader.")
