"""The shared trainer lifecycle (`sdkit.training.trainer`): frozen modules run as cast copies, so a full fine-tune
under mixed precision saves exactly the weights it trained and loaded; and the ControlNet trainer goes through the
shared denoising loss, so its noise offset and timestep bias switches act."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import shapes_dataset, tensors

from sdkit.training.trainer import cast_copy


def folder_weights(model_dir: Path, sub: str) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted((model_dir / sub).glob("*.safetensors")) for k, v in tensors(f).items()}


def test_cast_copy_leaves_the_original_untouched() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copy = cast_copy(net, "cpu", torch.bfloat16)
    assert all(torch.equal(before[k], v) and v.dtype == before[k].dtype for k, v in net.state_dict().items())
    assert copy[0].weight.dtype == torch.bfloat16 and copy[1].running_var.dtype == torch.bfloat16
    assert copy[1].num_batches_tracked.dtype == torch.int64  # integer buffers keep their type
    assert torch.equal(copy[0].weight, net[0].weight.to(torch.bfloat16))


def test_full_dreambooth_in_bf16_saves_fp32_weights_equal_to_the_trained_and_loaded_ones(tiny_sd_dir, tmp_path) -> None:
    """Mixed precision bf16 casts the frozen VAE and text encoder for the loss; the saved folder must still hold the
    loaded fp32 VAE and text encoder bit for bit, and the UNet exactly as trained (fp32 master weights)."""
    from sdkit.schema.finetune import TrainDreamBoothRecipe
    from sdkit.tasks.train_dreambooth import run

    images = shapes_dataset(tmp_path / "data", n=2) / "images"
    recipe = TrainDreamBoothRecipe(
        model=str(tiny_sd_dir), instance_data_dir=images, instance_prompt="a sks shape", output_dir=tmp_path / "out",
        max_steps=2, train_batch_size=2, mixed_precision="bf16", learning_rate=1e-2, threads=1, checkpointing_steps=None,
    )  # fmt: skip
    result = run(recipe)
    saved = result.files[0]
    for sub in ("vae", "text_encoder"):  # frozen: byte-for-byte what was loaded, not a bf16 round trip
        loaded, written = folder_weights(tiny_sd_dir, sub), folder_weights(saved, sub)
        assert written.keys() == loaded.keys()
        assert all(written[k].dtype == torch.float32 and torch.equal(written[k], loaded[k]) for k in loaded), sub
    trained = {k: v.detach().cpu() for k, v in result.pipeline.unet.state_dict().items()}
    written = folder_weights(saved, "unet")
    assert all(written[k].dtype == torch.float32 and torch.equal(written[k], trained[k]) for k in trained)
    base = folder_weights(tiny_sd_dir, "unet")
    assert any(not torch.equal(base[k], written[k]) for k in base)  # and the UNet did train


@pytest.fixture(scope="module")
def control_session(tiny_sd_dir, tmp_path_factory):
    """A ControlNet trainer prepared on the tiny SD pipeline, as the lifecycle prepares it (no training)."""
    from accelerate import Accelerator

    from sdkit.data.shapes import write_dataset

    data = write_dataset(tmp_path_factory.mktemp("cn") / "data", 4, seed=0, size=32, conditioning=True)

    def prepare(**fields):
        from sdkit.schema.control import TrainControlNetRecipe
        from sdkit.tasks.train_controlnet import ControlNetTrainer
        from sdkit.training.trainer import Session, resolution_of

        recipe = TrainControlNetRecipe(model=str(tiny_sd_dir), data_dir=data, output_dir=data.parent / "out", **fields)
        trainer = ControlNetTrainer(recipe)
        trainer.check()
        torch.manual_seed(0)  # the same ControlNet init for every call
        s = Session(recipe, Accelerator(cpu=True))
        s.pipe = trainer.load(s)
        s.resolution = resolution_of(recipe, s.pipe)
        return trainer, trainer.prepare(s)

    return prepare


def loss_and_timesteps(trainer, spec) -> tuple[float, list[int]]:
    """One micro-batch of the trainer's loss (fixed generator), and the timesteps the ControlNet was called with."""
    seen: list[int] = []
    hook = trainer.controlnet.register_forward_pre_hook(lambda _m, args: seen.extend(args[1].tolist()))
    try:
        batch = spec.collate_fn([spec.dataset[i] for i in range(len(spec.dataset))] * 4)  # 16 samples
        loss = spec.loss_fn(batch, {"controlnet": trainer.controlnet}, torch.Generator().manual_seed(1))
    finally:
        hook.remove()
    return float(loss.detach()), seen


def test_controlnet_training_honours_noise_offset_and_timestep_bias(control_session) -> None:
    plain, plain_t = loss_and_timesteps(*control_session())
    again, again_t = loss_and_timesteps(*control_session())
    assert (plain, plain_t) == (again, again_t)  # deterministic: any difference below comes from the switch

    offset, _ = loss_and_timesteps(*control_session(noise_offset=0.5))
    assert offset != plain  # the offset noise enters the loss

    _, late = loss_and_timesteps(*control_session(timestep_bias="later", timestep_bias_multiplier=1e9,
                                                  timestep_bias_portion=0.1))  # fmt: skip
    assert min(late) >= 900 and min(plain_t) < 900  # the last tenth of 1,000 timesteps, as the bias asks
