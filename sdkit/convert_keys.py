"""diffusers -> original (LDM / A1111 / ComfyUI) key layout for Stable Diffusion checkpoints: the one place where it lives.

diffusers ships the other direction (`diffusers.loaders.single_file_utils`, used by `from_single_file`); this direction
exists only in diffusers' scripts folder, so sdkit writes it once here, for any UNet/VAE config (SD 1.x, 2.x, SDXL, the
shapes model and the tiny test models: the block indices follow `layers_per_block` and the block types), and proves it
by the round trip diffusers -> single file -> diffusers (bit-identical weights; tests/test_single_file.py).

    tensors = to_original({"unet": unet_state, "vae": vae_state, "text_encoder": te_state}, layout)

`layout` says where each component goes (`sd1`, `sd2`, `sdxl`: LAYOUTS). Values pass through untouched except where
the original format stores them differently: VAE attention projections are 1x1 convolutions (4-D), OpenCLIP keeps
q/k/v as one `in_proj` matrix and its text projection transposed. Works on meta tensors too (shapes only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sdkit.errors import UserError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# where each text encoder goes, and in which format ("clip": Hugging Face names, "openclip": OpenCLIP's)
LAYOUTS: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "sd1": {"text_encoder": ("cond_stage_model.transformer.", "clip")},
    "sd2": {"text_encoder": ("cond_stage_model.model.", "openclip")},
    "sdxl": {
        "text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
        "text_encoder_2": ("conditioner.embedders.1.model.", "openclip"),
    },
}
RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))  # fmt: skip
VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
OPENCLIP_LAYER = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                  ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))  # fmt: skip


class LayoutError(UserError):
    """A state dict that this mapping cannot place (a key it does not know, or a config it does not cover)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}: this model has no single-file (original) form; keep it as a diffusers folder")


def _rename(key: str, prefixes: Mapping[str, str], inner: tuple[tuple[str, str], ...] = ()) -> str | None:
    """`key` with its longest known module prefix replaced (and the inner names of that module), or None."""
    for old in sorted(prefixes, key=len, reverse=True):
        if key == old or key.startswith(old + "."):
            rest = key[len(old) :]
            for a, b in inner:
                if rest.startswith(f".{a}."):
                    rest = f".{b}." + rest[len(a) + 2 :]
            return prefixes[old] + rest
    return None


