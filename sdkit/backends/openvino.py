"""The pipeline's UNet, VAE encoder/decoder and text encoders running in OpenVINO, as drop-in forwards.

`converted(pipe, ...)` sets an instance `forward` on each of those torch modules for one job and removes it afterwards,
so diffusers' pipelines (txt2img, img2img and inpaint share the modules through from_pipe), sdkit's prompt encoder
and the VAE's tiling/slicing call them as before. Each call's tensors are flattened into named inputs; the first call
with a new input signature (names, shapes, dtypes: one static-shape graph per size and batch) converts the module with
`openvino.convert_model` (the module's class forward, traced on that call's tensors) or loads it from the disk cache
(`sdkit.backends.ov_cache`), and compiles it with the precision hint; later calls reuse the compiled model.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdkit.backends import ov_cache, ov_device
from sdkit.errors import UserError

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
TEXT_OUTPUTS = {  # text encoder class -> (output class, its first two fields); hidden_states follow
    "CLIPTextModel": ("transformers.modeling_outputs.BaseModelOutputWithPooling", ("last_hidden_state", "pooler_output")),
    "CLIPTextModelWithProjection": ("transformers.models.clip.modeling_clip.CLIPTextModelOutput", ("text_embeds", "last_hidden_state")),
}  # fmt: skip


@dataclass(frozen=True)
class Call:
    """One call flattened: named input tensors, and how to turn the graph's outputs into what the caller expects."""

    inputs: dict[str, Any]
    rebuild: Callable[[list], Any]
    options: tuple = ()  # non-tensor settings that change the graph (part of its key)


def _bound(module, args, kwargs) -> dict[str, Any]:
    bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)
    return {k: v for k, v in bound.arguments.items() if k != "self"}


def _empty(value) -> bool:
    return value is None or (isinstance(value, (dict, tuple, list)) and not value)


def _unused(where: str, values: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(k for k, v in values.items() if k not in allowed and not _empty(v))
    if extra:
        raise UserError(f"--backend openvino: {where} was called with {', '.join(extra)}, which the converted graph "
                        "does not take; use --backend torch for this model")


# --- per module kind: flatten a call, the traced core, the output ----------------------------------------------------


def unet_call(module, args, kwargs) -> Call:
    import torch

    a = _bound(module, args, kwargs)
    extra = a.pop("kwargs", {}) or {}
    sample = a["sample"]
    timestep = torch.as_tensor(a["timestep"], dtype=torch.float32).reshape(-1).expand(sample.shape[0]).contiguous()
    inputs = {"sample": sample, "timestep": timestep, "encoder_hidden_states": a["encoder_hidden_states"]}
    if a.get("timestep_cond") is not None:
        inputs["timestep_cond"] = a["timestep_cond"]
    added = dict(a.get("added_cond_kwargs") or {})
    for name in ("text_embeds", "time_ids"):
        if name in added:
            inputs[name] = added.pop(name)
    for i, residual in enumerate(a.get("down_block_additional_residuals") or ()):
        inputs[f"down_residual_{i}"] = residual
    if a.get("mid_block_additional_residual") is not None:
        inputs["mid_residual"] = a["mid_block_additional_residual"]
    scale = (a.get("cross_attention_kwargs") or {}).get("scale", 1.0)
    rest = {k: v for k, v in a.items() if k not in ("cross_attention_kwargs", "added_cond_kwargs", "return_dict")}
    _unused("the UNet", {**rest, **extra, "added_cond_kwargs": added, "lora scale": None if scale == 1.0 else scale},
            {"sample", "timestep", "encoder_hidden_states", "timestep_cond", "down_block_additional_residuals",
             "mid_block_additional_residual"})  # fmt: skip

    def rebuild(outputs):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=outputs[0]) if a.get("return_dict", True) else (outputs[0],)

    return Call(inputs, rebuild)


def unet_forward(module, named: dict[str, Any]):
    added = {k: named[k] for k in ("text_embeds", "time_ids") if k in named}
    down = tuple(named[k] for k in sorted((k for k in named if k.startswith("down_residual_")), key=lambda k: int(k.rsplit("_", 1)[1])))
    return type(module).forward(
        module, named["sample"], named["timestep"], named["encoder_hidden_states"],
        timestep_cond=named.get("timestep_cond"), added_cond_kwargs=added or None,
        down_block_additional_residuals=down or None, mid_block_additional_residual=named.get("mid_residual"),
        return_dict=False,
    )  # fmt: skip


def coder_call(module, args, kwargs) -> Call:
    a = _bound(module, args, kwargs)
    _unused("the VAE", a, {"sample"})
    return Call({"sample": a["sample"]}, lambda outputs: outputs[0])


def coder_forward(module, named: dict[str, Any]):
    return (type(module).forward(module, named["sample"]),)


def text_call(module, args, kwargs) -> Call:
    import importlib

    a = _bound(module, args, kwargs)
    extra = dict(a.pop("kwargs", {}) or {})
    hidden = bool(extra.pop("output_hidden_states", False))
    as_dict = extra.pop("return_dict", True) is not False
    _unused("the text encoder", {**a, **extra}, {"input_ids", "attention_mask"})
    inputs = {"input_ids": a["input_ids"]}
    if a.get("attention_mask") is not None:
        inputs["attention_mask"] = a["attention_mask"]
    path, (first, second) = TEXT_OUTPUTS[type(module).__name__]
    module_name, _, class_name = path.rpartition(".")
    output_class = getattr(importlib.import_module(module_name), class_name)

    def rebuild(outputs):
        out = output_class(**{first: outputs[0], second: outputs[1], "hidden_states": tuple(outputs[2:]) if hidden else None})
        return out if as_dict else out.to_tuple()

    return Call(inputs, rebuild)


