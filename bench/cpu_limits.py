"""What limits the recommended CPU fast path: the UNet step's time by operation class (torch.profiler, self CPU time)
against that class's FLOPs (FlopCounterMode on the meta device), as a fraction of the measured matmul peak.

Classes: convolution (oneDNN), attention (the SDPA kernel; its FLOPs are the classic processor's two batched
matmuls), linear (the projections and feed-forwards: mm/addmm), rest (norms, activations, adds, copies: no FLOPs
counted). A class far below the peak, with a large share of the time, is what keeps the step from the goal.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch

BENCH = "cpu_compute"
CLASSES = ("convolution", "attention", "linear", "rest")


def op_class(name: str) -> str:
    """The class of a profiler event or aten op name."""
    if "convolution" in name:
        return "convolution"
    if "scaled_dot_product" in name or "bmm" in name:  # the SDPA kernel; the classic processor's bmm/baddbmm
        return "attention"
    if name.replace("::", ".").split(".")[1:2] in (["mm"], ["addmm"]):  # "aten::mm", "aten.mm", "aten.mm.default"
        return "linear"
    return "rest"


def flops_by_class(unet, inputs: tuple) -> dict[str, int]:
    """FLOPs of `unet(*inputs)` per class, counted on a meta-device copy (no compute) with the classic attention
    processor, whose batched matmuls FlopCounterMode counts (it does not count the CPU SDPA kernel)."""
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(unet).to("meta")
    meta.set_attn_processor(AttnProcessor())
    latents, t, text = (x.to("meta") for x in inputs)
    with FlopCounterMode(display=False) as counter:
        meta(latents.to(meta.dtype), t, encoder_hidden_states=text.to(meta.dtype))
    found: dict[str, int] = defaultdict(int)
    for op, count in counter.get_flop_counts()["Global"].items():
        found[op_class(str(op))] += count
    return dict(found)


def seconds_by_class(variant, fp32_unet, inputs: tuple) -> dict[str, float]:
    """Self CPU seconds per class of one profiled step of `variant` on `fp32_unet` (after one warm-up step)."""
    from bench.cpu_variants import Applied
    from bench.sd_configs import cast

    bf16 = cast(copy.deepcopy(fp32_unet), torch.bfloat16) if variant.bf16_weights else fp32_unet
    with Applied(variant, fp32_unet, bf16) as step:
        step(*inputs)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(*inputs)
    found: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        found[op_class(event.key)] += event.self_cpu_time_total / 1e6
    return dict(found)


def breakdown(variant, size: int, peak: float, label: str):
    """Figures for SD 1.5's UNet at `size` px: each class's share of the step and its GFLOP/s as a fraction of `peak`."""
    from bench.common import Figure
    from bench.cpu_variants import unet_inputs
    from bench.sd_configs import build_unet

    unet, inputs = build_unet("sd15"), unet_inputs(size)
    flops, seconds = flops_by_class(unet, inputs), seconds_by_class(variant, unet, inputs)
    total = sum(seconds.values())
    figures = []
    for name in CLASSES:
        spent, work = seconds.get(name, 0.0), flops.get(name, 0)
        rate = f"{work / 1e9:.0f} GFLOP at {work / spent / 1e9:.0f} GFLOP/s = {work / spent / 1e9 / peak:.0%} of peak" if work and spent else "no FLOPs counted"
        figures.append(Figure(BENCH, f"{label}: {name} share of the step", 100 * spent / total, "%", "reference (what limits it)",
                              None, f"{spent:.2f} of {total:.2f} s profiled; {rate} ({size} px, batch 2)"))  # fmt: skip
    return figures
