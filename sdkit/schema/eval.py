"""Evaluation recipes: `EvalShapesRecipe` (the shapes world's independent scorer), the field's metrics (CLIP score, CLIP
directional similarity, FID/KID) and `EvalSweepRecipe` (samplers x steps, cfg or LoRA weight, each cell scored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sdkit.schema.adapters import EmbeddingRef, LoraRef
from sdkit.schema.base import Placement, Schema, cli
from sdkit.schema.generate import GenerateRecipe


class EvalShapesRecipe(Placement):
    """Generate from held-out prompts and seeds, score colour/shape/background (and held-out combinations)."""

    model: str = Field("shapes", description="Model to evaluate (folder, file, hub id or alias).", json_schema_extra=cli("-m"))
    n: int = Field(200, ge=1, le=100000, description="Prompts scored per guidance value (and as many on held-out combinations).")
    seed: int = Field(1234, ge=0, description="Seed for the prompts and the noise (use one the training data did not).")
    cfg: list[float] = Field([5.0], min_length=1, description="Guidance values to compare; repeat the flag (--cfg 1 --cfg 5).")
    steps: int = Field(20, ge=1, le=1000, description="Denoising steps.")
    scheduler: str = Field("DPM++ 2M", description="Sampler (see `sdkit schedulers`).")
    batch_size: int = Field(50, ge=1, le=1000, description="Images per forward pass.")
    shapes: list[str] | None = Field(None, description="Shapes to prompt for (default: the base shapes).")
    pattern: Literal["solid", "striped"] = Field("solid", description="Fill pattern to prompt for and expect.")
    template: str | None = Field(
        None,
        description='Prompt template with {color} {shape} {background} {pattern}, e.g. "a {color} sks shape on a '
        '{background} background" (default: the world\'s own captions).',
    )
    expect_shape: str | None = Field(None, description="Shape the scorer should see, when the template hides it (e.g. star).")
    lora: list[LoraRef] = Field([], description="LoRA as PATH[:WEIGHT] applied while generating; repeatable.")
    embedding: list[EmbeddingRef] = Field([], description="Textual-inversion embedding as PATH[:TOKEN]; repeatable.")
    heldout: bool = Field(True, description="Also score the colour x shape combinations held out of training (composition).")
    backend: Literal["torch", "openvino"] = Field(
        "torch", description="Inference engine, as `sdkit generate --backend`: torch, or openvino (pip install 'sdkit[openvino]')."
    )
    out: Path | None = Field(None, description="Folder for report.json and a labelled sample grid (optional).", json_schema_extra=cli("-o"))
    as_json: bool = Field(False, description="Print the report as JSON on stdout instead of a table.", json_schema_extra=cli(name="--json"))

    @field_validator("cfg")
    @classmethod
    def _cfg_non_negative(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if v < 0]
        if bad:
            raise ValueError(f"cfg must be >= 0 (got {bad[0]})")
        return values


# --- the field's metrics: CLIP score, CLIP directional similarity, FID/KID, and sampler sweeps --------------------

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # the CLIP the field reports CLIP scores with (torchmetrics' default)


def _as_json() -> Any:
    return Field(False, description="Print the report as JSON on stdout instead of a table.", json_schema_extra=cli(name="--json"))


def _clip_model() -> Any:
    return Field(DEFAULT_CLIP, description="CLIP model: a hub id or a local folder (CLIPModel + CLIPProcessor, safetensors).")


class MetricRecipe(Schema):
    """Fields every metric shares: where it runs and how many images go through the network at once."""

    device: str = Placement.model_fields["device"]
    batch_size: int = Field(32, ge=1, le=4096, description="Images per forward pass.")
    as_json: bool = _as_json()


class ClipScoreRecipe(MetricRecipe):
    """CLIP score of a folder of images against their prompts: 100 x max(cosine(image, text), 0), as torchmetrics."""

    images: Path = Field(description="Folder of images (PNG, JPEG, WebP; companions such as x.control-0.png are skipped).",
                         json_schema_extra=cli(argument=True))  # fmt: skip
    prompts: Path | None = Field(
        None,
        description="Prompts file: metadata.jsonl (file_name, text: a Hugging Face imagefolder) or a .txt with one prompt "
        "per image in file-name order. Default: each PNG's own recipe (sdkit) or infotext (A1111 `parameters`).",
    )
    clip_model: str = _clip_model()


class ClipDirectionalRecipe(MetricRecipe):
    """CLIP directional similarity of edits: cosine(E(output) - E(init), E(edit caption) - E(source caption))."""

    pairs: Path = Field(
        description='JSON lines, one edit each: {"init": IMAGE, "output": IMAGE, "source": CAPTION, "edit": CAPTION} '
        "(image paths relative to the file).",
        json_schema_extra=cli(argument=True),
    )
    clip_model: str = _clip_model()


class FidRecipe(MetricRecipe):
    """FID and KID between a folder of generated images and a reference folder, on Inception-v3 features."""

    images: Path = Field(description="Folder of generated images.", json_schema_extra=cli(argument=True))
    reference: Path = Field(description="Folder of reference (real) images; its features are cached by content hash.")
    inception_weights: Path | None = Field(
        None,
        description="The standard FID Inception weights (torch-fidelity's pt_inception-2015-12-05 .pth, or the same as "
        ".safetensors) for offline use. Default: torch's cache, downloaded from GitHub at first use.",
    )
    allow_pickle: bool = Field(False, description="Allow a pickled --inception-weights file (loaded with torch's weights_only=True).")
    kid_subsets: int = Field(100, ge=1, le=10000, description="KID: number of random subsets averaged.")
    kid_subset_size: int = Field(1000, ge=2, le=100000, description="KID: images per subset (lowered to the smaller set's size).")
    cache: bool = Field(True, description="Reuse the reference folder's cached features (--no-cache recomputes them).")


SWEEP_DEFAULTS = {"steps": (2, 5, 10, 20), "cfg": (1, 3, 5, 7.5), "lora-weight": (0, 0.5, 1)}


class EvalSweepRecipe(GenerateRecipe):
    """A generate recipe swept over samplers x steps (or cfg, or the LoRA's weight); every cell scored by one metric."""

    samplers: list[str] = Field([], description="Samplers to compare; repeat the flag (default: --scheduler alone).")
    axis: Literal["steps", "cfg", "lora-weight"] = Field("steps", description="What the columns vary: steps, cfg or lora-weight.")
    values: list[float] | None = Field(
        None, min_length=1, description="The axis' values; repeat the flag (--values 2 --values 20). Default: steps 2 5 10 "
        "20, cfg 1 3 5 7.5, lora-weight 0 0.5 1."
    )
    metric: Literal["shapes", "clip"] = Field(
        "shapes", description="shapes: the shapes world's scorer (share of images whose colour, shape and background all "
        "match); clip: CLIP score against the prompt."
    )
    world_prompts: int = Field(
        0, ge=0, le=10000, description="Draw this many prompts from the shapes world (seeded by --seed) instead of PROMPT."
    )
    clip_model: str = _clip_model()
    as_json: bool = _as_json()

    @property
    def axis_values(self) -> list[float]:
        return list(self.values) if self.values is not None else list(SWEEP_DEFAULTS[self.axis])

    @model_validator(mode="after")
    def _axis_values(self) -> EvalSweepRecipe:
        if self.axis == "steps" and any(v != int(v) or not 1 <= v <= 1000 for v in self.axis_values):
            raise ValueError("steps values must be whole numbers in 1..1000")
        if self.axis == "cfg" and any(not 0 <= v <= 100 for v in self.axis_values):
            raise ValueError("cfg values must be in 0..100")
        if self.axis == "lora-weight" and len(self.lora) != 1:
            raise ValueError("axis lora-weight sweeps one LoRA's weight: give exactly one --lora")
        if not self.prompt and not self.world_prompts:
            raise ValueError("give a PROMPT, or --world-prompts N to draw N prompts from the shapes world")
        return self
