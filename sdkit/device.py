"""Device, dtype and offload placement, through accelerate.

`auto` asks accelerate's `PartialState` for the device, so under `accelerate launch` each process gets its own GPU.
Nothing is cached at module level: every call resolves afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdkit.errors import UserError

if TYPE_CHECKING:
    import torch

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    offload: str

    @property
    def dtype_name(self) -> str:
        return next(k for k, v in DTYPES.items() if v == str(self.dtype).removeprefix("torch."))


def process_state():
    """accelerate's per-process state. Without CUDA it is asked for CPU explicitly: under `accelerate launch` that is
    what makes several CPU processes join one gloo group (otherwise each would run alone)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available() and not torch.backends.mps.is_available())


def resolve(device: str = "auto", dtype: str = "auto", offload: str = "none") -> Placement:
    """Turn the user's device/dtype/offload words into torch objects, or raise a UserError saying what to change."""
    import torch

    if device == "auto":
        dev = process_state().device
    else:
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"--device {device}: no CUDA GPU is visible to torch; use --device auto or cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0..")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise UserError("--device mps: MPS is not available on this machine; use --device auto or cpu")

    if dtype == "auto":
        dtype = "fp32" if dev.type == "cpu" else "fp16"
    if dtype == "fp16" and dev.type == "cpu":
        raise UserError("--dtype fp16 on cpu is not supported (very slow, often NaN): use --dtype bf16 or fp32")
    if dtype == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--dtype bf16: {torch.cuda.get_device_name(dev)} has no bf16 support; use --dtype fp16")
    if offload != "none" and dev.type == "cpu":
        raise UserError(f"--offload {offload} moves weights between CPU and an accelerator; on cpu use --offload none")
    return Placement(dev, getattr(torch, DTYPES[dtype]), offload)


def place(pipe, placement: Placement):
    """Move a pipeline to its device, or set up diffusers' CPU offload hooks."""
    if placement.offload == "model":
        pipe.enable_model_cpu_offload(device=placement.device)
    elif placement.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=placement.device)
    else:
        pipe.to(placement.device)
    return pipe
