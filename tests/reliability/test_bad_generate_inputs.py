"""Every bad-input case of `sdkit generate` exits 2 with one line naming the cause and fix, and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, snapshot
from PIL import Image


@pytest.fixture()
def work(tmp_path: Path, tiny_sd_dir: Path) -> Path:
    """A scratch folder with good inputs next to bad ones."""
    Image.new("RGB", (32, 32), "red").save(tmp_path / "init.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "mask.png")
    Image.new("L", (40, 32), 255).save(tmp_path / "mask40.png")
    Image.new("RGB", (8200, 8), "red").save(tmp_path / "wide.png")  # within the pixel limit, wider than any output
    (tmp_path / "notimage.png").write_text("hello")
    (tmp_path / "afile").write_text("x")
    return tmp_path


def _bad_folder(root: Path, tiny: Path, name: str, content: bytes | None) -> Path:
    folder = root / name
    shutil.copytree(tiny, folder)
    target = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if content is None:  # truncated: drop the last bytes
        data = target.read_bytes()
        target.write_bytes(data[: len(data) - 100])
    else:
        target.write_bytes(content)
    return folder


LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"

CASES = {
    "width": (["--width", "100"], "width must be a multiple of 8"),
    "height": (["--height", "30"], "height must be a multiple of 8"),
    "steps": (["--steps", "0"], "--steps"),
    "cfg": (["--cfg", "-1"], "--cfg"),
    "strength0": (["--strength", "0"], "--strength"),
    "strength>1": (["--strength", "1.5"], "--strength"),
    "num-images": (["--num-images", "0"], "--num-images"),
    "scheduler": (["--scheduler", "Euler b"], "unknown sampler 'Euler b'"),
    "dtype": (["--dtype", "fp8"], "--dtype"),
    "fp16-cpu": (["--device", "cpu", "--dtype", "fp16"], "fp16 on cpu"),
    "offload-cpu": (["--device", "cpu", "--offload", "model"], "--offload model"),
    "device": (["--device", "tpu"], "--device"),
    "seed": (["--seed", "-3"], "--seed"),
    "mask-no-init": (["--mask", "{w}/mask.png"], "mask needs init_image"),
    "init-missing": (["--init-image", "{w}/nope.png"], "no such file"),
    "init-not-image": (["--init-image", "{w}/notimage.png"], "not a readable image"),
    "mask-missing": (["--init-image", "{w}/init.png", "--mask", "{w}/nope.png"], "no such file"),
    "init-too-wide": (["--init-image", "{w}/wide.png"], "up to 8192 px a side"),
    "mask-size": (["--init-image", "{w}/init.png", "--mask", "{w}/mask40.png"], "same size"),
    "out-is-file": (["-o", "{w}/afile"], "is a file"),
    "out-under-file": (["-o", "{w}/afile/sub"], "which is a file"),
    "out-not-writable": (["-o", "/proc/sdkit-out"], "not writable"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_flag(case: str, work: Path, tiny_sd_dir: Path) -> None:
    args, fragment = CASES[case]
    args = [a.replace("{w}", str(work)) for a in args]
    before = snapshot(work)
    out = work / "out"
    result = invoke("generate", "a cat", "-m", tiny_sd_dir, "--steps", "2", "-o", out, *args)
    assert_user_error(result, fragment)
    assert snapshot(work) == before
    assert not out.exists() or case.startswith("out")


@pytest.mark.parametrize(
    "name,content,fragment",
    [
        ("empty", b"", "is empty"),
        ("lfs", LFS, "git-LFS pointer"),
        ("html", b"<!DOCTYPE html><html>404</html>" + b" " * 64, "HTML page"),
        ("zip", b"PK\x03\x04" + b"\0" * 100, "is a zip"),
        ("truncated", None, "is truncated"),
        ("garbage", b"\xff" * 200, "not a safetensors file"),
    ],
)
def test_bad_weights(name: str, content: bytes | None, fragment: str, work: Path, tiny_sd_dir: Path) -> None:
    folder = _bad_folder(work, tiny_sd_dir, name, content)
    before = snapshot(work)
    assert_user_error(invoke("generate", "a cat", "-m", folder, "-o", work / "out"), fragment, "diffusion_pytorch_model")
    assert snapshot(work) == before


def test_missing_model_and_folder_without_index(work: Path) -> None:
    assert_user_error(invoke("generate", "x", "-m", work / "nope", "-o", work / "o"), "not found")
    assert_user_error(invoke("generate", "x", "-m", "./relative/nope", "-o", work / "o"), "not found")
    (work / "empty_model").mkdir()
    assert_user_error(invoke("generate", "x", "-m", work / "empty_model", "-o", work / "o"), "no model_index.json")
    assert_user_error(invoke("generate", "x", "-m", work / "init.png", "-o", work / "o"), "is not a model")
    assert not (work / "o").exists()


def test_pickle_needs_opt_in(work: Path, tiny_sd_dir: Path) -> None:
    ckpt = work / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04K\x01.")
    assert_user_error(invoke("generate", "x", "-m", ckpt, "-o", work / "o"), "pickle", "--allow-pickle")
    import torch
    from safetensors.torch import load_file

    folder = work / "pickled"
    shutil.copytree(tiny_sd_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))  # a real pickle: the format is read from the bytes
    weights.unlink()
    assert_user_error(invoke("generate", "x", "-m", folder, "-o", work / "o"), "pickle", "--allow-pickle")


def test_recipe_file_errors(work: Path, tiny_sd_dir: Path) -> None:
    bad_key = work / "bad_key.yaml"
    bad_key.write_text(f"model: {tiny_sd_dir}\nprompt: a cat\nstepz: 4\n")
    line = assert_user_error(invoke("generate", "--recipe", bad_key, "-o", work / "o"), "bad_key.yaml:3", "stepz", "unknown key")
    assert "valid keys" in line
    bad_type = work / "bad_type.yaml"
    bad_type.write_text(f"model: {tiny_sd_dir}\nsteps: many\n")
    assert_user_error(invoke("generate", "--recipe", bad_type, "-o", work / "o"), "bad_type.yaml:2 steps", "'many'")
    tagged = work / "tagged.yaml"
    tagged.write_text("prompt: !!python/object/apply:os.system ['touch pwned']\n")
    assert_user_error(invoke("generate", "--recipe", tagged), "tagged.yaml:1", "no !!python tags")
    assert_user_error(invoke("generate", "--recipe", work / "missing.yaml"), "does not exist")
    not_mapping = work / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    assert_user_error(invoke("generate", "--recipe", not_mapping), "mapping")
    assert not (work / "o").exists() and not Path("pwned").exists()


def test_hub_id_offline_is_one_line(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("generate", "x", "-m", "no-such-org/no-such-model", "-o", work / "o")
    assert_user_error(result, "no-such-org/no-such-model", "Hugging Face Hub")
    assert not (work / "o").exists()
