"""Single-file checkpoints in the original (LDM / A1111 / ComfyUI) layout: `sdkit convert` writes them from diffusers
folders, `-m FILE` loads them offline through diffusers' single-file loader, and the round trip is exact (weights bit
for bit, identical images). Tiny SD 1.x, SD 2.x (OpenCLIP text encoder, v-prediction), SDXL and inpainting models,
and the shipped shapes model."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, generated, invoke, pixels

FAST = ["--steps", "3", "--seed", "5", "--scheduler", "Euler"]
SD2_SCHEDULER = {"prediction_type": "v_prediction"}


def _variant(name: str):
    from sdkit.architectures import PRESETS, SD15_SCHEDULER, TextEncoderSpec

    sd, xl = PRESETS["tiny-sd"], PRESETS["tiny-sdxl"]
    if name == "tiny-sd2":  # OpenCLIP-style text encoder (gelu), linear projections, v-prediction
        return dataclasses.replace(
            sd, name=name, unet={**sd.unet, "use_linear_projection": True, "attention_head_dim": (2, 4)},
            text_encoder=dataclasses.replace(sd.text_encoder, hidden_act="gelu"),
            scheduler={**SD15_SCHEDULER, **SD2_SCHEDULER},
        )  # fmt: skip
    if name == "tiny-inpaint":
        return dataclasses.replace(sd, name=name, unet={**sd.unet, "in_channels": 9})
    # SDXL with text encoders of different widths (diffusers' single-file loader tells them apart by width)
    te2 = TextEncoderSpec(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                          projection_dim=48, hidden_act="gelu")  # fmt: skip
    unet = {**xl.unet, "cross_attention_dim": 80, "projection_class_embeddings_input_dim": 48 + 6 * 8}
    return dataclasses.replace(xl, name=name, unet=unet, text_encoder_2=te2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_sd_dir: Path, tiny_seed: int) -> dict[str, Path]:
    from sdkit.architectures import build_pipeline, save_pipeline
    from sdkit.models import ALIASES

    root = tmp_path_factory.mktemp("single")
    out = {"tiny-sd": tiny_sd_dir, "shapes": Path(ALIASES["shapes"])}
    for name in ("tiny-sd2", "tiny-sdxl2", "tiny-inpaint"):
        out[name] = save_pipeline(build_pipeline(_variant(name), seed=tiny_seed), root / name)
    return out


@pytest.fixture(scope="module")
def files(folders, tmp_path_factory) -> dict[str, Path]:
    """Each folder written as one .safetensors file by `sdkit convert`."""
    root = tmp_path_factory.mktemp("files")
    out = {}
    for name, folder in folders.items():
        result = invoke("convert", folder, "-o", root / f"{name}.safetensors")
        assert result.exit_code == 0, result.output
        out[name] = root / f"{name}.safetensors"
    return out


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {f"{p.parent.name}/{k}": v for p in sorted(folder.glob("*/*.safetensors")) for k, v in load_file(p).items()}


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2", "tiny-sdxl2", "tiny-inpaint", "shapes"])
def test_round_trip_is_bit_identical(name: str, folders, files, tmp_path: Path) -> None:
    """diffusers folder -> single file (original keys) -> diffusers folder: the same tensors, bit for bit."""
    from safetensors import safe_open

    with safe_open(str(files[name]), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.encoder.down.") for k in keys)
    text = "conditioner.embedders." if "xl" in name else "cond_stage_model.model." if "sd2" in name else "cond_stage_model.transformer."
    assert any(k.startswith(text) for k in keys), keys[:5]
    config = [] if name == "shapes" else ["--config", folders[name]]
    result = invoke("convert", files[name], "-o", tmp_path / "back", *config)
    assert result.exit_code == 0, result.output
    before, after = _weights(folders[name]), _weights(tmp_path / "back")
    assert before.keys() == after.keys()
    assert all(before[k].dtype == after[k].dtype and (before[k] == after[k]).all() for k in before)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2", "tiny-sdxl2", "shapes"])
def test_single_file_generates_the_folders_pixels(name: str, folders, files, tmp_path: Path) -> None:
    config = [] if name == "shapes" else ["--config", folders[name]]
    folder = generated(tmp_path / "folder", "a red circle", "-m", folders[name], *FAST)
    single = generated(tmp_path / "file", "a red circle", "-m", files[name], *config, *FAST)
    assert (folder == single).all()


def test_inpainting_single_file(folders, files, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "init.png")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(tmp_path / "mask.png")
    args = ["--init-image", tmp_path / "init.png", "--mask", tmp_path / "mask.png", *FAST]
    folder = generated(tmp_path / "folder", "a red circle", "-m", folders["tiny-inpaint"], *args)
    single = generated(tmp_path / "file", "a red circle", "-m", files["tiny-inpaint"], "--config", folders["tiny-inpaint"], *args)
    assert (folder == single).all()
    result = invoke("generate", "x", "-m", files["tiny-inpaint"], "--config", folders["tiny-inpaint"], "-o", tmp_path / "t2i")
    assert_user_error(result, "inpainting model", "--mask")


def test_file_of_no_known_family_names_the_closest(files, tmp_path: Path) -> None:
    line = assert_user_error(invoke("generate", "x", "-m", files["tiny-sd"], "-o", tmp_path / "o"), "fits no model family")
    assert "closest is" in line and "--config" in line and "tensors fit" in line
    assert_user_error(invoke("generate", "x", "-m", files["tiny-sd"], "--config", "sdxl", "-o", tmp_path / "o"),
                      "is not a SDXL base checkpoint")  # fmt: skip
    assert_user_error(invoke("generate", "x", "-m", files["tiny-sd"], "--config", tmp_path, "-o", tmp_path / "o"),
                      "not a diffusers folder")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_vae_missing_baked_in_or_replaced(folders, files, tmp_path: Path) -> None:
    """A file without a VAE needs --vae; a single-file VAE (A1111's models/VAE layout) or a VAE folder gives the
    pixels of the model's own VAE."""
    from safetensors.torch import load_file, save_file

    no_vae = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in load_file(files["shapes"]).items() if not k.startswith("first_stage_model.")}, no_vae)
    assert_user_error(invoke("generate", "x", "-m", no_vae, "-o", tmp_path / "o"), "holds no VAE", "--vae")
    result = invoke("convert", folders["shapes"] / "vae", "-o", tmp_path / "vae.safetensors")
    assert result.exit_code == 0, result.output
    assert all(not k.startswith(("first_stage_model.", "encoder.down_blocks")) for k in load_file(tmp_path / "vae.safetensors"))
    base = generated(tmp_path / "base", "a red circle", "-m", "shapes", *FAST)
    for i, (model, vae) in enumerate([(no_vae, tmp_path / "vae.safetensors"), (no_vae, folders["shapes"] / "vae"),
                                      ("shapes", tmp_path / "vae.safetensors")]):  # fmt: skip
        assert (generated(tmp_path / f"v{i}", "a red circle", "-m", model, "--vae", vae, *FAST) == base).all()
    wrong = invoke("generate", "x", "-m", "shapes", "--vae", folders["tiny-sd"] / "vae", "-o", tmp_path / "w")
    assert_user_error(wrong, "--vae")


