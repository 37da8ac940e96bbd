"""The sampler table: names resolve as users write them, and every entry builds and runs on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import invoke

from sdkit import schedulers
from sdkit.errors import UserError


def test_table_size_and_lookup() -> None:
    assert len(schedulers.SCHEDULERS) >= 15
    assert schedulers.resolve("dpm++ 2m karras").name == "DPM++ 2M Karras"
    assert schedulers.resolve("DPMPP_2M_SDE_KARRAS").kwargs == {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}
    assert schedulers.resolve("euler_ancestral").name == "Euler a"
    assert schedulers.resolve("Euler A").cls == "EulerAncestralDiscreteScheduler"
    assert schedulers.resolve("UniPCMultistepScheduler").cls == "UniPCMultistepScheduler"
    with pytest.raises(UserError, match='unknown scheduler .* "DPM\\+\\+ 2M Karras"'):
        schedulers.resolve("DPM 9000")


@pytest.fixture(scope="module")
def pipe(tiny_sd_dir):
    import torch

    from sdkit.models import load_pipeline, resolve_model

    loaded = load_pipeline(resolve_model(str(tiny_sd_dir)), torch_dtype=torch.float32)
    loaded.set_progress_bar_config(disable=True)
    return loaded


@pytest.mark.parametrize("name", [s.name for s in schedulers.SCHEDULERS])
def test_every_scheduler_runs_two_steps(name: str, pipe) -> None:
    import torch

    config = dict(pipe.scheduler.config)
    pipe.scheduler = schedulers.build(name, config)
    assert type(pipe.scheduler).__name__ == schedulers.resolve(name).cls
    for key, value in schedulers.resolve(name).kwargs.items():
        assert pipe.scheduler.config[key] == value
    out = pipe("a cat", num_inference_steps=2, width=32, height=32, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(out).all()


def test_schedulers_command_lists_mapping() -> None:
    result = invoke("schedulers")
    assert result.exit_code == 0
    assert "DPM++ 2M Karras" in result.stdout and "DPMSolverMultistepScheduler" in result.stdout
