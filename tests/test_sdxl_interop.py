"""SDXL LoRAs made elsewhere load fully in sdkit: the output of diffusers' train_dreambooth_lora_sdxl example (UNet and
both text encoders) and a kohya sd-scripts file (lora_unet_input_blocks_…, lora_te1_…, lora_te2_…), both built here
on the tiny SDXL model; each gives the pixels of the adapter it was made from."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import generate, in_memory

PROMPT = "a red circle on a blue background"
UNET_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
CLIP_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]


def with_adapters(model: Path, seed: int):
    """The tiny SDXL pipeline with LoRA adapters on the UNet's and both text encoders' attention, as diffusers' SDXL
    DreamBooth LoRA example adds them, and random (non-zero) weights so that each one changes the image."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig

    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=UNET_ATTENTION))
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=CLIP_ATTENTION))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
            for name, param in module.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return pipe


def diffusers_example_file(pipe, out: Path) -> Path:
    """What train_dreambooth_lora_sdxl.py writes at the end of training."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    StableDiffusionXLPipeline.save_lora_weights(
        save_directory=str(out),
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder)),
        text_encoder_2_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder_2)),
    )
    return out / "pytorch_lora_weights.safetensors"


def to_sgm(key: str, layers_per_block: int) -> str:
    """A kohya UNet key in diffusers' block names → kohya's own (SGM/ldm: input_blocks, middle_block, output_blocks),
    the inverse of diffusers' _maybe_map_sgm_blocks_to_diffusers for attention layers."""
    per = layers_per_block + 1
    key = re.sub(r"^lora_unet_down_blocks_(\d+)_attentions_(\d+)_",
                 lambda m: f"lora_unet_input_blocks_{int(m[1]) * per + int(m[2]) + 1}_1_", key)  # fmt: skip
    key = re.sub(r"^lora_unet_up_blocks_(\d+)_attentions_(\d+)_", lambda m: f"lora_unet_output_blocks_{int(m[1]) * per + int(m[2])}_1_", key)
    return key.replace("lora_unet_mid_block_attentions_0_", "lora_unet_middle_block_1_")


@pytest.fixture(scope="module")
def adapted(tiny_sdxl_dir: Path):
    return with_adapters(tiny_sdxl_dir, seed=1)


def test_diffusers_sdxl_example_output_loads_fully(adapted, tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    path = diffusers_example_file(adapted, tmp_path / "example")
    memory = in_memory(adapted, PROMPT)
    assert np.abs(memory - generate(tmp_path / "base", tiny_sdxl_dir, PROMPT)).mean() > 1
    assert (generate(tmp_path / "ours", tiny_sdxl_dir, PROMPT, "--lora", path) == memory).all()


def test_kohya_sdxl_keys_load_fully(adapted, tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from sdkit.lora_io import save_lora

    meta = {"ss_network_dim": "4"}
    (kohya,) = [p for p in save_lora(tmp_path / "k", unet=adapted.unet, text_encoder=adapted.text_encoder, metadata=meta,
                                     kohya_name="kohya", sdxl=True, text_encoder_2=adapted.text_encoder_2) if p.stem == "kohya"]  # fmt: skip
    layers = adapted.unet.config.layers_per_block
    sgm = {to_sgm(k, layers): v for k, v in load_file(str(kohya)).items()}
    assert any(k.startswith("lora_unet_input_blocks_") for k in sgm) and any(k.startswith("lora_unet_output_blocks_") for k in sgm)
    assert any(k.startswith("lora_unet_middle_block_1_") for k in sgm)
    assert {k.split("_text_model_")[0] for k in sgm if k.startswith("lora_te")} == {"lora_te1", "lora_te2"}
    save_file(sgm, str(tmp_path / "sgm.safetensors"), {"ss_network_module": "networks.lora"})
    memory = in_memory(adapted, PROMPT)
    assert (generate(tmp_path / "sgm", tiny_sdxl_dir, PROMPT, "--lora", tmp_path / "sgm.safetensors") == memory).all()
