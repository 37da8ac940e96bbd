"""`--fast`: the best measured combination of speed settings for the device, in ONE literal table (`PRESETS`).

A preset only fills in what the user left open: `dtype` when it is "auto", and switches that are off (it never turns
one off). `resolve` returns the recipe with the preset written into its fields, so the image's embedded recipe names
every setting that was used and `sdkit replay` reproduces it exactly (a replayed recipe already holds the resolved
values: the preset then changes nothing). Edit the table when a benchmark says otherwise; README.md ("Speed") lists
what was measured.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from sdkit.errors import UserError

# Device kind -> recipe fields the preset sets. Measured by bench/gpu.py (CUDA) and bench/cpu_compute.py (CPU).
PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType({
    # fp16 weights, channels-last UNet, fused QKV; attention stays on torch SDPA (diffusers' default processor)
    "cuda": MappingProxyType({"dtype": "fp16", "channels_last": True, "fuse_qkv": True}),
    "mps": MappingProxyType({"dtype": "fp16"}),  # not measured: what auto already picks there
    # CPUs with native bf16 (AVX512-BF16 or AMX), bench/cpu_compute.py at 512 px: SD 1.5 UNet CFG step 0.57x of fp32 in
    # bf16, 0.44x in bf16 + channels_last (57 dB PSNR); VAE decode 0.46x -> 0.20x. Autocast was slower than bf16 weights.
    # Prepacked oneDNN convolution weights (bench/prepack.py) were measured and left out: 0.92-1.10x per UNet step on one
    # thread, 1.17x slower on two, the VAE 1.28x slower.
    "cpu-bf16": MappingProxyType({"dtype": "bf16", "channels_last": True}),
    # AVX512-BF16 CPUs without AMX, with the openvino extra installed: the UNet, VAE and text encoder converted to
    # OpenVINO with its bf16 hint (sdkit/backends). SD 1.5 UNet CFG step at 512 px on a Zen 4 box (AVX512-BF16, no
    # AMX): 5.5 s against 8.0 s for the torch row (1.45x; issue 27). On AMX CPUs torch's bf16 row is as fast:
    # bench/openvino.py on this project's quiet AMX Xeon, 3 alternated rounds: 512 px 2.72 s both (1.00x), 256 px
    # 0.82 s against 0.99 s (1.21x), and each new size and LoRA set costs a 75-95 s conversion; so AMX keeps torch.
    "cpu-bf16-openvino": MappingProxyType({"backend": "openvino", "dtype": "bf16"}),
    # other CPUs: fp32 is the fastest precision; nothing else measured faster
    "cpu": MappingProxyType({}),
})  # fmt: skip
NOT_WITH_FUSED_QKV = ("lora", "attention_slicing")  # a LoRA on to_q/to_k/to_v is bypassed by the fused projection


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX-BF16, as /proc/cpuinfo reports)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX512" not in capability and "AMX" not in capability:
        return False
    flags = cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_amx() -> bool:
    """True when the CPU has AMX-BF16 tiles (as /proc/cpuinfo reports), where torch's oneDNN bf16 kernels use them."""
    return "amx_bf16" in cpuinfo()


def cpuinfo() -> str:
    """/proc/cpuinfo's text ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def device_kind(device_type: str, recipe=None) -> str:
    """The PRESETS row for a torch device type (and a recipe: the OpenVINO row only on native-bf16 CPUs without AMX,
    where it measured faster, and only where it can run that recipe)."""
    if device_type == "cpu":
        if not cpu_has_native_bf16():
            return "cpu"
        if recipe is not None and not cpu_has_amx() and openvino_fits(recipe):
            return "cpu-bf16-openvino"
        return "cpu-bf16"
    return device_type if device_type in PRESETS else "cpu"


def openvino_fits(recipe) -> bool:
    """Whether --fast may pick the OpenVINO backend: the recipe leaves the backend open (or asks for it), the extra is
    installed and nothing in the recipe is refused by it."""
    from sdkit import backends

    if getattr(recipe, "backend", "torch") not in ("auto", "openvino"):
        return False
    try:
        backends.check(recipe.model_copy(update={"backend": "openvino"}))
    except UserError:
        return False
    return True


def preset_for(recipe, device_type: str) -> dict[str, Any]:
    """The fields `--fast` changes on this recipe and device (empty when fast is off or nothing is left open)."""
    if not getattr(recipe, "fast", False):
        return {}
    changes = {}
    for name, value in PRESETS[device_kind(device_type, recipe)].items():
        if name in ("dtype", "backend"):
            if getattr(recipe, name) == "auto":
                changes[name] = value
        elif name == "fuse_qkv" and any(getattr(recipe, other, None) for other in NOT_WITH_FUSED_QKV):
            continue  # would break the LoRA / the slicing: fast skips it
        elif value and not getattr(recipe, name):
            changes[name] = value
    return changes


def resolve(recipe):
    """The recipe with `--fast` written into its fields for the device it will run on; checks the combination."""
    from sdkit import backends, device

    check_combination(recipe)
    if recipe.fast:
        device_type = device.resolve(recipe.device, backends.torch_dtype(recipe), recipe.offload).device.type
        changes = preset_for(recipe, device_type)
        recipe = recipe.model_copy(update=changes) if changes else recipe
    return backends.resolve(recipe)  # the backend written out (auto -> torch; openvino: its device and precision)


def check_combination(recipe) -> None:
    """One-line UserErrors for switches that cannot work together."""
    if recipe.fuse_qkv:
        clash = [name for name in NOT_WITH_FUSED_QKV if getattr(recipe, name, None)]
        if clash:
            flag = "--" + clash[0].replace("_", "-")
            raise UserError(f"--fuse-qkv with {flag}: fused projections bypass what {flag} changes; drop one of them")
