"""`sdkit train controlnet` on the tiny SD pipeline: a loadable ControlNet, exact resume, the CLI, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_user_error, invoke, snapshot

from sdkit.errors import UserError
from sdkit.schema.control import TrainControlNetRecipe
from sdkit.tasks import train_controlnet


def run(recipe) -> Path:
    """The trained result folder (what `sdkit train` prints first)."""
    return train_controlnet.run(recipe).files[0]

FAST = {
    "train_batch_size": 3,
    "threads": 1,
    "log_every": 1,
    "validation_inference_steps": 2,
    "checkpointing_steps": None,
}


@pytest.fixture(scope="module")
def control_data(tmp_path_factory) -> Path:
    from sdkit.data.shapes import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "shapes", 8, seed=0, size=32, conditioning=True)


def recipe(model: Path, data: Path, out: Path, **fields) -> TrainControlNetRecipe:
    return TrainControlNetRecipe(model=str(model), data_dir=data, output_dir=out, **{**FAST, **fields})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "diffusion_pytorch_model.safetensors")


def test_trains_a_controlnet_that_diffusers_loads(tiny_sd_dir, control_data, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
    from PIL import Image

    out = run(
        recipe(tiny_sd_dir, control_data, tmp_path, max_steps=3, validation_from_data=1, validation_steps=2,
               control_type="canny", random_flip=True, cache_latents=False, caption_dropout=0.5)
    )  # fmt: skip
    assert out == tmp_path / "controlnet"
    for name in ("validation/step-2.png", "validation/step-3.png", "loss.png", "loss.json", "run.json", "recipe.yaml"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "control.json").read_text())["control_type"] == "canny"
    controlnet = ControlNetModel.from_pretrained(out)  # plain diffusers
    assert list(controlnet.config.conditioning_embedding_out_channels) == [16, 32]  # tiny-sd's VAE downsamples 2x
    zero_convs = [p for name, p in controlnet.named_parameters() if "zero_conv" in name or "conv_out" in name]
    assert zero_convs and any(p.abs().sum() > 0 for p in zero_convs)  # the zero convolutions left zero: it learned
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    control_pipe = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=controlnet)
    control = Image.open(control_data / "conditioning" / "00000.png")
    image = control_pipe(
        "a red circle", image=control, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (32, 32)


def test_resume_reaches_the_same_weights(tiny_sd_dir, control_data, tmp_path):
    straight = run(recipe(tiny_sd_dir, control_data, tmp_path / "a", max_steps=4))
    first = recipe(tiny_sd_dir, control_data, tmp_path / "b", max_steps=2, checkpointing_steps=2)
    run(first)
    resumed = run(first.model_copy(update={"max_steps": 4, "resume": "latest"}))
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert run(first.model_copy(update={"max_steps": 4, "resume": "latest"})) == resumed  # finished: nothing to do


def test_cli_and_refusals(tiny_sd_dir, tiny_sdxl_dir, control_data, tmp_path):
    out = tmp_path / "cli"
    result = invoke("train", "controlnet", "--model", tiny_sd_dir, "--data", control_data, "-o", out, "--max-steps", "1",
                    "--train-batch-size", "2", "--threads", "1", "--checkpointing-steps", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "controlnet")
    before = snapshot(out)
    again = invoke("train", "controlnet", "--model", tiny_sd_dir, "--data", control_data, "-o", out, "--max-steps", "1")
    assert_user_error(again, "already holds a training run", "--resume latest")
    assert snapshot(out) == before
    with pytest.raises(UserError, match="StableDiffusionXLPipeline.*SD 1.x/2.x"):
        run(recipe(tiny_sdxl_dir, control_data, tmp_path / "xl", max_steps=1))
    with pytest.raises(UserError, match=r"downsample 4x but the VAE downsamples 2x: give 2 channel counts"):
        run(
            recipe(
                tiny_sd_dir, control_data, tmp_path / "ch", max_steps=1, conditioning_embedding_out_channels=[8, 16, 32]
            )
        )
    with pytest.raises(UserError, match="no 'edges' column"):
        run(recipe(tiny_sd_dir, control_data, tmp_path / "col", max_steps=1, conditioning_image_column="edges"))


def test_schema_checks():
    with pytest.raises(ValueError, match="validation_prompts need validation_conditioning"):
        TrainControlNetRecipe(model="m", data_dir=Path("d"), output_dir=Path("o"), validation_prompts=["a"])
    with pytest.raises(ValueError, match="unknown control type 'edge'"):
        TrainControlNetRecipe(model="m", data_dir=Path("d"), output_dir=Path("o"), control_type="edge")
    with pytest.raises(ValueError, match="cache_latents needs"):
        TrainControlNetRecipe(model="m", data_dir=Path("d"), output_dir=Path("o"), random_flip=True)


def test_shipped_shapes_canny_follows_its_map():
    """The shipped ControlNet fits the shipped shapes model and draws the shape where its Canny map says."""
    import numpy as np
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from sdkit.control import default_controlnet, preprocess
    from sdkit.data.shapes import Sample, render, render_mask
    from sdkit.models import ASSETS, load_pipeline, resolve_model

    assert default_controlnet("canny", "shapes") == "shapes-canny"
    pipe = load_pipeline(resolve_model("shapes", hash_local=False), torch_dtype=torch.float32)
    controlnet = ControlNetModel.from_pretrained(ASSETS / "shapes-canny")
    assert controlnet.config.cross_attention_dim == pipe.unet.config.cross_attention_dim
    assert 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1) == pipe.vae_scale_factor
    control_pipe = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=controlnet)
    control_pipe.set_progress_bar_config(disable=True)
    scenes = [Sample("square", "red", "blue", 20, 40, 24), Sample("circle", "yellow", "purple", 42, 24, 30)]
    images = control_pipe(
        [s.text for s in scenes], image=[preprocess("canny", render(s)) for s in scenes], num_inference_steps=20,
        guidance_scale=2.0, generator=[torch.Generator().manual_seed(i) for i in range(len(scenes))],
    ).images  # fmt: skip
    overlaps = []
    for scene, image in zip(scenes, images, strict=True):
        rgb = np.asarray(image, dtype=np.float64)
        drawn = (
            np.linalg.norm(rgb - np.median(rgb[[0, -1]].reshape(-1, 3), axis=0), axis=2) > 60
        )  # off the border colour
        truth = np.asarray(render_mask(scene)) > 127
        overlaps.append((drawn & truth).sum() / (drawn | truth).sum())
    assert min(overlaps) >= 0.7, overlaps