def test_ema_weights(files, tmp_path: Path) -> None:
    """EMA copies beside the weights (full LDM checkpoints) are ignored, as A1111 and diffusers do; a file holding only
    the EMA copy (flattened `model_ema.` names) loads from it."""
    import torch
    from safetensors.torch import load_file, save_file

    from sdkit.families import ema_name

    state = load_file(files["shapes"])
    unet = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    both = {**state, **{ema_name(k): torch.randn_like(v) for k, v in unet.items()}, "model_ema.decay": torch.tensor(0.999)}
    save_file(both, tmp_path / "both.safetensors")
    only = {**{k: v for k, v in state.items() if k not in unet}, **{ema_name(k): v for k, v in unet.items()}}
    save_file(only, tmp_path / "ema-only.safetensors")
    base = generated(tmp_path / "base", "a red circle", "-m", files["shapes"], *FAST)
    assert (generated(tmp_path / "both", "a red circle", "-m", tmp_path / "both.safetensors", *FAST) == base).all()
    assert (generated(tmp_path / "ema", "a red circle", "-m", tmp_path / "ema-only.safetensors", *FAST) == base).all()


@pytest.mark.parametrize(("dtype", "stored"), [("fp16", "F16"), ("bf16", "BF16")])
def test_half_precision_files(dtype: str, stored: str, files, tmp_path: Path) -> None:
    from sdkit.families import read_header

    out = tmp_path / f"shapes-{dtype}.safetensors"
    assert invoke("convert", "shapes", "-o", out, "--dtype", dtype).exit_code == 0
    assert {v for k, v in read_header(out).dtypes.items() if k not in ("v_pred", "ztsnr")} == {stored}
    assert out.stat().st_size < 0.55 * files["shapes"].stat().st_size
    base = generated(tmp_path / "base", "a red circle on a blue background", "-m", files["shapes"], *FAST)
    half = generated(tmp_path / "half", "a red circle on a blue background", "-m", out, *FAST)  # computed in fp32
    assert np.abs(half - base).mean() < 4, np.abs(half - base).mean()


