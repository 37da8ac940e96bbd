"""LoRA files between formats, without a base model: diffusers/peft (`pytorch_lora_weights.safetensors`, the peft
LoraConfig in the header) <-> kohya/A1111 (`lora_unet_...`/`lora_te_...` with `.lora_down/.lora_up/.alpha`).

    tensors, metadata = to_kohya(path)       # names by diffusers' convert_state_dict_to_kohya, each module's own alpha
    tensors, metadata = to_diffusers(path)   # diffusers' own kohya reader (lora_state_dict), alphas into the LoraConfig

Both directions keep every module's scale (alpha / rank): a converted file gives the same pixels as its source
(tests/test_convert.py). Names follow diffusers' converters; two fixes as in `sdkit.lora_io`: the alphas (diffusers
writes the rank) and the text encoders' `text_model_` level (transformers 5's CLIPTextModel has none).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sdkit.errors import UserError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
TO_PEFT = ((".lora.down.weight", ".lora_A.weight"), (".lora.up.weight", ".lora_B.weight"),
           (".lora_linear_layer.down.weight", ".lora_A.weight"), (".lora_linear_layer.up.weight", ".lora_B.weight"))  # fmt: skip


def is_kohya(keys) -> bool:
    return all(k.startswith(KOHYA_PREFIXES) for k in keys)


def _load(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors.torch import load_file

    from sdkit.lora_io import read_metadata
    from sdkit.weightfiles import check_safetensors

    check_safetensors(Path(path), "LoRA")
    return load_file(str(path)), read_metadata(Path(path))


def peft_names(tensors: dict[str, Any]) -> dict[str, Any]:
    """A diffusers-format LoRA state dict with every key in peft's names (`<component>.<module>.lora_A.weight`)."""
    out = {}
    for key, value in tensors.items():
        for old, new in TO_PEFT:
            if key.endswith(old):
                key = key.removesuffix(old) + new
                break
        out[key] = value
    return out


def _modules(peft: dict[str, Any]) -> dict[str, Any]:
    """`<component>.<module>` -> its lora_A (down) weight."""
    return {k.removesuffix(".lora_A.weight"): v for k, v in peft.items() if k.endswith(".lora_A.weight")}


def _canonical(kohya_name: str) -> str:
    """A kohya module name without the text encoders' spelling differences (lora_te_/lora_te1_, text_model_)."""
    name = re.sub(r"^lora_te1?_", "lora_te1_", kohya_name)
    return name.replace("_text_model_", "_", 1) if name.startswith(("lora_te1_", "lora_te2_")) else name


def kohya_name(module: str, down) -> str:
    """The kohya name of one peft module (`unet.down_blocks.0...to_q`), through diffusers' convert_state_dict_to_kohya."""
    from diffusers.utils import convert_state_dict_to_kohya

    key = next(k for k in convert_state_dict_to_kohya({f"{module}.lora_A.weight": down}) if k.endswith(".lora_down.weight"))
    return key.removesuffix(".lora_down.weight")


def _te_prefix(name: str, sdxl: bool) -> str:
    """kohya/A1111 text-encoder names: `lora_te_text_model_…` (SD 1.x/2.x), `lora_te1_text_model_…`/`lora_te2_…` (SDXL)."""
    for old in ("lora_te1_", "lora_te2_"):
        if name.startswith(old):
            rest = name.removeprefix(old).removeprefix("text_model_")
            head = "lora_te_" if old == "lora_te1_" and not sdxl else old
            return f"{head}text_model_{rest}"
    return name


def _adapter_config(metadata: dict[str, str], component: str) -> dict[str, Any]:
    raw = metadata.get("lora_adapter_metadata")
    try:
        flat = json.loads(raw) if raw else {}
    except ValueError:
        raise UserError("the LoRA's lora_adapter_metadata header is not JSON: the file is damaged") from None
    return {k.removeprefix(f"{component}."): v for k, v in flat.items() if k.startswith(f"{component}.")}


def _alpha(config: dict[str, Any], module: str, rank: int) -> float:
    """peft's alpha for a module: an alpha_pattern entry matching the module's name, else lora_alpha, else the rank."""
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return float(value)
    return float(config.get("lora_alpha") or rank)


def _is_sdxl(modules: dict[str, Any], metadata: dict[str, str]) -> bool:
    """SDXL names its text encoders lora_te1_/lora_te2_: a second text encoder, metadata saying SDXL, or UNet layers
    in a second transformer block (SDXL stacks 2 and 10 of them; SD 1.x/2.x have one)."""
    if any(m.startswith("text_encoder_2.") for m in modules):
        return True
    version = (metadata.get("ss_base_model_version", "") + metadata.get("modelspec.architecture", "")).lower()
    return "xl" in version or any(".transformer_blocks.1." in m for m in modules if m.startswith("unet."))


