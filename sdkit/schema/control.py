"""ControlNet schemas: each control type's detector options, `PreprocessRecipe` (`sdkit preprocess`) and
`TrainControlNetRecipe` (`sdkit train controlnet`).

`OPTIONS` is the one list of control types (its keys, in order) with the options each type's detector takes; the
detector table in `sdkit.control.preprocessors` is keyed by the same names.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from sdkit.schema.base import Schema, cli
from sdkit.schema.train import DenoisingLoss, TrainCommon, TrainingImages

ANNOTATORS_ENV = "SDKIT_ANNOTATORS"


class NoOptions(Schema):
    """A detector without settings."""


class DetectorOptions(Schema):
    """Settings shared by the controlnet-aux detectors."""

    detect_resolution: int = Field(
        512,
        ge=64,
        le=4096,
        description="Run the detector on the image resized so its shorter side is this many px (rounded to a "
        "multiple of 64, as controlnet-aux does); the map is resized back to the input size.",
    )


class CannyOptions(Schema):
    """OpenCV Canny on the colour image, at the input's own size."""

    low_threshold: int = Field(100, ge=0, le=255, description="Hysteresis low threshold (weak edges kept if linked).")
    high_threshold: int = Field(200, ge=0, le=255, description="Hysteresis high threshold (strong edges).")

    @model_validator(mode="after")
    def _ordered(self) -> CannyOptions:
        if self.low_threshold > self.high_threshold:
            raise ValueError(
                f"low_threshold {self.low_threshold} is above high_threshold {self.high_threshold}: swap them"
            )
        return self


class OpenposeOptions(DetectorOptions):
    """OpenPose skeletons (body, optionally hands and face) drawn on black."""

    body: bool = Field(True, description="Draw the body skeleton.")
    hand: bool = Field(False, description="Also detect and draw hand keypoints.")
    face: bool = Field(False, description="Also detect and draw face keypoints.")


class MlsdOptions(DetectorOptions):
    """M-LSD straight lines drawn white on black."""

    score_threshold: float = Field(0.1, ge=0, le=1, description="Minimum line score (controlnet-aux thr_v).")
    distance_threshold: float = Field(0.1, ge=0, le=20, description="Minimum line length score (controlnet-aux thr_d).")


class HedOptions(DetectorOptions):
    """HED soft edges."""

    safe: bool = Field(False, description="Quantise the edge map (controlnet-aux 'safe' mode: fewer hidden details).")


class LineartOptions(DetectorOptions):
    """Line art (Informative Drawings generator)."""

    coarse: bool = Field(False, description="Use the coarse model (bolder, fewer lines).")


class ShuffleOptions(DetectorOptions):
    """Content shuffle: the image warped by a smooth random flow field."""

    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the random flow field (same seed, same map).")
    cell: int = Field(
        256, ge=8, le=4096, description="Noise cell size in px at detect_resolution (smaller: more scrambled)."
    )


OPTIONS: MappingProxyType[str, type[Schema]] = MappingProxyType(
    {
        "canny": CannyOptions,
        "openpose": OpenposeOptions,
        "depth": NoOptions,
        "seg": NoOptions,
        "normal": DetectorOptions,
        "mlsd": MlsdOptions,
        "hed": HedOptions,
        "scribble": DetectorOptions,
        "lineart": LineartOptions,
        "shuffle": ShuffleOptions,
    }
)
CONTROL_TYPES: tuple[str, ...] = tuple(OPTIONS)


def check_type(kind: str) -> str:
    """The control type itself, or a ValueError listing the valid ones."""
    if kind not in OPTIONS:
        raise ValueError(f"unknown control type {kind!r}: choose from {', '.join(CONTROL_TYPES)}")
    return kind


def option_names(kind: str) -> list[str]:
    return list(OPTIONS[check_type(kind)].model_fields)


def parse_options(kind: str, options: dict[str, Any]) -> Schema:
    """Validate a type's options (strings from KEY=VALUE are coerced); a ValueError names the bad one."""
    schema = OPTIONS[check_type(kind)]
    try:
        return schema.model_validate(options)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        name = ".".join(str(p) for p in first["loc"])
        valid = ", ".join(option_names(kind)) or "none"
        if first["type"] == "extra_forbidden":
            raise ValueError(f"{kind} has no option {name!r} (its options: {valid})") from None
        message = str(first["msg"]).removeprefix("Value error, ")
        where = f"{kind} option {name}" if name else f"{kind} options"
        raise ValueError(
            f"{where}: {message} (got {first.get('input')!r})" if name else f"{where}: {message}"
        ) from None


def _options_help() -> str:
    parts = []
    for kind, schema in OPTIONS.items():
        fields = ", ".join(f"{n}={f.default}" for n, f in schema.model_fields.items())
        parts.append(f"{kind}: {fields or '-'}")
    return "; ".join(parts)