def test_header_records_architecture_and_prediction(files) -> None:
    from sdkit.families import read_header

    assert read_header(files["tiny-sd2"]).metadata["modelspec.prediction_type"] == "v"
    assert read_header(files["tiny-sd"]).metadata["modelspec.prediction_type"] == "epsilon"
    shapes = read_header(files["shapes"])  # v-prediction, zero terminal SNR: ComfyUI's marker keys too
    assert shapes.metadata["modelspec.prediction_type"] == "v" and {"v_pred", "ztsnr"} <= set(shapes.shapes)
    assert read_header(files["tiny-sdxl2"]).metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert read_header(files["tiny-inpaint"]).metadata["modelspec.architecture"] == "stable-diffusion-v1/inpaint"


@pytest.mark.slow
def test_acceptance_shapes_file_offline(tmp_path: Path) -> None:
    """README's acceptance: with the network off, the file `sdkit convert` wrote from the shipped model generates the
    pixels of `-m shapes`. Network off: the hub is unreachable (a dead proxy) and offline mode is not even set."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "1",
            "HF_HUB_DOWNLOAD_TIMEOUT": "1"}  # fmt: skip
    sdkit = [sys.executable, "-m", "sdkit"]
    subprocess.run([*sdkit, "convert", "shapes", "-o", "shapes.safetensors"], cwd=tmp_path, env=env, check=True, timeout=600)
    prompt = "a red circle on a blue background"
    for model, out in (("shapes.safetensors", "file"), ("shapes", "folder")):
        done = subprocess.run([*sdkit, "generate", prompt, "-m", model, "--seed", "1", "-o", out], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Hub" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert (pixels(tmp_path / "file" / "00001-1.png") == pixels(tmp_path / "folder" / "00001-1.png")).all()


def test_pickled_checkpoint_needs_allow_pickle(files, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    ckpt = tmp_path / "shapes.ckpt"
    torch.save({"state_dict": load_file(files["shapes"])}, ckpt)  # as LDM checkpoints nest it
    assert_user_error(invoke("generate", "x", "-m", ckpt, "-o", tmp_path / "o"), "--allow-pickle")
    base = generated(tmp_path / "base", "a red circle", "-m", files["shapes"], *FAST)
    assert (generated(tmp_path / "ckpt", "a red circle", "-m", ckpt, "--allow-pickle", *FAST) == base).all()
