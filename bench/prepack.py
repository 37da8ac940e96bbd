"""Prepacked convolutions on CPU: oneDNN's blocked weight layout made once, not on every call. A candidate of
bench/cpu_compute.py that sdkit did not adopt.

In eager PyTorch a CPU convolution reorders its weight into oneDNN's blocked layout on every call. Where the weight is
large and the activation small (the UNet's 1280/2560-channel layers at 8x8-16x16 latents), that reorder costs more than
the convolution: a 2560->1280 3x3 convolution on a 4x4 batch-2 input ran at 49 GFLOP/s eager against 393 GFLOP/s
prepacked (bf16, one thread). Prepacking (`torch._C._nn.mkldnn_reorder_conv2d_weight`, what torch.utils.mkldnn's
MkldnnConv2d and inductor's freezing do) gives the same output, but on a whole SD 1.5 UNet step at 512 px it measured
0.92x (interleaved A/B), 0.97x and 1.10x (two bench runs) on one thread, 1.17x slower on two threads, and the VAE
decode 1.28x slower; on a quiet machine (2026-11-30) 0.83x on two threads and 0.93x on one at 512 px, but 1.01x / 1.31x
at 256 px and the VAE decode 1.35x slower: no reliable gain, so it is not an sdkit option. Layers whose activation outweighs the weight keep
the eager path (converting a large activation to oneDNN's layout and back costs more than it saves).
"""

from __future__ import annotations

import torch


class PackedConv2d(torch.nn.Conv2d):
    """nn.Conv2d that runs on a prepacked oneDNN weight when that is the faster path (CPU, no grad, small input)."""

    _packed: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None  # (what it was made from, weight, bias)

    def packs_for(self, x: torch.Tensor) -> bool:
        """Prepacking pays when the weight (out x in x k x k) outweighs the activation (batch x in x H x W)."""
        kernel = self.kernel_size[0] * self.kernel_size[1]
        return (
            x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and x.dtype == self.weight.dtype
            and self.out_channels * kernel >= x.shape[0] * x.shape[-2] * x.shape[-1]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not self.packs_for(x):
            return super().forward(x)
        source = (self.weight.data_ptr(), self.weight.dtype, self.weight._version)  # moved, cast or copied into: repack
        if self._packed is None or self._packed[0] != source:
            weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.detach().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups
            )
            bias = self.bias.detach().to_mkldnn() if self.bias is not None else None
            self._packed = (source, weight, bias)
        _, weight, bias = self._packed
        out = torch.mkldnn_convolution(
            x.to_mkldnn(), weight, bias, self.padding, self.stride, self.dilation, self.groups
        )
        memory_format = (
            torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        )
        return out.to_dense().contiguous(memory_format=memory_format)


def prepack_convolutions(model: torch.nn.Module) -> int:
    """Turn every plain zero-padded fp32/bf16 nn.Conv2d of `model` into a PackedConv2d in place; how many."""
    count = 0
    for module in model.modules():
        if (
            type(module) is torch.nn.Conv2d
            and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)  # "same"/"valid" strings: not what the oneDNN op takes
            and module.weight.dtype in (torch.float32, torch.bfloat16)
        ):
            module.__class__ = PackedConv2d
            count += 1
    return count


def unpack_convolutions(model: torch.nn.Module) -> None:
    """Undo `prepack_convolutions`: plain nn.Conv2d layers again, packed copies freed."""
    for module in model.modules():
        if isinstance(module, PackedConv2d):
            vars(module).pop("_packed", None)  # the plain class carries no attribute of ours
            module.__class__ = torch.nn.Conv2d

