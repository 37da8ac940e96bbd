"""Shared pydantic base and the placement fields that every task uses.

Field metadata for the CLI lives here too, in `json_schema_extra={"cli": {...}}`: `flags` (extra short names such as
"-m") and `argument` (a positional argument). The CLI derives its options from the schema, so a field's
`description` is its `--help` text and its default is the only default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Schema(BaseModel):
    """Base of every sdkit schema: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)


def cli(*flags: str, argument: bool = False, hidden: bool = False, name: str | None = None) -> dict[str, Any]:
    """`json_schema_extra` for a field: extra flag names, its main flag `name`, positional argument, or hidden."""
    return {"cli": {"flags": list(flags), "argument": argument, "hidden": hidden, "name": name}}


class Placement(Schema):
    """Where and in which precision the models run (mixed into every task schema)."""

    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="auto | cpu | cuda[:N] | mps. auto picks cuda > mps > cpu (one device per process under accelerate launch).",
    )
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="Weight and compute precision: auto | fp32 | fp16 | bf16. auto = fp16 on cuda/mps, fp32 on cpu."
    )
    offload: Literal["none", "model", "sequential"] = Field(
        "none",
        description="CPU offload on an accelerator: none | model (whole models moved in turn) | sequential (least VRAM, slowest).",
    )


class Speed(Schema):
    """Memory and speed switches for inference. Each changes pixels at most by float rounding (tiny_vae and a dtype
    chosen by fast excepted); the effect measured on each device is in README.md ("Speed")."""

    attention_slicing: bool = Field(False, description="Compute attention in slices: less memory, slightly slower.")
    vae_slicing: bool = Field(False, description="Decode a batch one image at a time: less memory.")
    vae_tiling: bool = Field(False, description="Decode large images in overlapping tiles: far less memory at high resolution.")
    channels_last: bool = Field(False, description="Keep the UNet and VAE in channels-last memory format (faster on GPUs and on bf16 CPUs).")
    fuse_qkv: bool = Field(
        False, description="Fuse each attention's query/key/value projections into one matmul (not with LoRAs or attention slicing)."
    )
    tiny_vae: str | None = Field(
        None, description="Decode with an AutoencoderTiny (TAESD) folder or hub id, e.g. madebyollin/taesd: fast previews, lower quality."
    )
    compile: bool = Field(
        False,
        description="torch.compile the UNet and the VAE decoder (inductor): the first image waits for compilation "
        "(minutes on CPU); pays off over many images on a GPU.",
    )
    fast: bool = Field(
        False,
        description="The best measured settings for the device (sdkit/fast.py): cuda = fp16, channels-last, fused QKV; "
        "cpu with native bf16 = bf16, channels-last (AVX512-BF16 without AMX: OpenVINO's bf16 hint where installed). Never overrides a --dtype you give; recorded in the image's recipe.",
    )

    def speed_key(self) -> tuple:
        """What a loaded pipeline depends on: jobs that differ here never share one (see pipelines.PipelineCache)."""
        return (self.attention_slicing, self.vae_slicing, self.vae_tiling, self.channels_last, self.fuse_qkv, self.tiny_vae,
                self.compile, self.fast)  # fmt: skip