def text_forward(module, named: dict[str, Any]):
    out = type(module).forward(module, named["input_ids"], attention_mask=named.get("attention_mask"), output_hidden_states=True)
    return (out[0], out[1], *out.hidden_states)


KINDS = {"unet": (unet_call, unet_forward), "coder": (coder_call, coder_forward), "text": (text_call, text_forward)}


def targets(pipe) -> list[tuple[str, Any, str]]:
    """(name, module, kind) of what runs in OpenVINO: the UNet, an AutoencoderKL's encoder and decoder (a tiny VAE
    stays in torch), and CLIP text encoders."""
    from diffusers import AutoencoderKL

    found = [("unet", pipe.unet, "unet")]
    if isinstance(pipe.vae, AutoencoderKL):
        found += [("vae_decoder", pipe.vae.decoder, "coder"), ("vae_encoder", pipe.vae.encoder, "coder")]
    for name in ("text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None and type(module).__name__ in TEXT_OUTPUTS:
            found.append((name, module, "text"))
    return found


# --- conversion and the replaced forward ---------------------------------------------------------------------------


def _core(module, names: list[str], forward):
    """A torch module taking the flattened inputs positionally (what convert_model traces)."""
    import torch

    class Core(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *tensors):
            return forward(self.inner, dict(zip(names, tensors, strict=True)))

    return Core()


def _ov_type(tensor):
    import openvino as ov
    import torch

    return {torch.int64: ov.Type.i64, torch.int32: ov.Type.i32}.get(tensor.dtype, ov.Type.f32)


def convert(module, call: Call, forward):
    """`openvino.convert_model` of the module's class forward with static input shapes (tracer chatter silenced)."""
    import openvino as ov
    import torch

    names = list(call.inputs)
    example = tuple(t.float() if t.is_floating_point() else t for t in call.inputs.values())
    spec = [(list(t.shape), _ov_type(t)) for t in example]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = ov.convert_model(_core(module, names, forward), example_input=example, input=spec)
    for port, name in zip(model.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    return model


class Forward:
    """The replacement forward of one module: flatten, get the compiled graph for the signature, run, rebuild."""

    def __init__(self, name: str, module, kind: str, identity: dict[str, Any], store: dict, config: dict[str, Any], device: str):
        self.name, self.module, self.identity, self.store, self.config, self.device = name, module, identity, store, config, device
        self.flatten, self.traced = KINDS[kind]

    def compiled(self, call: Call):
        signature = [[n, list(t.shape), str(t.dtype).removeprefix("torch.")] for n, t in call.inputs.items()]
        key = {**self.identity, "module": self.name, "inputs": signature, "options": list(call.options)}
        store_key = (ov_cache.key_hash(key), self.device)
        if store_key not in self.store:
            shapes = " ".join("x".join(map(str, s)) for _, s, _ in signature)
            entry = ov_cache.entry_for(key, lambda: convert(self.module, call, self.traced), f"{self.name} ({shapes})")
            self.store[store_key] = ov_cache.compile_entry(entry, self.device, self.config)
        return self.store[store_key]

    def __call__(self, *args, **kwargs):
        import numpy as np
        import torch

        call = self.flatten(self.module, args, kwargs)
        compiled = self.compiled(call)
        feed = {n: t.detach().float().numpy() if t.is_floating_point() else t.detach().numpy() for n, t in call.inputs.items()}
        result = compiled(feed)
        dtype = next((t.dtype for t in call.inputs.values() if t.is_floating_point()), torch.float32)
        outputs = [torch.from_numpy(np.array(result[port])).to(dtype) for port in compiled.outputs]
        return call.rebuild(outputs)


# --- one job -------------------------------------------------------------------------------------------------------


def identity(recipe, model, pipe, refs=None) -> dict[str, Any]:
    """What the converted weights depend on besides the module and its inputs (see ov_cache's key)."""
    import openvino as ov

    from sdkit.models import content_hash

    loras = getattr(refs, "loras", recipe.lora)
    embeddings = getattr(refs, "embeddings", recipe.embedding)
    vae = getattr(refs, "vae", None)
    weights = model.sha256 if model.sha256 and (vae is None or vae.sha256) else _weights_hash(pipe)
    return {
        "model": [weights, getattr(model, "config", None), [vae.location, vae.sha256] if vae else None],
        "loras": [[content_hash(Path(lora.path)), lora.weight] for lora in loras],
        "embeddings": [[content_hash(Path(emb.path)), emb.token] for emb in embeddings],
        "precision": HINTS[recipe.dtype],
        "graph": [recipe.fuse_qkv, recipe.attention_slicing],
        "openvino": ov.get_version(),
    }


def _weights_hash(pipe) -> str:
    """sha256 of the loaded weights, for a model with no file hash (a hub id)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        for key, tensor in (module.state_dict().items() if module is not None else ()):
            digest.update(key.encode() + tensor.detach().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def compile_config(recipe) -> dict[str, Any]:
    import torch

    if ov_device(recipe) != "CPU":
        return {"INFERENCE_PRECISION_HINT": HINTS[recipe.dtype]}
    return {"INFERENCE_PRECISION_HINT": HINTS[recipe.dtype], "INFERENCE_NUM_THREADS": torch.get_num_threads()}


@contextlib.contextmanager
def converted(pipe, recipe, model, store: dict, refs=None):
    """The pipeline's modules running in OpenVINO while the context is open (their own forward afterwards)."""
    ident, config, device = identity(recipe, model, pipe, refs), compile_config(recipe), ov_device(recipe)
    patched = []
    try:
        for name, module, kind in targets(pipe):
            module.forward = Forward(name, module, kind, ident, store, config, device)
            patched.append(module)
        yield pipe
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