def unet_prefixes(config: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(module prefixes, resnet prefixes): diffusers module name -> original name, from the UNet config."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise LayoutError(f"layers_per_block {layers!r} differs per block: the original layout needs one number")
    plain = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.attentions.0": "middle_block.1"}  # fmt: skip
    resnets = {"mid_block.resnets.0": "middle_block.0", "mid_block.resnets.1": "middle_block.2"}
    for b in range(len(config["down_block_types"])):
        for j in range(layers):
            index = 1 + b * (layers + 1) + j
            resnets[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{index}.0"
            plain[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{index}.1"
        plain[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{1 + b * (layers + 1) + layers}.0.op"
    for b, kind in enumerate(config["up_block_types"]):
        for j in range(layers + 1):
            resnets[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{b * (layers + 1) + j}.0"
            plain[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{b * (layers + 1) + j}.1"
        upsampler = 2 if "CrossAttn" in kind else 1  # after the attention when the block has one
        plain[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{b * (layers + 1) + layers}.{upsampler}.conv"
    return plain, resnets


def unet_to_original(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel state dict in LDM names (without the `model.diffusion_model.` prefix)."""
    plain, resnets = unet_prefixes(config)
    out = {}
    for key, value in state.items():
        new = _rename(key, resnets, RESNET) or _rename(key, plain)
        if new is None:
            raise LayoutError(f"UNet key {key!r} has no place in the original layout")
        out[new] = value
    return out


def _vae_prefixes(config: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    blocks = len(config["down_block_types"])
    plain = {f"{part}.{name}": f"{part}.{name}" for part in ("encoder", "decoder") for name in ("conv_in", "conv_out")}
    plain |= {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out",
              "quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}  # fmt: skip
    resnets, attentions = {}, {}
    for part in ("encoder", "decoder"):
        resnets |= {f"{part}.mid_block.resnets.{k}": f"{part}.mid.block_{k + 1}" for k in range(2)}
        attentions[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    for i in range(blocks):
        resnets[f"encoder.down_blocks.{i}.resnets"] = f"encoder.down.{i}.block"
        plain[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        resnets[f"decoder.up_blocks.{i}.resnets"] = f"decoder.up.{blocks - 1 - i}.block"
        plain[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{blocks - 1 - i}.upsample.conv"
    return plain, resnets, attentions


def vae_to_original(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in LDM names (without the `first_stage_model.` prefix)."""
    plain, resnets, attentions = _vae_prefixes(config)
    out = {}
    for key, value in state.items():
        new = _rename(key, attentions, VAE_ATTENTION)
        if new is not None:
            if value.ndim == 2:  # Linear in diffusers, a 1x1 convolution in the original
                value = value.reshape(*value.shape, 1, 1)
        else:
            new = _rename(key, resnets) or _rename(key, plain)
            new = new.replace(".conv_shortcut.", ".nin_shortcut.") if new else None
        if new is None:
            raise LayoutError(f"VAE key {key!r} has no place in the original layout")
        out[new] = value
    return out


def clip_to_original(state: Mapping[str, Any]) -> dict[str, Any]:
    """A transformers CLIPTextModel state dict in the names the original checkpoints use (`text_model.` inside)."""
    return {key if key.startswith("text_model.") else f"text_model.{key}": value for key, value in state.items()}


def openclip_to_original(state: Mapping[str, Any]) -> dict[str, Any]:
    """A transformers CLIPTextModel(WithProjection) state dict in OpenCLIP's names (SD 2.x; SDXL's second encoder)."""
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, dict[str, Any]] = {}
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}  # fmt: skip
    for key, value in state.items():
        name = key.removeprefix("text_model.")
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif name in fixed:
            out[fixed[name]] = value
        elif name.startswith("encoder.layers."):
            layer, rest = name.removeprefix("encoder.layers.").split(".", 1)
            head = f"transformer.resblocks.{layer}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, kind = rest.split(".")
                fused.setdefault(f"{head}attn.in_proj_{kind}", {})[proj] = value
                continue
            new = _rename(rest, dict(OPENCLIP_LAYER))
            if new is None:
                raise LayoutError(f"text encoder key {key!r} has no place in the OpenCLIP layout")
            out[head + new] = value
        else:
            raise LayoutError(f"text encoder key {key!r} has no place in the OpenCLIP layout")
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


TEXT_FORMATS: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "clip": clip_to_original,
    "openclip": openclip_to_original,
}


def to_original(
    states: Mapping[str, Mapping[str, Any]], configs: Mapping[str, Mapping[str, Any]], layout: str
) -> dict[str, Any]:
    """One checkpoint in the original layout from diffusers component state dicts (`unet`, `vae`, `text_encoder`,
    `text_encoder_2`; a missing VAE or text encoder is left out) and the UNet/VAE configs."""
    out = {UNET_PREFIX + k: v for k, v in unet_to_original(states["unet"], configs["unet"]).items()}
    if "vae" in states:
        out |= {VAE_PREFIX + k: v for k, v in vae_to_original(states["vae"], configs["vae"]).items()}
    for component, (prefix, text_format) in LAYOUTS[layout].items():
        if component in states:
            out |= {prefix + k: v for k, v in TEXT_FORMATS[text_format](states[component]).items()}
    return out


def layout_of(pipeline_class: str, text_encoder_act: str) -> str:
    """The original layout for a pipeline: SDXL (two encoders), SD 2.x (an OpenCLIP text encoder: its activation is
    gelu, OpenAI CLIP's is quick_gelu) or SD 1.x."""
    if "XL" in pipeline_class:
        return "sdxl"
    return "sd2" if text_encoder_act == "gelu" else "sd1"
