"""`GenerateRecipe`: one typed description of a txt2img / img2img / inpaint job (CLI flags and YAML resolve into it).

Seeds live in 0..2^32 - 1 (A1111's range). Image k of a run uses (seed + k) mod 2^32, so every seed written into an
image is one that `--seed` accepts and `sdkit replay` reruns; `--seed -1` means a random seed, as in A1111.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sdkit.schema.adapters import ControlRef, EmbeddingRef, LoraRef
from sdkit.schema.base import Placement, Speed, cli

SEED_RANGE = 2**32  # seeds are 0..SEED_RANGE - 1


def image_seed(seed: int, k: int) -> int:
    """The seed of image k (0-based) of a run: seed + k, wrapping past 2^32 - 1 to 0 so that it stays replayable."""
    return (seed + k) % SEED_RANGE


def _multiple_of_8(value: int | None, name: str) -> int | None:
    if value is not None and value % 8:
        lower, upper = value - value % 8, value - value % 8 + 8
        raise ValueError(f"{name} must be a multiple of 8 (got {value}; use {lower or 8} or {upper})")
    return value


class GenerateRecipe(Speed, Placement):
    """Generate images from a prompt: txt2img, img2img (with init_image) or inpaint (with init_image and mask)."""

    prompt: str = Field("", description="What to draw.", json_schema_extra=cli(argument=True))
    negative: str = Field("", description="What to avoid (negative prompt).")
    prompt_syntax: Literal["a1111", "plain"] = Field(
        "a1111",
        description="a1111: (word:1.3), (word), [word], BREAK and prompts of any length read as A1111 reads them; "
        "plain: the text as written (still in 75-token chunks).",
    )
    model: str = Field(
        "shapes",
        description="A diffusers folder, a .safetensors checkpoint, a name or short hash in the model library, a hub "
        "id (org/name) or an alias (shapes, sd15, sd21, sdxl, sd-turbo, sdxl-turbo).",
        json_schema_extra=cli("-m"),
    )
    config: str | None = Field(
        None,
        description="Single-file checkpoints: the configs to load it with: a diffusers folder, a family (sd1, "
        "sd1-inpaint, sd2, sd2-v, sd2-inpaint, sdxl, sdxl-inpaint, shapes) or an original .yaml. Default: detected "
        "from the keys.",
    )
    vae: str | None = Field(
        None,
        description="Replace the model's VAE: a diffusers folder, a single-file VAE, a library name or hash, an alias "
        "(sd-vae-ft-mse, sdxl-vae-fp16-fix, ...) or a hub id.",
    )
    models_dir: list[Path] = Field(
        [],
        description="Model library folder (checkpoints/ loras/ embeddings/ vae/ controlnet/, or an A1111 or ComfyUI "
        "installation); repeatable. Default: $SDKIT_MODELS, else models_dir in ~/.config/sdkit/config.yaml.",
    )
    scheduler: str = Field(
        "DPM++ 2M", description='Sampler by A1111 name ("Euler a", "DPM++ 2M Karras", ...), ComfyUI name or diffusers class; see `sdkit schedulers`.'
    )
    schedule_type: str = Field(
        "automatic",
        description="automatic (the sampler's A1111 default: Karras for DPM++ 2M, ...) | uniform | karras | exponential | "
        "sgm-uniform | simple | normal | ddim | beta (ComfyUI names too); see `sdkit schedulers`.",
    )
    clip_skip: int = Field(
        1, ge=1, le=12, description="A1111's clip skip: 1 = the text encoder's last layer, 2 = the one before (SD 1.x; "
        "A1111 ignores it for SD 2.x and SDXL, and so does sdkit)."
    )
    steps: int = Field(20, ge=1, le=1000, description="Denoising steps.")
    cfg: float = Field(7.0, ge=0, le=100, description="Classifier-free guidance scale (CFG scale); 1 disables guidance.")
    width: int | None = Field(
        None, ge=8, le=8192, description="Image width in px, a multiple of 8. Default: the model's size, or the init image's."
    )
    height: int | None = Field(
        None, ge=8, le=8192, description="Image height in px, a multiple of 8. Default: the model's size, or the init image's."
    )
    seed: int | None = Field(
        None,
        ge=-1,
        lt=SEED_RANGE,
        description="Seed of image 1, 0..4294967295 (2^32 - 1); image k uses seed + k - 1, wrapping to 0 past the top. "
        "Default (or -1): random, recorded in the output.",
    )
    num_images: int = Field(1, ge=1, le=10000, description="How many images to generate.")
    init_image: Path | None = Field(None, description="Start image: img2img, or inpaint together with --mask.")
    strength: float = Field(
        0.75, gt=0, le=1, description="img2img/inpaint: how much of the init image is repainted, in (0, 1]."
    )
    mask: Path | None = Field(None, description="Inpaint mask (white = repaint), the same size as the init image.")
    out: Path = Field(Path("outputs"), description="Output folder; files are numbered 00001-<seed>.png and never overwritten.", json_schema_extra=cli("-o"))
    lora: list[LoraRef] = Field(
        [], description="LoRA as PATH|NAME[:WEIGHT[:UNET_WEIGHT]] (diffusers, kohya or A1111 format; NAME from the "
        "model library); repeat for several adapters. <lora:NAME:WEIGHT> in the prompt does the same."
    )
    embedding: list[EmbeddingRef] = Field(
        [], description="Textual-inversion embedding as PATH|NAME[:TOKEN] (diffusers or A1111 format); repeatable. "
        "Library embeddings also apply when their name is a word of the prompt, as in A1111."
    )
    control: list[ControlRef] = Field(
        [],
        description="ControlNet condition TYPE=IMAGE[@SCALE] (canny, openpose, depth, seg, normal, mlsd, hed, scribble, "
        "lineart); IMAGE is preprocessed unless written map:PATH; repeat for multi-ControlNet.",
    )
    controlnet: list[str] = Field(
        [], description="ControlNet model per type as TYPE=MODEL (folder, hub id or alias such as shapes-canny); repeatable."
    )
    control_preprocessed: bool = Field(False, description="Every --control image is already a control map.")
    annotators_dir: Path | None = Field(
        None, description="Local folder of preprocessor weights (lllyasviel/Annotators layout); default: the hub."
    )
    refiner: str | None = Field(
        None,
        description="SDXL refiner (folder, file, hub id) that finishes the last part of the denoising from the base "
        "model's latents (diffusers' denoising_end / denoising_start); txt2img only.",
    )
    refiner_switch: float = Field(
        0.8, gt=0, lt=1, description="With --refiner: the share of the schedule the base model denoises before the hand-off."
    )
    fuse_lora: bool = Field(False, description="Fuse the LoRAs into the weights (faster sampling; same image up to float error).")
    backend: str = Field(
        "auto",
        pattern=r"^(auto|torch|openvino(:[A-Z][A-Z0-9_.]*)?)$",
        description="Inference engine: torch, or openvino (pip install 'sdkit[openvino]': UNet, VAE and text encoder "
        "converted per size and cached; openvino:GPU / openvino:NPU for Intel devices). auto = torch, or what --fast picks.",
    )
    allow_pickle: bool = Field(
        False, description="Allow .ckpt/.bin/.pt weights (loaded with torch's weights_only=True). Off: safetensors only."
    )

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_in_range(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value == -1:
                return None  # random, as A1111's -1
            if not 0 <= value < SEED_RANGE:
                raise ValueError(f"seed must be in 0..{SEED_RANGE - 1} (2^32 - 1), or -1 for a random one (got {value})")
        return value

    @field_validator("width")
    @classmethod
    def _width_multiple_of_8(cls, value: int | None) -> int | None:
        return _multiple_of_8(value, "width")

    @field_validator("height")
    @classmethod
    def _height_multiple_of_8(cls, value: int | None) -> int | None:
        return _multiple_of_8(value, "height")

    @model_validator(mode="after")
    def _mask_needs_init_image(self) -> GenerateRecipe:
        if self.mask is not None and self.init_image is None:
            raise ValueError("mask needs init_image: give --init-image with --mask (inpaint)")
        return self

    @model_validator(mode="after")
    def _controlnet_overrides(self) -> GenerateRecipe:
        for item in self.controlnet:
            kind, sep, model = item.partition("=")
            if not sep or not kind or not model:
                raise ValueError(f"controlnet {item!r}: write TYPE=MODEL, e.g. canny=lllyasviel/control_v11p_sd15_canny")
        return self

    def controlnet_for(self, control: ControlRef) -> str | None:
        """The ControlNet model for one condition: its own `model`, else a --controlnet TYPE=MODEL override."""
        overrides = dict(item.split("=", 1) for item in self.controlnet)
        return control.model or overrides.get(control.type)

    @property
    def mode(self) -> str:
        """txt2img, img2img or inpaint, following the inputs."""
        if self.init_image is None:
            return "txt2img"
        return "inpaint" if self.mask is not None else "img2img"
