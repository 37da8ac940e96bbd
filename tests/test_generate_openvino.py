"""--backend openvino on the tiny models: images match the torch backend (txt2img, img2img, inpaint, every sampler, a
LoRA, SDXL), converted graphs are cached on disk and reused, a damaged entry is converted again, refusals are one line,
and --fast picks OpenVINO from sdkit/fast.py's table."""

from __future__ import annotations

import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
from helpers import assert_user_error, invoke_subprocess, snapshot
from helpers import invoke as invoke_in_process
from PIL import Image

from sdkit import fast, schedulers
from sdkit.schema.generate import GenerateRecipe

pytest.importorskip("openvino")

# Every OpenVINO run is a child process: compiled graphs in pytest's own process crashed a later SIGTERM test.
invoke = invoke_subprocess


def generated(out: Path, *args: object) -> np.ndarray:
    return helpers.generated(out, *args, run=invoke_subprocess)


def torch_generated(out: Path, *args: object) -> np.ndarray:
    """The torch backend's image, in pytest's process (no OpenVINO graph is compiled there)."""
    assert "openvino" not in map(str, args)
    return helpers.generated(out, *args)

GEN = ["--steps", "3", "--seed", "4", "--scheduler", "Euler"]
F32 = 40.0  # dB: the f32 hint computes what torch fp32 computes, up to kernel rounding
SDE_F32 = 35.0  # dB: the same after two steps of an SDE sampler (DPM++ SDE: 40 dB measured)
BF16 = 28.0  # dB: bf16 arithmetic inside the graphs (44 dB measured on tiny-sd txt2img)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return 100.0 if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture
def ov_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder for this test (converted entries land in ov_cache/openvino/). Tests without it share the
    session's cache (conftest's SDKIT_CACHE_DIR), so each graph is converted once per session."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SDKIT_CACHE_DIR", str(root))
    return root / "openvino"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ov-inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "init.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root / "init.png", root / "mask.png"


@pytest.mark.slow  # the first test of the session converts every graph: 20-50 s on a loaded 2-core box
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_images_match_torch(mode: str, tmp_path: Path, tiny_sd_dir: Path, inputs) -> None:
    from sdkit.outputs import read_recipe

    init, mask = inputs
    extra = {"txt2img": [], "img2img": ["--init-image", init], "inpaint": ["--init-image", init, "--mask", mask]}[mode]
    args = ["a red circle", "-m", tiny_sd_dir, *GEN, *extra]
    torch_image = torch_generated(tmp_path / "torch", *args)
    assert psnr(generated(tmp_path / "f32", *args, "--backend", "openvino", "--dtype", "fp32"), torch_image) >= F32
    assert psnr(generated(tmp_path / "bf16", *args, "--backend", "openvino", "--dtype", "bf16"), torch_image) >= BF16
    recorded = read_recipe(next((tmp_path / "bf16").glob("*.png")))["recipe"]
    assert (recorded["backend"], recorded["dtype"], recorded["device"]) == ("openvino", "bf16", "cpu")


def test_every_sampler_two_steps(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """Every sampler, torch against OpenVINO through one PipelineCache, in a child process (compiled graphs must not
    live in pytest's process: they crashed a later in-process SIGTERM test)."""
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_generate_openvino as t; "
            f"t.every_sampler({str(tiny_sd_dir)!r}, {str(tmp_path)!r})")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "min PSNR" in done.stdout


def every_sampler(model: str, tmp: str) -> None:
    from sdkit.pipelines import PipelineCache
    from sdkit.tasks.generate import run

    tmp_path = Path(tmp)
    cache = PipelineCache()
    base = {"prompt": "a red circle", "model": model, "steps": 2, "seed": 3, "dtype": "fp32", "device": "cpu"}
    found = {}
    for sampler in schedulers.SAMPLERS:
        images = {}
        for backend in ("torch", "openvino"):
            out = tmp_path / f"{sampler.name}-{backend}".replace(" ", "_")
            (result,) = run(GenerateRecipe(**base, scheduler=sampler.name, backend=backend, out=out), cache)
            images[backend] = np.asarray(result.image)
        found[sampler.name] = round(psnr(images["openvino"], images["torch"]), 1)
    print(found, "min PSNR", min(found.values()))
    assert min(found.values()) >= SDE_F32, found  # stochastic samplers amplify float differences the most
    assert cache.loads == 1  # one torch pipeline served both backends
    assert len({k for k in cache.converted}) == 3  # one compiled graph each for text encoder, UNet, VAE decoder


