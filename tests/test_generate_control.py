"""ControlNet at generation: single and multi control, with img2img/inpaint, maps saved, family mismatch refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, generated, invoke, pixels, snapshot
from PIL import Image, ImageDraw

from sdkit.outputs import read_text_chunks

FAST = ["--steps", "3", "--seed", "4", "--scheduler", "Euler"]


def _controlnet(model_dir: Path, cls_name: str, out: Path, seed: int) -> Path:
    """ControlNetModel.from_unet with its zero convolutions randomised, so the control visibly acts."""
    import diffusers
    import torch

    unet = getattr(diffusers, cls_name).from_pretrained(model_dir).unet
    net = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))  # VAE factor 2
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    net.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def nets(tmp_path_factory, tiny_sd_dir: Path, tiny_sdxl_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("controlnets")
    return {
        "a": _controlnet(tiny_sd_dir, "StableDiffusionPipeline", root / "a", 1),
        "b": _controlnet(tiny_sd_dir, "StableDiffusionPipeline", root / "b", 2),
        "xl": _controlnet(tiny_sdxl_dir, "StableDiffusionXLPipeline", root / "xl", 3),
    }


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, box in (("left", (2, 8, 14, 24)), ("right", (18, 8, 30, 24))):
        img = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(img).rectangle(box, fill="red")
        img.save(tmp_path / f"{name}.png")
        out[name] = tmp_path / f"{name}.png"
    return out


def _gen(tmp: Path, model: Path, name: str, *extra) -> np.ndarray:
    return generated(tmp / name, "a red square", "-m", model, *FAST, *extra)


def test_single_and_multi_control(tmp_path: Path, tiny_sd_dir: Path, nets, images) -> None:
    base = _gen(tmp_path, tiny_sd_dir, "base")
    left = _gen(tmp_path, tiny_sd_dir, "left", "--control", f"canny={images['left']}", "--controlnet", f"canny={nets['a']}")
    assert np.abs(left - base).mean() > 1
    assert (tmp_path / "left" / "00001-4.control-0-canny.png").is_file()  # the preprocessed map, beside the output
    edges = pixels(tmp_path / "left" / "00001-4.control-0-canny.png")
    assert edges.max() == 255 and edges.min() == 0
    zero = _gen(tmp_path, tiny_sd_dir, "zero", "--control", f"canny={images['left']}@0", "--controlnet", f"canny={nets['a']}")
    assert (zero == base).all()  # scale 0 == no control
    right = _gen(tmp_path, tiny_sd_dir, "right", "--control", f"canny={images['right']}", "--controlnet", f"canny={nets['a']}")
    assert np.abs(right - left).mean() > 0.5  # the control image matters
    both = _gen(tmp_path, tiny_sd_dir, "both", "--control", f"canny={images['left']}", "--control",
                f"canny=map:{tmp_path / 'left' / '00001-4.control-0-canny.png'}@0.5", "--controlnet", f"canny={nets['a']}")
    assert np.abs(both - left).mean() > 0.1
    record = json.loads(read_text_chunks(tmp_path / "both" / "00001-4.png")["sdkit"])["recipe"]
    assert [c["scale"] for c in record["control"]] == [1.0, 0.5] and record["control"][1]["preprocessed"] is True
    replay = invoke("replay", tmp_path / "both" / "00001-4.png", "-o", tmp_path / "replay")
    assert replay.exit_code == 0, replay.output
    assert (pixels(tmp_path / "replay" / "00001-4.png") == both).all()


def test_two_different_controlnets_and_modes(tmp_path: Path, tiny_sd_dir: Path, nets, images) -> None:
    recipe = tmp_path / "multi.yaml"
    recipe.write_text(f"""\
prompt: a red square
model: {tiny_sd_dir}
steps: 3
seed: 4
control:
  - {{type: canny, image: {images['left']}, model: {nets['a']}}}
  - {{type: canny, image: {images['right']}, model: {nets['b']}, scale: 0.8, start: 0.0, end: 0.5}}
""")
    result = invoke("generate", "--recipe", recipe, "-o", tmp_path / "multi")
    assert result.exit_code == 0, result.output
    mask = tmp_path / "mask.png"
    Image.new("L", (32, 32), 255).save(mask)
    for mode, extra in {"img2img": ["--init-image", images["right"]],
                        "inpaint": ["--init-image", images["right"], "--mask", mask]}.items():
        out = _gen(tmp_path, tiny_sd_dir, mode, *extra, "--control", f"canny={images['left']}", "--controlnet", f"canny={nets['a']}")
        assert out.shape == (32, 32, 3)


def test_control_errors(tmp_path: Path, tiny_sd_dir: Path, tiny_sdxl_dir: Path, nets, images) -> None:
    before = snapshot(tmp_path)
    args = ["generate", "x", *FAST, "-o", tmp_path / "o"]
    assert_user_error(invoke(*args, "-m", tiny_sdxl_dir, "--control", f"canny={images['left']}", "--controlnet",
                             f"canny={nets['a']}"), "another model family")
    assert_user_error(invoke(*args, "-m", tiny_sd_dir, "--control", f"sketchy={images['left']}"), "unknown type 'sketchy'")
    assert_user_error(invoke(*args, "-m", tiny_sd_dir, "--control", f"canny={tmp_path / 'nope.png'}"), "no such file")
    assert_user_error(invoke(*args, "-m", tiny_sd_dir, "--control", "canny"), "TYPE=IMAGE")
    assert_user_error(invoke(*args, "-m", tiny_sd_dir, "--control", f"canny={images['left']}", "--controlnet",
                             f"canny={tmp_path}"), "no config.json")
    assert snapshot(tmp_path) == before
