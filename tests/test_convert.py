"""`sdkit convert` for LoRAs (diffusers/peft <-> kohya/A1111, no base model needed: each module keeps its scale, so the
converted file gives the source's pixels), its refusals, and the `<lora:...>` tag parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_user_error, generated, invoke, tensors

from sdkit.errors import UserError

FAST = ["--steps", "3", "--seed", "6", "--scheduler", "Euler"]


def _randomize(*modules) -> None:
    import torch

    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.fixture(scope="module")
def sd_lora(tmp_path_factory) -> Path:
    """An sdkit LoRA for the shapes model: UNet and text encoder, alpha 2 at rank 4 (scale 0.5), a conv layer at r 2."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    from sdkit.lora_io import lora_metadata, save_lora
    from sdkit.models import ALIASES

    pipe = StableDiffusionPipeline.from_pretrained(ALIASES["shapes"])
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"],
                                     rank_pattern={"conv1": 2}, alpha_pattern={"conv1": 4}))  # fmt: skip
    pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    _randomize(pipe.unet, pipe.text_encoder)
    meta = lora_metadata(task="t", base_model="shapes", rank=4, alpha=2, trigger_word=None, recipe={})
    return save_lora(tmp_path_factory.mktemp("sdlora"), unet=pipe.unet, text_encoder=pipe.text_encoder, metadata=meta)[0]


def test_sd_lora_both_ways(sd_lora: Path, tmp_path: Path) -> None:
    kohya, back = tmp_path / "kohya.safetensors", tmp_path / "back.safetensors"
    assert invoke("convert", sd_lora, "-o", kohya).exit_code == 0
    keys = tensors(kohya)
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_")) for k in keys)
    alphas = {float(v) for k, v in keys.items() if k.endswith(".alpha")}
    assert alphas == {2.0, 4.0}  # each module's own alpha (the conv layers': 4)
    assert invoke("convert", kohya, "-o", back).exit_code == 0
    again = tmp_path / "again.safetensors"
    assert invoke("convert", back, "-o", again, "--to", "kohya").exit_code == 0
    twice = tensors(again)
    assert twice.keys() == keys.keys()
    assert [k for k, v in keys.items() if not (twice[k] == v).all()] == []
    source = generated(tmp_path / "src", "a red circle", "--lora", f"{sd_lora}:0.9", *FAST)
    assert not (source == generated(tmp_path / "none", "a red circle", *FAST)).all()
    assert (generated(tmp_path / "kohya", "a red circle", "--lora", f"{kohya}:0.9", *FAST) == source).all()
    assert (generated(tmp_path / "back", "a red circle", "--lora", f"{back}:0.9", *FAST) == source).all()


def test_sdxl_lora_with_both_text_encoders(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=1, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for te in (pipe.text_encoder, pipe.text_encoder_2):
        te.add_adapter(LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    _randomize(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    layers = {"unet_lora_layers": get_peft_model_state_dict(pipe.unet),
              "unet_lora_adapter_metadata": pipe.unet.peft_config["default"].to_dict()}  # fmt: skip
    for name in ("text_encoder", "text_encoder_2"):
        te = getattr(pipe, name)
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(te))
        layers[f"{name}_lora_adapter_metadata"] = te.peft_config["default"].to_dict()
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "xl", **layers)
    source = tmp_path / "xl" / "pytorch_lora_weights.safetensors"
    kohya = tmp_path / "xl-kohya.safetensors"
    assert invoke("convert", source, "-o", kohya).exit_code == 0
    prefixes = {k.split("_encoder")[0].split("_down_blocks")[0].split("_up_blocks")[0].split("_mid_block")[0] for k in tensors(kohya)}
    assert prefixes == {"lora_unet", "lora_te1_text_model", "lora_te2_text_model"}, prefixes
    back = tmp_path / "xl-back.safetensors"
    assert invoke("convert", kohya, "-o", back).exit_code == 0
    images = [generated(tmp_path / n, "a red circle", "-m", tiny_sdxl_dir, "--lora", f, *FAST)
              for n, f in (("src", source), ("kohya", kohya), ("back", back))]  # fmt: skip
    assert (images[0] == images[1]).all() and (images[0] == images[2]).all()


def test_convert_refusals(sd_lora: Path, tmp_path: Path) -> None:
    assert_user_error(invoke("convert", tmp_path / "nothing", "-o", tmp_path / "x.safetensors"), "no such file or folder")
    (tmp_path / "taken.safetensors").write_bytes(b"")
    assert_user_error(invoke("convert", "shapes", "-o", tmp_path / "taken.safetensors"), "exists", "never replaces")
    assert_user_error(invoke("convert", "shapes", "-o", tmp_path / "folder"), "is a pipeline", "a .safetensors path")
    assert_user_error(invoke("convert", sd_lora, "-o", tmp_path / "k.safetensors", "--to", "diffusers"), "not in kohya")
    assert_user_error(invoke("convert", sd_lora, "-o", tmp_path / "k.txt"), "ending in .safetensors")
    assert_user_error(invoke("convert", "shapes", "-o", tmp_path / "s.safetensors", "--config", "sd1"), "--config is for single-file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.safetensors"]


def test_lora_tags() -> None:
    from sdkit.prompt_names import LoraTag, names_in, spelled_as, split_lora_tags

    text, tags = split_lora_tags("a castle <lora:ink:0.8>, night <LYCO:sub/x> <lora:y:1:0.5> <lora:z:te=0.2:unet=0.3>")
    assert text == "a castle , night   "
    assert tags == [LoraTag("ink", 0.8), LoraTag("sub/x", 1.0), LoraTag("y", 1.0, 0.5), LoraTag("z", 0.2, 0.3)]
    assert split_lora_tags("<lora:a:0.5:0.5>")[1] == [LoraTag("a", 0.5)]  # equal weights: one weight
    for bad, fragment in (("<lora::1>", "names no LoRA"), ("<lora:a:x>", "is not a number"), ("<lora:a:1:2:3>", "at most two")):
        with pytest.raises(UserError, match=fragment):
            split_lora_tags(bad)
    assert names_in("EasyNegative, bad-hands-5 x", ["easynegative", "bad-hands", "bad-hands-5", "x"]) == [
        "easynegative", "bad-hands-5", "x"]  # fmt: skip
    assert spelled_as("A EASYNEGATIVE b", ["EasyNegative"]) == "A EasyNegative b"
