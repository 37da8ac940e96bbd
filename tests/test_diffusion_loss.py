"""The shared denoising loss (`sdkit.training.diffusion`) on the tiny SD pipeline: biased timestep sampling."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdkit.schema.finetune import TrainLoraRecipe
from sdkit.training.diffusion import denoising_loss, timestep_weights
from sdkit.training.text import TextConditioning


def test_timestep_weights_match_diffusers_bias_strategies() -> None:
    earlier = timestep_weights(1000, "earlier", 3.0, 0.25)
    assert earlier[:250].tolist() == [3.0] * 250 and earlier[250:].tolist() == [1.0] * 750
    later = timestep_weights(1000, "later", 2.0, 0.1)
    assert later[:900].tolist() == [1.0] * 900 and later[900:].tolist() == [2.0] * 100
    with pytest.raises(ValueError, match="unknown timestep bias"):
        timestep_weights(1000, "range", 2.0, 0.1)


class RecordingUNet:
    """The real UNet, recording the timesteps each call gets."""

    def __init__(self, unet) -> None:
        self.unet, self.seen = unet, []

    def __call__(self, sample, timesteps, *args, **kwargs):
        self.seen.extend(timesteps.tolist())
        return self.unet(sample, timesteps, *args, **kwargs)


@pytest.mark.parametrize(("bias", "low", "high"), [("none", 0, 1000), ("earlier", 0, 100), ("later", 900, 1000)])
def test_the_loss_samples_the_biased_timesteps(tiny_sd_dir: Path, tmp_path: Path, bias: str, low: int, high: int) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    recipe = TrainLoraRecipe(model=str(tiny_sd_dir), data_dir=tmp_path, output_dir=tmp_path / "o", timestep_bias=bias,
                             timestep_bias_multiplier=1e6, timestep_bias_portion=0.1)  # fmt: skip
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    loss_fn = denoising_loss(recipe, pipe, pipe.scheduler, "cpu", text=TextConditioning(pipe, pipe))
    unet = RecordingUNet(pipe.unet)
    batch = {"pixels": torch.zeros(64, 3, side, side, dtype=torch.uint8), "caption": ["a red circle"] * 64,
             "target_size": torch.tensor([[side, side]] * 64), "original_size": torch.tensor([[side, side]] * 64),
             "crop": torch.zeros(64, 2, dtype=torch.long)}  # fmt: skip
    with torch.no_grad():
        loss = loss_fn(batch, {"unet": unet}, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and len(unet.seen) == 64
    assert all(low <= t < high for t in unet.seen)
    if bias == "none":  # uniform: 64 draws over 1000 steps land on both halves
        assert min(unet.seen) < 500 <= max(unet.seen)
