"""`sdkit generate --refiner MODEL --refiner-switch S`: the SDXL base denoises to S, the refiner (here a tiny one of
Stability's refiner shape: second text encoder only, aesthetic-score conditioning) finishes; the pixels are those of
diffusers' own denoising_end / denoising_start hand-off, and the infotext and recipe record it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error, generated, invoke
from PIL import Image

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def refiner_dir(tmp_path_factory) -> Path:
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    from sdkit.architectures import PRESETS, build_components, save_pipeline

    parts = build_components("tiny-sdxl", seed=5)
    config = {**PRESETS["tiny-sdxl"].unet, "cross_attention_dim": 32, "projection_class_embeddings_input_dim": 32 + 5 * 8}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        unet = UNet2DConditionModel(**config)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=parts["vae"], text_encoder=None, tokenizer=None, text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=parts["tokenizer_2"], unet=unet, scheduler=parts["scheduler"], requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )  # fmt: skip
    return save_pipeline(pipe, tmp_path_factory.mktemp("refiner") / "tiny-refiner")


def test_the_refiner_finishes_the_base_models_latents(tiny_sdxl_dir: Path, refiner_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from sdkit import schedulers

    args = [PROMPT, "-m", tiny_sdxl_dir, "--steps", "10", "--seed", "3", "--cfg", "5"]
    refined = generated(tmp_path / "refined", *args, "--refiner", refiner_dir, "--refiner-switch", "0.6")
    alone = generated(tmp_path / "alone", *args)
    assert np.abs(refined - alone).mean() > 1

    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_dir)
    for pipe in (base, refiner):
        pipe.scheduler = schedulers.build("DPM++ 2M", pipe.scheduler.config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        latents = base(PROMPT, num_inference_steps=10, guidance_scale=5, denoising_end=0.6, output_type="latent",
                       generator=generator).images  # fmt: skip
        image = refiner(PROMPT, image=latents, num_inference_steps=10, guidance_scale=5, denoising_start=0.6,
                        generator=generator).images[0]  # fmt: skip
    assert (np.asarray(image).astype(int) == refined).all()  # diffusers' own hand-off, pixel for pixel

    (path,) = (tmp_path / "refined").glob("*.png")
    with Image.open(path) as png:
        infotext, record = png.text["parameters"], json.loads(png.text["sdkit"])
    assert "Refiner: tiny-refiner [" in infotext and "Refiner switch at: 0.6" in infotext
    assert record["recipe"]["refiner"] == str(refiner_dir) and record["recipe"]["refiner_switch"] == 0.6
    again = invoke("replay", path, "-o", tmp_path / "replayed")
    assert again.exit_code == 0, again.output
    (replayed,) = (tmp_path / "replayed").glob("*.png")
    assert (np.asarray(Image.open(replayed).convert("RGB")).astype(int) == refined).all()


def test_refiner_errors_are_one_line(tiny_sd_dir: Path, tiny_sdxl_dir: Path, refiner_dir: Path, tmp_path: Path) -> None:
    base = [PROMPT, "--steps", "2", "-o", tmp_path / "o"]
    assert_user_error(invoke("generate", *base, "-m", tiny_sd_dir, "--refiner", refiner_dir), "needs an SDXL base model")
    assert_user_error(invoke("generate", *base, "-m", tiny_sdxl_dir, "--refiner", tmp_path / "none"), "not found")
    assert_user_error(invoke("generate", *base, "-m", tiny_sdxl_dir, "--refiner", refiner_dir, "--refiner-switch", "1.5"),
                      "--refiner-switch")  # fmt: skip
    Image.new("RGB", (32, 32)).save(tmp_path / "init.png")
    result = invoke("generate", *base, "-m", tiny_sdxl_dir, "--refiner", refiner_dir, "--init-image", tmp_path / "init.png")
    assert_user_error(result, "--refiner works with txt2img")
    assert not list(tmp_path.rglob("0*.png"))  # nothing written
