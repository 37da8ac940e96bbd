"""LoRA files: the diffusers/peft format and kohya/A1111 keys, both with sdkit's metadata in the safetensors header.

    files = save_lora(out_dir, unet=unet, text_encoder=None, metadata=lora_metadata(...), kohya_name="my-lora")
    read_metadata(files[0])   # {"sdkit.base_model": ..., "sdkit.rank": "4", "sdkit.recipe": "{...}", ...}

* `pytorch_lora_weights.safetensors`: the UNet's `get_peft_model_state_dict` (and the text encoder's through
  `convert_state_dict_to_diffusers`) written by the pipeline class's own `save_lora_weights`, with the peft
  `LoraConfig` in diffusers' `lora_adapter_metadata` header entry (so `load_lora_weights` rebuilds alpha and the
  target modules). Loads with plain `pipe.load_lora_weights(dir)`.
* `NAME.safetensors` (kohya/A1111 keys, `lora_unet_…`/`lora_te_…` with `.lora_down/.lora_up/.alpha`; SDXL:
  `lora_unet_…`, `lora_te1_…` and `lora_te2_…`): diffusers' `convert_state_dict_to_kohya`, with two fixes: its alpha
  entries are the rank (right only when alpha == rank), and transformers 5's CLIPTextModel has no `text_model.`
  level, which kohya/A1111 text-encoder keys include.

SDXL pipelines save through `StableDiffusionXLPipeline.save_lora_weights`, with both text encoders' layers.

Files are written to a temporary name in the target folder and renamed into place, so a crash never leaves half a file;
they get the permissions the umask gives any new file (`sdkit.atomic`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdkit import atomic

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_TE_PREFIX = "lora_te_text_model_"
KOHYA_SDXL_TE_PREFIXES = {"lora_te1_": "lora_te1_text_model_", "lora_te2_": "lora_te2_text_model_"}


def lora_metadata(
    *, task: str, base_model: str, rank: int, alpha: float, trigger_word: str | None, recipe: Mapping[str, Any]
) -> dict[str, str]:
    """Header entries: sdkit's own (`sdkit.*`, the resolved recipe as JSON) and the kohya ones A1111 displays (`ss_*`)."""
    from sdkit.version import __version__

    meta = {
        "sdkit.version": __version__, "sdkit.task": task, "sdkit.base_model": base_model, "sdkit.rank": str(rank),
        "sdkit.alpha": f"{alpha:g}", "sdkit.recipe": json.dumps(recipe, sort_keys=True),
        "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}",
        "ss_sd_model_name": base_model,
    }  # fmt: skip
    if trigger_word:
        meta["sdkit.trigger_word"] = trigger_word
        meta["modelspec.trigger_phrase"] = trigger_word
    return meta


def read_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (empty when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _peft_state(module, prefix: str) -> dict[str, Any]:
    from peft.utils import get_peft_model_state_dict

    return {f"{prefix}.{k}": v for k, v in get_peft_model_state_dict(module).items()}


def kohya_state_dict(unet, text_encoder, alpha: float, text_encoder_2=None) -> dict[str, Any]:
    """The adapters in kohya/A1111 naming (SD 1.x/2.x: `lora_unet_…`, `lora_te_text_model_…`; SDXL, with
    `text_encoder_2`: `lora_unet_…`, `lora_te1_text_model_…`, `lora_te2_text_model_…`) with the true alpha."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya

    peft_state = _peft_state(unet, "unet")
    if text_encoder is not None:
        peft_state |= _peft_state(text_encoder, "text_encoder")
    if text_encoder_2 is not None:
        peft_state |= _peft_state(text_encoder_2, "text_encoder_2")
    sdxl = text_encoder_2 is not None
    out = {}
    for key, value in convert_state_dict_to_kohya(peft_state).items():
        prefix = next((p for p in KOHYA_SDXL_TE_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            rest = key.removeprefix(prefix).removeprefix("text_model_")
            key = (KOHYA_SDXL_TE_PREFIXES[prefix] if sdxl else KOHYA_TE_PREFIX) + rest
        if key.endswith(".alpha"):
            value = torch.tensor(float(alpha))
        out[key] = value
    return out


def save_lora(out_dir: Path, *, unet, text_encoder=None, metadata: Mapping[str, str], kohya_name: str | None = None,
              sdxl: bool = False, text_encoder_2=None) -> list[Path]:  # fmt: skip
    """Write OUT/pytorch_lora_weights.safetensors (and OUT/<kohya_name>.safetensors); return the paths written.

    `unet` (and `text_encoder`, for SDXL also `text_encoder_2`) carry one peft adapter ("default", added with
    `add_adapter`); `sdxl` saves through the SDXL pipeline's loader (kohya keys lora_te1_/lora_te2_)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers: dict[str, Any] = {
        # peft's own keys (lora_A / lora_B) for every UNet layer: convert_state_dict_to_diffusers renames only the
        # attention projections, and diffusers' loader picks the format from the file's FIRST key, so a file whose
        # first key is a convolution's lora_A silently drops every attention LoRA.
        "unet_lora_layers": get_peft_model_state_dict(unet),
        "unet_lora_adapter_metadata": unet.peft_config["default"].to_dict(),
    }
    for name, encoder in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        if encoder is not None:
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
            layers[f"{name}_lora_adapter_metadata"] = encoder.peft_config["default"].to_dict()
    pipeline_class = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=out_dir) as tmp:
        pipeline_class.save_lora_weights(tmp, **layers)
        written = Path(tmp) / LORA_FILE
        header = read_metadata(written)  # diffusers' own: format, lora_adapter_metadata
        tensors = _load(written)
        paths = [atomic.write_safetensors(out_dir / LORA_FILE, tensors, {**metadata, **header})]
    if kohya_name is not None:
        alpha = float(unet.peft_config["default"].lora_alpha)
        paths.append(
            atomic.write_safetensors(out_dir / f"{kohya_name}.safetensors",
                                     kohya_state_dict(unet, text_encoder, alpha, text_encoder_2 if sdxl else None),
                                     {**metadata, "format": "pt"})
        )  # fmt: skip
    return paths


def _load(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


PEFT_NAMES = {".lora.down.weight": ".lora_A.weight", ".lora.up.weight": ".lora_B.weight"}


def mixed_unet_keys_renamed(path: Path) -> dict[str, Any] | None:
    """The tensors of a LoRA file whose UNet keys mix peft's names (`conv1.lora_A`) with diffusers' (`to_q.lora.down`),
    every UNet key renamed to peft's; None for any other file.

    diffusers reads the format off the file's first key, so such a file loads only in part. sdkit wrote such files
    before its UNet layers were saved in peft's names only (LoRAs on attention and convolutions)."""
    from safetensors import safe_open

    from sdkit.weightfiles import SAFETENSORS, weights_format

    if weights_format(Path(path)) != SAFETENSORS:  # by content: a pickled LoRA is diffusers' to load
        return None
    with safe_open(str(path), framework="pt") as f:  # the header only: most files are not mixed
        unet = [k for k in f.keys() if k.startswith("unet.")]
    peft = any(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in unet)
    if not peft or not any(k.endswith(tuple(PEFT_NAMES)) for k in unet):
        return None
    renamed = {}
    for key, value in _load(path).items():
        old = next((s for s in PEFT_NAMES if key.startswith("unet.") and key.endswith(s)), None)
        renamed[key if old is None else key.removesuffix(old) + PEFT_NAMES[old]] = value
    return renamed
