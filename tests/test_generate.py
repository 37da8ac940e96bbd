"""txt2img / img2img / inpaint on tiny SD 1.x and SDXL folders, through the real CLI and the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke, pixels, snapshot
from PIL import Image

import sdkit
from sdkit.outputs import read_text_chunks

FAST = ["--steps", "3", "--width", "32", "--height", "32"]


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "init.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "init.png", tmp_path / "mask.png"


def test_acceptance_subprocess_generate_then_replay(tmp_path: Path, tiny_sd_dir: Path) -> None:
    """The issue's acceptance command, as a real process: 00001-7.png with both chunks; replay is identical."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sdkit", "generate", "a cat", "-m", str(tiny_sd_dir)]
    done = subprocess.run([*cmd, "--scheduler", "DPM++ 2M Karras", "--steps", "4", "--seed", "7", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "00001-7.png")
    chunks = read_text_chunks(out / "00001-7.png")
    assert set(chunks) >= {"parameters", "sdkit"}
    replay = subprocess.run([sys.executable, "-m", "sdkit", "replay", str(out / "00001-7.png"), "-o", str(tmp_path / "out2")],
                            capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr
    assert (pixels(out / "00001-7.png") == pixels(tmp_path / "out2" / "00001-7.png")).all()


def test_metadata_round_trip(tmp_path: Path, tiny_sd_dir: Path) -> None:
    result = invoke("generate", "a red circle", "--negative", "blurry", "-m", tiny_sd_dir, *FAST, "--cfg", "5",
                    "--seed", "11", "--scheduler", "euler_ancestral", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    png = tmp_path / "00001-11.png"
    params = read_text_chunks(png)["parameters"].splitlines()
    assert params[0] == "a red circle"
    assert params[1] == "Negative prompt: blurry"
    assert params[2].startswith("Steps: 3, Sampler: Euler a, Schedule type: Uniform, CFG scale: 5.0, Seed: 11, Size: 32x32, Model hash: ")
    record = json.loads(read_text_chunks(png)["sdkit"])
    assert record["recipe"]["seed"] == 11 and record["recipe"]["model"] == str(tiny_sd_dir.resolve())
    assert len(record["model"]["sha256"]) == 64
    info = invoke("info", png)
    assert info.exit_code == 0 and "prompt: a red circle" in info.stdout and "seed: 11" in info.stdout
    assert invoke("info", tmp_path / "nope.png").exit_code == 2


def test_recipe_file_and_flag_precedence(tmp_path: Path, tiny_sd_dir: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: generate\nprompt: from file\nmodel: {tiny_sd_dir}\nsteps: 2\nwidth: 32\nheight: 32\nseed: 3\n")
    result = invoke("generate", "--recipe", recipe, "--seed", "4", "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    record = json.loads(read_text_chunks(tmp_path / "o" / "00001-4.png")["sdkit"])["recipe"]
    assert (record["prompt"], record["steps"], record["seed"]) == ("from file", 2, 4)


def test_determinism_batch_seeds_and_no_overwrite(tmp_path: Path, tiny_sd_dir: Path) -> None:
    args = ["generate", "a cat", "-m", tiny_sd_dir, *FAST, "--seed", "5"]
    assert invoke(*args, "--num-images", "3", "-o", tmp_path / "a").exit_code == 0
    assert invoke(*args, "-o", tmp_path / "b").exit_code == 0
    assert invoke(*args, "-o", tmp_path / "b").exit_code == 0  # same folder again: numbering continues
    names = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert names == ["00001-5.png", "00002-6.png", "00003-7.png"]
    assert sorted(p.name for p in (tmp_path / "b").glob("*.png")) == ["00001-5.png", "00002-5.png"]
    same = pixels(tmp_path / "b" / "00001-5.png")
    assert (same == pixels(tmp_path / "b" / "00002-5.png")).all()  # same recipe + seed: bit-identical
    assert (same == pixels(tmp_path / "a" / "00001-5.png")).all()  # image 1 of a batch == the single run
    assert not (same == pixels(tmp_path / "a" / "00002-6.png")).all()
    replay = invoke("replay", tmp_path / "a" / "00003-7.png", "-o", tmp_path / "c")  # image 3 replayed alone
    assert replay.exit_code == 0, replay.output
    assert (pixels(tmp_path / "c" / "00001-7.png") == pixels(tmp_path / "a" / "00003-7.png")).all()
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_every_mode(family: str, tmp_path: Path, inputs, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"tiny_{family}_dir")
    init, mask = inputs
    results = {}
    for mode, extra in {"txt2img": [], "img2img": ["--init-image", init], "inpaint": ["--init-image", init, "--mask", mask]}.items():
        result = invoke("generate", "a cat", "-m", model, *FAST, "--seed", "1", "-o", tmp_path / mode, *extra)
        assert result.exit_code == 0, result.output
        png = tmp_path / mode / "00001-1.png"
        assert Image.open(png).size == (32, 32)
        record = json.loads(read_text_chunks(png)["sdkit"])
        results[mode] = pixels(png)
        assert record["recipe"]["init_image"] == (str(init) if extra else None)
    assert not (results["txt2img"] == results["img2img"]).all()
    inpainted = results["inpaint"].astype(int)
    source = pixels(init).astype(int)
    outside = np.ones((32, 32), bool)
    outside[6:26, 6:26] = False
    # inpaint repaints inside the mask and keeps the outside close to the init image (VAE round trip)
    assert np.abs(inpainted - source)[outside].mean() < np.abs(results["txt2img"].astype(int) - source)[outside].mean()


def test_python_api_and_bf16(tmp_path: Path, tiny_sd_dir: Path) -> None:
    results = sdkit.generate(prompt="a cat", model=str(tiny_sd_dir), steps=2, width=32, height=32, seed=9,
                             dtype="bf16", device="cpu", out=tmp_path)
    assert [r.path.name for r in results] == ["00001-9.png"] and results[0].image.size == (32, 32)
    assert "bf16" == json.loads(read_text_chunks(results[0].path)["sdkit"])["recipe"]["dtype"]


def test_nan_is_reported_not_saved(tmp_path: Path, tiny_sd_dir: Path) -> None:
    """A VAE that decodes to NaN (as fp16 SD VAEs do) fails with a hint; no black PNG is written."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd_dir, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.startswith("decoder.conv_out") and k.endswith("bias"))
    state[key] = state[key] * float("nan")
    save_file(state, weights)
    before = snapshot(tmp_path)
    result = invoke("generate", "a cat", "-m", broken, *FAST, "--seed", "1", "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "NaN" in result.stderr and "nothing was saved" in result.stderr and "Traceback" not in result.output
    assert snapshot(tmp_path) == before
