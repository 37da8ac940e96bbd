"""--fast, --compile, --fuse-qkv: the flags exist, the preset is written into the recorded recipe (replay reproduces
it), an explicit dtype wins, the cache key tells them apart, impossible combinations are refused; training's
gradient_checkpointing is applied and leaves the trained weights as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, invoke, invoke_subprocess, pixels

from sdkit import fast
from sdkit.schema.generate import GenerateRecipe

GEN = ["--steps", "3", "--seed", "4", "--scheduler", "Euler"]


def test_flags_in_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich shortens long flag names in a narrow terminal
    text = invoke("generate", "--help").output
    for flag in ("--fast", "--compile", "--fuse-qkv"):
        assert flag in text
    assert "--gradient-checkpointing" in invoke("train", "lora", "--help").output


def test_fast_on_cpu_is_recorded_and_replays(tmp_path: Path, tiny_sd_dir: Path) -> None:
    from sdkit.outputs import read_recipe

    # child processes: on a CPU whose --fast row is OpenVINO, compiled graphs must not live in pytest's process
    result = invoke_subprocess("generate", "a red circle", "-m", tiny_sd_dir, *GEN, "--fast", "--device", "cpu", "-o", tmp_path / "a")
    assert result.exit_code == 0, result.output
    image = tmp_path / "a" / "00001-4.png"
    recorded = read_recipe(image)["recipe"]
    table = fast.PRESETS[fast.device_kind("cpu", GenerateRecipe(fast=True))]  # this CPU's row (OpenVINO: no AMX, extra installed)
    assert recorded["fast"] is True
    assert recorded["dtype"] == table.get("dtype", "auto")
    for name, value in table.items():
        assert recorded[name] == value, name
    replayed = invoke_subprocess("replay", image, "-o", tmp_path / "b")
    assert replayed.exit_code == 0, replayed.output
    assert np.array_equal(pixels(image), pixels(tmp_path / "b" / "00001-4.png"))


def test_explicit_dtype_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)
    assert fast.preset_for(GenerateRecipe(fast=True, backend="torch"), "cpu") == dict(fast.PRESETS["cpu-bf16"])
    chosen = fast.preset_for(GenerateRecipe(fast=True, dtype="fp32", backend="torch"), "cpu")
    assert "dtype" not in chosen and chosen.get("channels_last") is True
    assert fast.preset_for(GenerateRecipe(fast=False), "cpu") == {}
    assert fast.preset_for(GenerateRecipe(fast=True, dtype="bf16"), "cuda") == {"channels_last": True, "fuse_qkv": True}
    # a LoRA or attention slicing keeps the unfused projections
    assert "fuse_qkv" not in fast.preset_for(GenerateRecipe(fast=True, attention_slicing=True), "cuda")


def test_explicit_dtype_wins_in_the_image(tmp_path: Path, tiny_sd_dir: Path) -> None:
    from sdkit.outputs import read_recipe

    result = invoke_subprocess("generate", "x", "-m", tiny_sd_dir, *GEN, "--fast", "--dtype", "fp32", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert read_recipe(tmp_path / "00001-4.png")["recipe"]["dtype"] == "fp32"


def test_cache_key_tells_fast_apart(tiny_sd_dir: Path) -> None:
    from sdkit import device
    from sdkit.models import resolve_model
    from sdkit.pipelines import PipelineCache

    plain, quick = GenerateRecipe(), GenerateRecipe(fast=True)
    assert plain.speed_key() != quick.speed_key()
    assert GenerateRecipe(compile=True).speed_key() != plain.speed_key()
    cache, model, placement = PipelineCache(), resolve_model(str(tiny_sd_dir)), device.resolve("cpu", "fp32")
    first = cache.get(model, placement, speed=plain)
    assert cache.get(model, placement, speed=quick) is not first and cache.loads == 2
    assert cache.get(model, placement, speed=GenerateRecipe()) is first and cache.loads == 2


def test_fuse_qkv_and_sdpa(tiny_sd_dir: Path) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    from sdkit import device
    from sdkit.models import load_pipeline, resolve_model
    from sdkit.pipelines import apply_speed

    placement = device.resolve("cpu", "fp32")
    pipe = load_pipeline(resolve_model(str(tiny_sd_dir)), torch_dtype=placement.dtype)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}  # torch SDPA by default
    apply_speed(pipe, GenerateRecipe(fuse_qkv=True), placement)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {FusedAttnProcessor2_0}


def test_fused_qkv_keeps_the_image(tmp_path: Path, tiny_sd_dir: Path) -> None:
    base = invoke("generate", "a red circle", "-m", tiny_sd_dir, *GEN, "-o", tmp_path / "base")
    fused = invoke("generate", "a red circle", "-m", tiny_sd_dir, *GEN, "--fuse-qkv", "-o", tmp_path / "fused")
    assert base.exit_code == 0 and fused.exit_code == 0, (base.output, fused.output)
    a, b = pixels(tmp_path / "base" / "00001-4.png"), pixels(tmp_path / "fused" / "00001-4.png")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_channels_last_covers_unet_and_vae(tiny_sd_dir: Path) -> None:
    import torch

    from sdkit import device
    from sdkit.models import load_pipeline, resolve_model
    from sdkit.pipelines import apply_speed

    placement = device.resolve("cpu", "fp32")
    pipe = load_pipeline(resolve_model(str(tiny_sd_dir)), torch_dtype=placement.dtype)
    convs = [pipe.unet.conv_in.weight, pipe.vae.decoder.conv_in.weight, pipe.vae.encoder.conv_in.weight]
    assert not any(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    apply_speed(pipe, GenerateRecipe(channels_last=True), placement)
    convs = [pipe.unet.conv_in.weight, pipe.vae.decoder.conv_in.weight, pipe.vae.encoder.conv_in.weight]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_compile_wraps_unet_and_decoder(tiny_sd_dir: Path) -> None:
    """Compilation itself runs at the first call (minutes on CPU for inductor): only its set-up is checked here."""
    from sdkit import device
    from sdkit.models import load_pipeline, resolve_model
    from sdkit.pipelines import apply_speed

    placement = device.resolve("cpu", "fp32")
    pipe = load_pipeline(resolve_model(str(tiny_sd_dir)), torch_dtype=placement.dtype)
    assert pipe.unet._compiled_call_impl is None
    apply_speed(pipe, GenerateRecipe(compile=True), placement)
    assert pipe.unet._compiled_call_impl is not None and pipe.vae.decoder._compiled_call_impl is not None
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"  # compiled in place: diffusers still sees its model


def test_impossible_combinations(tmp_path: Path, tiny_sd_dir: Path) -> None:
    out = tmp_path / "o"
    assert_user_error(invoke("generate", "x", "-m", tiny_sd_dir, "--fuse-qkv", "--attention-slicing", "-o", out), "--fuse-qkv")
    assert not out.exists()
    from sdkit.errors import UserError

    with pytest.raises(UserError, match="--fuse-qkv with --lora"):
        fast.check_combination(GenerateRecipe(fuse_qkv=True, lora=[str(tmp_path / "l.safetensors")]))
    fast.check_combination(GenerateRecipe(fast=True, lora=[str(tmp_path / "l.safetensors")]))  # fast just skips fusing


def test_gradient_checkpointing_same_weights(tmp_path: Path, tiny_sd_dir: Path) -> None:
    import torch
    from helpers import FAST, shapes_dataset

    import sdkit
    from sdkit.tasks import train_lora

    data = shapes_dataset(tmp_path / "data", n=4)
    fields = {"model": str(tiny_sd_dir), "data_dir": str(data), "max_steps": 2, "train_batch_size": 2, "rank": 2,
              "checkpointing_steps": 100, **FAST}  # fmt: skip
    runs = {}
    for on in (False, True):
        recipe = sdkit.load_recipe("train-lora", {**fields, "output_dir": str(tmp_path / f"gc-{on}"), "gradient_checkpointing": on})
        result = train_lora.run(recipe)
        assert result.pipeline.unet.is_gradient_checkpointing is on
        runs[on] = {k: v for k, v in result.pipeline.unet.state_dict().items() if "lora" in k}
    assert runs[True].keys() == runs[False].keys() and runs[True]
    for key, value in runs[False].items():
        torch.testing.assert_close(runs[True][key], value, rtol=0, atol=1e-6)


def test_8bit_adam_without_bitsandbytes_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from sdkit.errors import UserError
    from sdkit.training.speed import adamw_8bit

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install bitsandbytes"):
        adamw_8bit()


def test_8bit_adam_trains_with_8bit_state(tmp_path: Path, tiny_sd_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    import torch
    from helpers import FAST, shapes_dataset

    import sdkit
    from sdkit.tasks import train_text_to_image

    data = shapes_dataset(tmp_path / "data", n=4)
    recipe = sdkit.load_recipe("train-text-to-image", {
        "model": str(tiny_sd_dir), "data_dir": str(data), "output_dir": str(tmp_path / "run"), "max_steps": 2,
        "train_batch_size": 2, "checkpointing_steps": 2, "use_8bit_adam": True, **FAST,
    })  # fmt: skip
    train_text_to_image.run(recipe)
    state = torch.load(next((tmp_path / "run" / "checkpoints").glob("step-2*/optimizer.bin")), weights_only=False)["state"]

    def dtypes(value) -> set:
        if torch.is_tensor(value):
            return {value.dtype}
        return set().union(*map(dtypes, value.values())) if isinstance(value, dict) else set()

    assert torch.uint8 in dtypes(state)  # the moments of the large weights are kept in 8 bits
