"""Loaded pipelines, shared within a run: jobs that use the same model (and device/dtype) load it once.

A cache lives as long as the run that created it (no module-level state). Each entry keeps the model's original
scheduler config, so a job's sampler is always built from the model's own config, whatever the previous job chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdkit import device
from sdkit.models import ModelRef, load_pipeline


@dataclass
class Loaded:
    pipe: Any
    scheduler_config: dict[str, Any]


@dataclass
class PipelineCache:
    entries: dict[tuple, Loaded] = field(default_factory=dict)
    controlnets: dict[str, Any] = field(default_factory=dict)
    loads: int = 0

    def get(self, model: ModelRef, placement: device.Placement, *, allow_pickle: bool = False) -> Loaded:
        key = (model.location, model.sha256, str(placement.device), str(placement.dtype), placement.offload, allow_pickle)
        if key not in self.entries:
            pipe = load_pipeline(model, torch_dtype=placement.dtype, allow_pickle=allow_pickle)
            device.place(pipe, placement)
            pipe.set_progress_bar_config(disable=True)
            self.entries[key] = Loaded(pipe, dict(pipe.scheduler.config))
            self.loads += 1
        return self.entries[key]
