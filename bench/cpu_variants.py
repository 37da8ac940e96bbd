"""How a CPU fast-path variant of SD 1.5's UNet step is set up and run: the settings (`Variant`), the step with them
applied and undone (`Applied`), and the step's inputs. Shared by bench/cpu_compute.py (timing, quality) and
bench/cpu_limits.py (what limits the recommended path).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from bench.prepack import prepack_convolutions, unpack_convolutions


def unet_inputs(size: int, batch: int = 2, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(size)
    latents = torch.randn(batch, 4, size // 8, size // 8, generator=gen)
    text = torch.randn(batch, 77, 768, generator=gen)
    return latents.to(device), torch.full((batch,), 500, device=device), text.to(device)


@dataclass(frozen=True)
class Variant:
    name: str
    bf16_weights: bool = False
    autocast: bool = False  # bf16 autocast over fp32 weights
    onednn_bf16: bool = False  # fp32 weights, oneDNN allowed to compute fp32 matmul/conv in bf16
    channels_last: bool = False
    prepack: bool = False  # bench.prepack: oneDNN weights packed once per layer (not adopted by sdkit)
    attention: str = "default"  # default (diffusers: SDPA) | classic (AttnProcessor: bmm + softmax)
    threads: int | None = None  # None: torch's default
    compile: bool = False
    sizes: tuple[int, ...] = (512, 256)

    @property
    def compute_dtype(self) -> str:
        return "bf16" if self.bf16_weights or self.autocast or self.onednn_bf16 else "fp32"


class Applied:
    """A variant's settings on the shared fp32/bf16 UNets, undone on exit."""

    def __init__(self, variant: Variant, fp32_unet, bf16_unet):
        self.v, self.unet = variant, bf16_unet if variant.bf16_weights else fp32_unet

    def __enter__(self):
        from diffusers.models.attention_processor import AttnProcessor

        self.threads = torch.get_num_threads()
        self.precision = torch.backends.mkldnn.fp32_precision
        if self.v.threads:
            torch.set_num_threads(self.v.threads)
        if self.v.onednn_bf16:
            torch.backends.mkldnn.fp32_precision = "bf16"
        if self.v.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if self.v.prepack:
            prepack_convolutions(self.unet)
        if self.v.attention == "classic":
            self.processors = self.unet.attn_processors
            self.unet.set_attn_processor(AttnProcessor())
        if self.v.compile:  # freezing: weights become constants, prepacked for oneDNN (inductor's CPU inference mode)
            import torch._inductor.config as inductor

            self.freezing, inductor.freezing = inductor.freezing, True
        model = torch.compile(self.unet) if self.v.compile else self.unet
        dtype = torch.bfloat16 if self.v.bf16_weights else torch.float32
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.v.autocast else nullcontext()
        fmt = torch.channels_last if self.v.channels_last else torch.contiguous_format

        def step(latents, t, text):
            with torch.inference_mode(), autocast:
                x = latents.to(dtype).contiguous(memory_format=fmt)
                return model(x, t, encoder_hidden_states=text.to(dtype)).sample.float()

        return step

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        torch.backends.mkldnn.fp32_precision = self.precision
        if self.v.channels_last:
            self.unet.to(memory_format=torch.contiguous_format)
        if self.v.prepack:
            unpack_convolutions(self.unet)
        if self.v.attention == "classic":
            self.unet.set_attn_processor(self.processors)
        if self.v.compile:
            import torch._inductor.config as inductor

            inductor.freezing = self.freezing
            torch._dynamo.reset()
