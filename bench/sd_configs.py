"""Published Stable Diffusion 1.5 and SDXL-base component configurations, and random-weight builders.

The dicts below are the published `config.json` files of runwayml/stable-diffusion-v1-5 (unet, vae),
stabilityai/stable-diffusion-xl-base-1.0 (unet, vae) and madebyollin/taesd, minus the `_class_name`/`_diffusers_version`
bookkeeping keys. They are configurations, not weights: a model built from them with random weights costs exactly as
much compute and memory as the real one, which is all a speed benchmark needs.

    unet = build_unet("sd15", dtype=torch.bfloat16)          # 859.5 M parameters, seeded, eval mode
    folder = save_random_pipeline("sdxl", tmp / "sdxl", device="cuda", dtype=torch.float16)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SD15_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

SDXL_VAE: dict[str, Any] = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}

TAESD: dict[str, Any] = {
    "act_fn": "relu",
    "decoder_block_out_channels": [64, 64, 64, 64],
    "encoder_block_out_channels": [64, 64, 64, 64],
    "force_upcast": False,
    "in_channels": 3,
    "latent_channels": 4,
    "latent_magnitude": 3,
    "latent_shift": 0.5,
    "num_decoder_blocks": [3, 3, 3, 1],
    "num_encoder_blocks": [1, 3, 3, 3],
    "out_channels": 3,
    "scaling_factor": 1.0,
    "upsampling_scaling_factor": 2,
}

# SDXL's scheduler/scheduler_config.json (EulerDiscreteScheduler), minus the class name.
SDXL_SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

UNETS = {"sd15": SD15_UNET, "sdxl": SDXL_UNET}
VAES = {"sd15": SD15_VAE, "sdxl": SDXL_VAE}


def sd15_unet_config() -> dict[str, Any]:
    """A fresh copy of SD 1.5's UNet2DConditionModel config (safe to modify)."""
    return copy.deepcopy(SD15_UNET)


def unet_config(family: str) -> dict[str, Any]:
    return copy.deepcopy(UNETS[family])


def vae_config(family: str) -> dict[str, Any]:
    return copy.deepcopy(VAES[family])


def cast(model, dtype: torch.dtype):
    """`model.to(dtype)` without diffusers' warning about modules kept in fp32 (none are, for these classes)."""
    from diffusers.utils import logging

    if all(p.dtype == dtype for p in model.parameters()):
        return model
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return model.to(dtype)
    finally:
        logging.set_verbosity(level)


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_unet(
    family: str = "sd15", *, dtype: torch.dtype = torch.float32, seed: int = 0, device: str | torch.device = "cpu"
):
    """A UNet2DConditionModel from the published config of `family` (sd15 | sdxl), random weights, eval mode.
    `device="meta"` allocates nothing (parameter counts, FLOP counting)."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        model = _seeded(seed, lambda: UNet2DConditionModel(**unet_config(family)))
    return cast(model, dtype).eval().requires_grad_(False)


def build_vae(
    family: str = "sd15", *, dtype: torch.dtype = torch.float32, seed: int = 1, device: str | torch.device = "cpu"
):
    """An AutoencoderKL from the published config of `family`, random weights, eval mode."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        model = _seeded(seed, lambda: AutoencoderKL(**vae_config(family)))
    return cast(model, dtype).eval().requires_grad_(False)


def build_taesd(*, dtype: torch.dtype = torch.float32, seed: int = 2, device: str | torch.device = "cpu"):
    """An AutoencoderTiny with TAESD's published config (SD 1.x/2.x latents), random weights, eval mode."""
    from diffusers import AutoencoderTiny

    with torch.device(device):
        model = _seeded(seed, lambda: AutoencoderTiny(**copy.deepcopy(TAESD)))
    return cast(model, dtype).eval().requires_grad_(False)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def architecture(family: str):
    """An sdkit ArchitectureSpec with the published component configs: SD 1.5 (CLIP-L text encoder) or SDXL base
    (CLIP-L + OpenCLIP bigG with projection). The tokenizer is sdkit's word-level one (a text encoder's cost does not
    depend on its vocabulary size, and its share of a generation is tiny)."""
    from sdkit.architectures import SD15_SCHEDULER, ArchitectureSpec, TextEncoderSpec

    clip_l = TextEncoderSpec(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    if family == "sd15":
        return ArchitectureSpec(
            name="sd15-random", description="SD 1.5 published configs, random weights", family="sd", image_size=512,
            model_max_length=77, unet=unet_config("sd15"), vae=vae_config("sd15"), text_encoder=clip_l,
            text_encoder_2=None, scheduler_class="PNDMScheduler", scheduler=dict(SD15_SCHEDULER),
        )  # fmt: skip
    if family == "sdxl":
        big_g = TextEncoderSpec(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
                                projection_dim=1280, hidden_act="gelu")  # fmt: skip
        return ArchitectureSpec(
            name="sdxl-random", description="SDXL base published configs, random weights", family="sdxl",
            image_size=1024, model_max_length=77, unet=unet_config("sdxl"), vae=vae_config("sdxl"),
            text_encoder=TextEncoderSpec(768, 12, 12, 3072, projection_dim=768), text_encoder_2=big_g,
            scheduler_class="EulerDiscreteScheduler", scheduler=dict(SDXL_SCHEDULER),
        )  # fmt: skip
    raise ValueError(f"unknown family {family!r}: sd15 or sdxl")


def build_pipeline(
    family: str, *, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """A whole random-weight StableDiffusionPipeline (sd15) or StableDiffusionXLPipeline (sdxl). Weights are created
    directly on `device` (on a GPU, initialising SDXL's 3.5 B parameters takes seconds instead of minutes)."""
    from sdkit.architectures import build_pipeline as build

    with torch.device(device):
        pipe = build(architecture(family), seed=seed)
    return pipe.to(dtype=dtype)


def save_random_pipeline(
    family: str, out_dir: Path, *, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16
) -> Path:
    """Build `family` with random weights and save it as a diffusers folder (weights stored in `dtype`)."""
    from sdkit.architectures import save_pipeline

    pipe = build_pipeline(family, seed=seed, device=device, dtype=dtype)
    save_pipeline(pipe, Path(out_dir))
    del pipe
    return Path(out_dir)
