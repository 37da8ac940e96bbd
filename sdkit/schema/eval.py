"""`EvalShapesRecipe`: score a model's prompt adherence on the shapes world with the independent scorer."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from sdkit.schema.adapters import EmbeddingRef, LoraRef
from sdkit.schema.base import Placement, cli


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
    out: Path | None = Field(None, description="Folder for report.json and a labelled sample grid (optional).", json_schema_extra=cli("-o"))
    as_json: bool = Field(False, description="Print the report as JSON on stdout instead of a table.", json_schema_extra=cli(name="--json"))

    @field_validator("cfg")
    @classmethod
    def _cfg_non_negative(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if v < 0]
        if bad:
            raise ValueError(f"cfg must be >= 0 (got {bad[0]})")
        return values