def _lora(model_dir: Path, out: Path) -> Path:
    """A peft LoRA on the UNet's attention with random non-zero weights, saved in diffusers' format."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=state)
    return out / "pytorch_lora_weights.safetensors"


@pytest.mark.slow  # converts graphs of its own: 25-35 s on a loaded 2-core box
def test_lora_is_fused_before_conversion(tmp_path: Path, tiny_sd_dir: Path) -> None:
    lora = _lora(tiny_sd_dir, tmp_path / "lora")
    args = ["a red circle", "-m", tiny_sd_dir, *GEN]
    plain = generated(tmp_path / "plain", *args, "--backend", "openvino", "--dtype", "fp32")
    fused = torch_generated(tmp_path / "torch", *args, "--lora", f"{lora}:0.8", "--fuse-lora")
    converted = generated(tmp_path / "ov", *args, "--lora", f"{lora}:0.8", "--backend", "openvino", "--dtype", "fp32")
    assert psnr(converted, fused) >= F32
    assert psnr(plain, fused) < 30  # the LoRA changed the image: the LoRA's UNet is a cache entry of its own
    other_weight = generated(tmp_path / "ov2", *args, "--lora", f"{lora}:0.3", "--backend", "openvino", "--dtype", "fp32")
    assert psnr(other_weight, converted) < 40


def _run(out: Path, model: Path):
    result = invoke("generate", "a red circle", "-m", model, *GEN, "--backend", "openvino", "--dtype", "fp32", "-o", out)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow  # converts graphs of its own: 25-35 s on a loaded 2-core box
def test_cache_is_reused_and_a_damaged_entry_rebuilt(tmp_path: Path, tiny_sd_dir: Path, ov_cache: Path) -> None:
    first = _run(tmp_path / "a", tiny_sd_dir)
    assert first.stderr.count("openvino: converted") == 3, first.stderr  # text encoder, UNet, VAE decoder
    entries = sorted(p.parent for p in ov_cache.glob("*/manifest.json"))
    assert len(entries) == 3
    before = snapshot(*[e for e in entries])
    second = _run(tmp_path / "b", tiny_sd_dir)
    assert "converted" not in second.stderr and "damaged" not in second.stderr, second.stderr
    assert {k: v for k, v in snapshot(*entries).items() if "/compiled/" not in k} == {
        k: v for k, v in before.items() if "/compiled/" not in k
    }  # nothing converted or rewritten
    image = helpers.pixels(next((tmp_path / "b").glob("0*.png")))

    unet = next(e for e in entries if '"unet"' in (e / "manifest.json").read_text())
    weights = unet / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # same size, other bytes
    weights.write_bytes(bytes(data))
    (entries[0] if entries[0] != unet else entries[1]).joinpath("model.xml").write_text("<net")  # truncated
    (ov_cache / ".0123.tmp-half").mkdir()  # a half-written entry keeps its temporary name: never read
    third = _run(tmp_path / "d", tiny_sd_dir)
    assert third.stderr.count("is damaged") == 2 and third.stderr.count("openvino: converted") == 2, third.stderr
    assert np.array_equal(helpers.pixels(next((tmp_path / "d").glob("0*.png"))), image)  # rebuilt: the same pixels
    fourth = _run(tmp_path / "f", tiny_sd_dir)
    assert "converted" not in fourth.stderr and "damaged" not in fourth.stderr


def test_sdxl_txt2img_matches_torch(tmp_path: Path, tiny_sdxl_dir: Path) -> None:
    args = ["a red circle", "-m", tiny_sdxl_dir, *GEN]
    torch_image = torch_generated(tmp_path / "torch", *args)
    assert psnr(generated(tmp_path / "ov", *args, "--backend", "openvino", "--dtype", "fp32"), torch_image) >= F32


def test_refusals(tmp_path: Path, tiny_sd_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["generate", "x", "-m", tiny_sd_dir, "-o", tmp_path / "o"]
    assert_user_error(invoke(*args, "--backend", "openvino", "--compile"), "--compile")
    assert_user_error(invoke(*args, "--backend", "openvino", "--control", "canny=map:x.png"), "--control")
    assert_user_error(invoke(*args, "--backend", "openvino", "--device", "cuda"), "--device cuda", "openvino:GPU")
    assert_user_error(invoke(*args, "--backend", "openvino", "--dtype", "fp16"), "bf16")
    assert invoke(*args, "--backend", "tensorrt").exit_code == 2
    monkeypatch.setitem(sys.modules, "openvino", None)  # the extra is not installed: `import openvino` fails
    assert_user_error(invoke_in_process(*args, "--backend", "openvino"), "pip install 'sdkit[openvino]'")  # refused before any graph
    assert not (tmp_path / "o").exists()
    # --fast falls back to the torch row without the extra
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)
    assert fast.preset_for(GenerateRecipe(fast=True), "cpu") == dict(fast.PRESETS["cpu-bf16"])


def test_fast_picks_openvino_from_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(fast, "cpu_has_amx", lambda: True)  # AMX: torch's bf16 row measured as fast
    assert fast.preset_for(GenerateRecipe(fast=True), "cpu") == dict(fast.PRESETS["cpu-bf16"])
    assert fast.resolve(GenerateRecipe(fast=True, device="cpu")).backend == "torch"
    monkeypatch.setattr(fast, "cpu_has_amx", lambda: False)  # AVX512-BF16 without AMX: OpenVINO measured faster
    assert fast.preset_for(GenerateRecipe(fast=True), "cpu") == dict(fast.PRESETS["cpu-bf16-openvino"])
    resolved = fast.resolve(GenerateRecipe(fast=True, device="cpu"))
    assert (resolved.backend, resolved.dtype, resolved.device) == ("openvino", "bf16", "cpu")
    # what OpenVINO cannot run, or an explicit torch backend, keeps torch's row
    for recipe in (GenerateRecipe(fast=True, backend="torch"), GenerateRecipe(fast=True, compile=True)):
        assert fast.preset_for(recipe, "cpu") == dict(fast.PRESETS["cpu-bf16"])
    assert fast.resolve(GenerateRecipe(fast=True, device="cpu", dtype="fp32")).dtype == "fp32"  # an explicit dtype wins
    assert fast.resolve(GenerateRecipe(device="cpu")).backend == "torch"  # auto without --fast is torch
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: False)
    assert fast.preset_for(GenerateRecipe(fast=True), "cpu") == {}


@pytest.mark.slow  # converts the shapes model's graphs at the eval's batch (about 40 s on a loaded 2-core box)
def test_eval_shapes_runs_in_openvino(tmp_path: Path, ov_cache: Path) -> None:
    """`sdkit eval shapes --backend openvino` scores what torch scores (the f32 hint: same verdicts), records its
    backend in the report, converts into the cache once; and refuses as generate does, in one line."""
    import json

    args = ["eval", "shapes", "--n", "6", "--steps", "4", "--no-heldout", "--batch-size", "3", "--dtype", "fp32", "--json"]
    torch_run = invoke(*args, "--backend", "torch")
    ov_run = invoke(*args, "--backend", "openvino", "-o", str(tmp_path / "ov"))
    assert torch_run.exit_code == 0 and ov_run.exit_code == 0, (torch_run.output, ov_run.output)
    torch_scores, ov_scores = json.loads(torch_run.stdout)["scores"], json.loads(ov_run.stdout)["scores"]
    assert ov_scores == torch_scores
    report = json.loads((tmp_path / "ov" / "report.json").read_text())
    assert report["recipe"]["backend"] == "openvino"
    assert any(ov_cache.rglob("*.xml"))
    assert_user_error(invoke("eval", "shapes", "--backend", "openvino", "--dtype", "fp16", "--device", "cpu"), "--dtype fp16")
