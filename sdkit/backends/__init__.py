"""Inference backends for `sdkit generate`: `torch` (diffusers as loaded) or `openvino` (the UNet, the VAE encoder and
decoder and the text encoders converted with `openvino.convert_model`, compiled per input shape and cached on disk).

The backend swaps only the forward of those modules (`sdkit.backends.openvino`): schedulers, CFG, callbacks, NaN checks,
LoRAs (fused before conversion), embeddings and outputs stay diffusers' and sdkit's own Python, so every sampler works.
A recipe's `backend` is `auto` (torch, unless `--fast` picks openvino: sdkit/fast.py), `torch`, `openvino` or
`openvino:DEVICE` (OpenVINO's device names: `openvino:GPU`, `openvino:NPU` for Intel GPUs and NPUs; untested here).
"""

from __future__ import annotations

import contextlib
from typing import Any

from sdkit.errors import UserError

INSTALL = "pip install 'sdkit[openvino]'"


def is_openvino(recipe) -> bool:
    return getattr(recipe, "backend", "auto").startswith("openvino")


def ov_device(recipe) -> str:
    """The OpenVINO device of an openvino recipe: CPU, or what follows `openvino:`."""
    return recipe.backend.partition(":")[2] or "CPU"


def installed() -> bool:
    """Whether the openvino package imports (the `openvino` extra)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def check(recipe) -> None:
    """One-line UserErrors for an openvino recipe that cannot run: the extra missing, or a switch it cannot keep."""
    if not is_openvino(recipe):
        return
    flag = f"--backend {recipe.backend}"
    if not installed():
        raise UserError(f"{flag} needs the openvino package: {INSTALL} (or use --backend torch)")
    if recipe.device not in ("auto", "cpu"):
        raise UserError(f"{flag} with --device {recipe.device}: OpenVINO picks its own device (e.g. --backend openvino:GPU); "
                        "use --device cpu or auto")
    if recipe.compile:
        raise UserError(f"{flag} with --compile: the converted modules are already compiled by OpenVINO; drop --compile")
    if recipe.control:
        raise UserError(f"{flag} with --control: ControlNet is not converted to OpenVINO yet; use --backend torch for it")
    if recipe.dtype == "fp16" and ov_device(recipe) == "CPU":
        raise UserError(f"{flag} --dtype fp16 on CPU: use --dtype bf16 (native bf16 CPUs) or fp32")


def resolve(recipe):
    """The recipe with its backend written out: auto -> torch; openvino gets its device (cpu), its precision hint in
    `dtype` (bf16 on CPUs with native bf16, else fp32; fp16 on GPU/NPU) and `fuse_lora` (LoRAs, from --lora or the
    prompt, are fused before conversion)."""
    if getattr(recipe, "backend", None) is None:
        return recipe
    if not is_openvino(recipe):
        return recipe.model_copy(update={"backend": "torch"}) if recipe.backend == "auto" else recipe
    changes: dict[str, Any] = {"device": "cpu", "fuse_lora": True}
    if recipe.dtype == "auto":
        from sdkit.fast import cpu_has_native_bf16

        if ov_device(recipe) != "CPU":
            changes["dtype"] = "fp16"
        else:
            changes["dtype"] = "bf16" if cpu_has_native_bf16() else "fp32"
    return recipe.model_copy(update=changes)


def torch_dtype(recipe) -> str:
    """The dtype the torch modules load in: fp32 under openvino (the converted graphs get the precision as a hint)."""
    return "fp32" if is_openvino(recipe) else recipe.dtype


@contextlib.contextmanager
def applied(pipe, recipe, model, store: dict, refs=None):
    """For one job: the pipeline's modules running in the recipe's backend (nothing changes for torch). `store` keeps
    the compiled models of a run (sdkit.pipelines.PipelineCache.converted); `refs` (sdkit.adapter_refs.Refs, when
    given) names the LoRAs, embeddings and VAE actually applied, else the recipe's `lora` and `embedding`."""
    if not is_openvino(recipe):
        yield pipe
        return
    from sdkit.backends.openvino import converted

    with converted(pipe, recipe, model, store, refs):
        yield pipe