class PreprocessRecipe(Schema):
    """`sdkit preprocess TYPE IMAGE -o OUT.png`: turn a picture into a ControlNet control map."""

    task: Literal["preprocess"] = Field(
        "preprocess", description="Task name in YAML job lists.", json_schema_extra=cli(hidden=True)
    )
    type: str = Field(description=f"Control type: {', '.join(CONTROL_TYPES)}.", json_schema_extra=cli(argument=True))
    image: Path = Field(description="Source picture (PNG, JPEG, ...).", json_schema_extra=cli(argument=True))
    output: Path = Field(
        description="Where to write the control map (PNG, same size as the input).", json_schema_extra=cli("-o")
    )
    options: list[str] = Field(
        default_factory=list,
        description=f"Detector setting as KEY=VALUE, repeatable. Per type (defaults): {_options_help()}.",
        json_schema_extra=cli("-p", name="--option"),
    )
    annotators_dir: Path | None = Field(
        None,
        description=f"Local folder of annotator weights (a copy of lllyasviel/Annotators; transformers models in "
        f"ORG/NAME subfolders). Default: ${ANNOTATORS_ENV} if set, else download from the Hugging Face Hub.",
    )
    device: str = Field(
        "cpu",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="Where the detector runs: cpu | auto | cuda[:N] | mps.",
    )
    overwrite: bool = Field(False, description="Replace OUTPUT if it exists (otherwise an existing file is an error).")

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return check_type(value)

    @model_validator(mode="after")
    def _options(self) -> PreprocessRecipe:
        parse_options(self.type, self.option_values())
        return self

    def option_values(self) -> dict[str, str]:
        """The KEY=VALUE options as a mapping (values still strings; `parse_options` types them)."""
        values: dict[str, str] = {}
        for item in self.options:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"option {item!r} is not KEY=VALUE: write e.g. --option low_threshold=50")
            if key.strip() in values:
                raise ValueError(f"option {key.strip()!r} is given twice: give it once")
            values[key.strip()] = value.strip()
        return values


class TrainControlNetRecipe(TrainingImages, DenoisingLoss, TrainCommon):
    """`sdkit train controlnet`: train a ControlNet for a frozen SD 1.x/2.x pipeline on (image, control map, caption)."""

    task: Literal["train-controlnet"] = Field(
        "train-controlnet", description="Task name in YAML job lists.", json_schema_extra=cli(hidden=True)
    )
    model: str = Field(
        description="The frozen base pipeline: a diffusers folder, hub id or alias (e.g. shapes).",
        json_schema_extra=cli("-m"),
    )
    controlnet: str | None = Field(
        None, description="Continue training this ControlNet folder instead of starting from the UNet (from_unet)."
    )
    data_dir: Path = Field(
        description="Hugging Face imagefolder: metadata.jsonl with the image, conditioning image and caption columns.",
        json_schema_extra=cli("-d", "--data"),
    )
    image_column: str = Field("file_name", description="metadata.jsonl column with the target image.")
    conditioning_image_column: str = Field(
        "conditioning_image", description="metadata.jsonl column with the control map."
    )
    caption_column: str = Field("text", description="metadata.jsonl column with the caption.")
    control_type: str | None = Field(
        None, description="What the control maps are (canny, depth, ...): recorded in OUT/control.json for users."
    )
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N rows of the dataset.")
    random_flip: bool = Field(False, description="Flip image and control map together at random.")
    cache_latents: bool = Field(
        True, description="Encode every image once with the frozen VAE (needs center_crop and no random_flip)."
    )
    caption_dropout: float = Field(
        0.0, ge=0, le=1, description="Probability of an empty caption (diffusers' proportion_empty_prompts)."
    )
    conditioning_embedding_out_channels: list[int] | None = Field(
        None,
        description="Channels of the control-map encoder; it downsamples len-1 times, which must match the VAE "
        "factor. None: SD's (16, 32, 96, 256) for a factor-8 VAE, (16, 32, 64) for factor 4, ...",
    )
    validation_conditioning: list[Path] = Field(
        default_factory=list,
        description="Control maps for the validation grid, one per validation prompt (or one for all prompts).",
    )
    validation_from_data: int = Field(
        0, ge=0, le=16, description="Also validate on the first N dataset rows (their caption and control map)."
    )

    @field_validator("control_type")
    @classmethod
    def _control_type(cls, value: str | None) -> str | None:
        return None if value is None else check_type(value)

    @model_validator(mode="after")
    def _check(self) -> TrainControlNetRecipe:
        if self.validation_conditioning and len(self.validation_conditioning) not in (1, len(self.validation_prompts)):
            raise ValueError(
                f"{len(self.validation_conditioning)} validation_conditioning images for "
                f"{len(self.validation_prompts)} validation_prompts: give one per prompt, or one for all"
            )
        if self.validation_prompts and not self.validation_conditioning:
            raise ValueError("validation_prompts need validation_conditioning (control maps): give one per prompt")
        channels = self.conditioning_embedding_out_channels
        if channels is not None and (not channels or any(c < 1 for c in channels)):
            raise ValueError("conditioning_embedding_out_channels must be positive channel counts, e.g. [16, 32, 64]")
        return self