def to_kohya(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A diffusers/peft LoRA file as kohya/A1111 tensors (with each module's alpha) and its header (kept)."""
    import torch

    tensors, metadata = _load(path)
    if is_kohya(tensors):
        raise UserError(f"{path} is already in kohya/A1111 format: convert it --to diffusers")
    peft = peft_names(tensors)
    if not _modules(peft):
        raise UserError(f"{path} holds no LoRA layers (no lora_A / lora.down weights): give a LoRA file")
    modules = _modules(peft)
    sdxl = _is_sdxl(modules, metadata)
    out = {}
    for module, down in modules.items():
        component, name = module.split(".", 1)
        if component not in COMPONENTS:
            raise UserError(f"{path}: layer {module} belongs to no UNet or text encoder: not a Stable Diffusion LoRA")
        base = _te_prefix(kohya_name(module, down), sdxl)
        out[f"{base}.lora_down.weight"] = down.contiguous()
        out[f"{base}.lora_up.weight"] = peft[f"{module}.lora_B.weight"].contiguous()
        alpha = _alpha(_adapter_config(metadata, component), name, down.shape[0])
        out[f"{base}.alpha"] = torch.tensor(alpha)
    header = {k: v for k, v in metadata.items() if k != "lora_adapter_metadata"}
    return out, {**header, "format": "pt"}


def to_diffusers(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A kohya/A1111 LoRA file as diffusers tensors (UNet in peft names, text encoders in diffusers' names, as
    `save_lora_weights` writes them) with a peft LoraConfig per component in the header (so each alpha is kept)."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import get_peft_kwargs
    from diffusers.utils.state_dict_utils import StateDictType, convert_state_dict_to_peft
    from peft import LoraConfig

    tensors, metadata = _load(path)
    if not is_kohya(tensors):
        raise UserError(f"{path} is not in kohya/A1111 format (lora_unet_…/lora_te_… keys): convert it --to kohya")
    sdxl = any(k.startswith(("lora_te1_", "lora_te2_")) for k in tensors)
    cls = diffusers.StableDiffusionXLPipeline if sdxl else diffusers.StableDiffusionPipeline
    extra = {}
    if sdxl:  # SGM block names (lora_unet_input_blocks_4_1_…, as sd-scripts writes SDXL) map through the SDXL config
        from diffusers.configuration_utils import FrozenDict

        from sdkit.families import FAMILIES, read_json

        extra["unet_config"] = FrozenDict(read_json(FAMILIES["sdxl"].config_dir / "unet" / "config.json"))
    state, _alphas = cls.lora_state_dict(dict(tensors), **extra)
    alphas = {_canonical(k.removesuffix(".alpha")): float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    layers: dict[str, Any] = {}
    for component in COMPONENTS:
        part = {k.removeprefix(f"{component}."): v for k, v in state.items() if k.split(".")[0] == component}
        if not part:
            continue
        if component == "unet":
            peft = convert_unet_state_dict_to_peft(part)
        else:  # diffusers' kohya reader names text-encoder layers in its old format (to_q_lora.down, lora_linear_layer)
            peft = peft_names(convert_state_dict_to_peft(part, original_type=StateDictType.DIFFUSERS_OLD))
            if not _wrapped(sdxl and component == "text_encoder_2"):  # module names as this transformers has them
                peft = {k.removeprefix("text_model."): v for k, v in peft.items()}
        ranks = {k: v.shape[1] for k, v in peft.items() if k.endswith(".lora_B.weight")}
        module_alphas = {}
        for module, down in _modules(peft).items():
            name = _canonical(kohya_name(f"{component}.{module}", down))
            module_alphas[f"{module}.alpha"] = alphas.get(name, float(down.shape[0]))
        config = LoraConfig(**get_peft_kwargs(ranks, module_alphas, peft, is_unet=True)).to_dict()
        layers[f"{component}_lora_layers"] = peft if component == "unet" else convert_state_dict_to_diffusers(peft)
        layers[f"{component}_lora_adapter_metadata"] = config
    saved, header = _saved(cls, layers)
    return saved, {**{k: v for k, v in metadata.items() if k != "format"}, **header}


def _wrapped(with_projection: bool) -> bool:
    """Whether transformers' CLIP text model keeps its `text_model.` level (CLIPTextModel lost it in transformers 5.6)."""
    import transformers
    from accelerate import init_empty_weights

    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    config = transformers.CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    with init_empty_weights():
        return hasattr(cls(config), "text_model")


def _saved(cls, layers: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """What `save_lora_weights` writes for these layers: (tensors, header)."""
    import tempfile

    from safetensors.torch import load_file

    from sdkit.lora_io import LORA_FILE, read_metadata

    with tempfile.TemporaryDirectory(prefix="sdkit-lora-") as tmp:
        cls.save_lora_weights(tmp, **layers)
        return load_file(str(Path(tmp) / LORA_FILE)), read_metadata(Path(tmp) / LORA_FILE)

