"""--prepack: prepacked oneDNN convolutions compute what nn.Conv2d computes, repack when weights change (a fused
LoRA between jobs of one run), fall back where they would not pay, and are refused beside --compile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from PIL import Image

from sdkit.prepack import PackedConv2d, invalidate, prepack_convolutions, unpack_convolutions

GEN = ["--steps", "3", "--seed", "4", "--scheduler", "Euler", "--dtype", "bf16"]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stride,bias,channels_last", [(1, True, True), (2, False, False), (1, True, False)])
def test_packed_conv_equals_conv(dtype: torch.dtype, stride: int, bias: bool, channels_last: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(16, 24, 3, stride=stride, padding=1, bias=bias).to(dtype).eval()
    x = torch.randn(2, 16, 4, 4, generator=gen).to(dtype)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = conv(x)
        holder = torch.nn.Sequential(conv)
        assert prepack_convolutions(holder) == 1 and isinstance(holder[0], PackedConv2d)
        assert holder[0].packs_for(x)  # 24 x 9 weights per pixel > 2 x 4 x 4 pixels: the packed path
        got = holder[0](x)
    assert holder[0]._packed is not None  # it really ran packed
    torch.testing.assert_close(
        got, expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-2 if dtype == torch.bfloat16 else 1e-5
    )
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    unpack_convolutions(holder)
    assert type(holder[0]) is torch.nn.Conv2d and "_packed" not in vars(holder[0])


def test_large_inputs_and_training_keep_the_eager_path() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1))
    prepack_convolutions(conv)
    big = torch.randn(1, 4, 16, 16)  # 4 x 9 < 256 pixels: repacking the activation would cost more
    with torch.no_grad():
        conv(big)
    assert conv[0]._packed is None
    small = torch.randn(1, 4, 2, 2, requires_grad=True)
    conv(small).sum().backward()  # with gradients: the eager op, so autograd works
    assert conv[0]._packed is None and small.grad is not None


def test_weight_changes_repack() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1)).eval()
    prepack_convolutions(conv)
    x = torch.randn(1, 8, 2, 2)
    with torch.no_grad():
        first = conv(x)
        conv[0].weight.copy_(conv[0].weight * 2)  # an in-place copy (load_state_dict) bumps the version: detected
        torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv[0].weight, conv[0].bias, padding=1))
        conv[0].weight.data.mul_(0.5)  # .data edits (what LoRA fusing does) are not tracked: invalidate() is needed
        invalidate(conv)
        torch.testing.assert_close(conv(x), first)


def _conv_lora(model_dir: Path, out: Path) -> Path:
    """A LoRA on the UNet's resnet convolutions (conv1/conv2), random non-zero A and B, saved in diffusers' format."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["conv1", "conv2"]))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    )
    return out / "pytorch_lora_weights.safetensors"


def test_prepack_same_pixels_across_jobs_with_a_fused_conv_lora(tmp_path: Path, tiny_sd_dir: Path) -> None:
    """One run, one shared pipeline: plain, fused conv LoRA, plain again. With --prepack each image equals the
    image made without it (so the packed weights followed the fuse and the unfuse)."""
    import yaml

    lora = _conv_lora(tiny_sd_dir, tmp_path / "lora")
    jobs = [{}, {"lora": [str(lora)], "fuse_lora": True}, {}]
    images = {}
    for prepack in (False, True):
        out = tmp_path / f"prepack-{prepack}"
        recipe = {"defaults": {"model": str(tiny_sd_dir), "prompt": "a red circle", "steps": 3,
                               "seed": 4, "scheduler": "Euler", "dtype": "bf16", "device": "cpu", "prepack": prepack},
                  "jobs": [{"task": "generate", **job, "out": str(out / str(i))} for i, job in enumerate(jobs)]}  # fmt: skip
        (tmp_path / f"run-{prepack}.yaml").write_text(yaml.safe_dump(recipe))
        result = invoke("run", tmp_path / f"run-{prepack}.yaml")
        assert result.exit_code == 0, result.output
        images[prepack] = [pixels(next((out / str(i)).glob("*.png"))) for i in range(len(jobs))]
    assert np.abs(images[False][1] - images[False][0]).mean() > 1  # the LoRA changes the image
    for plain, packed in zip(images[False], images[True], strict=True):
        assert np.abs(plain - packed).max() <= 1


def test_prepack_covers_the_unet_and_is_refused_with_compile(
    tmp_path: Path, tiny_sd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdkit import device
    from sdkit.models import load_pipeline, resolve_model
    from sdkit.pipelines import apply_speed
    from sdkit.schema.generate import GenerateRecipe

    placement = device.resolve("cpu", "bf16")
    pipe = load_pipeline(resolve_model(str(tiny_sd_dir)), torch_dtype=placement.dtype)
    apply_speed(pipe, GenerateRecipe(prepack=True), placement)
    assert isinstance(pipe.unet.conv_in, PackedConv2d) and type(pipe.vae.decoder.conv_in) is torch.nn.Conv2d
    out = tmp_path / "o"
    assert_user_error(
        invoke("generate", "x", "-m", tiny_sd_dir, *GEN, "--prepack", "--compile", "-o", out), "--prepack"
    )
    assert not out.exists()
