"""bench/prepack.py (a candidate of bench/cpu_compute.py): prepacked oneDNN convolutions compute what nn.Conv2d
computes, repack when weights change, and fall back where they would not pay."""

from __future__ import annotations

import pytest
import torch

from bench.prepack import PackedConv2d, prepack_convolutions, unpack_convolutions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stride,bias,channels_last", [(1, True, True), (2, False, False), (1, True, False)])
def test_packed_conv_equals_conv(dtype: torch.dtype, stride: int, bias: bool, channels_last: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(16, 24, 3, stride=stride, padding=1, bias=bias).to(dtype).eval()
    x = torch.randn(2, 16, 4, 4, generator=gen).to(dtype)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = conv(x)
        holder = torch.nn.Sequential(conv)
        assert prepack_convolutions(holder) == 1 and isinstance(holder[0], PackedConv2d)
        assert holder[0].packs_for(x)  # 24 x 9 weights per pixel > 2 x 4 x 4 pixels: the packed path
        got = holder[0](x)
    assert holder[0]._packed is not None  # it really ran packed
    torch.testing.assert_close(
        got, expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-2 if dtype == torch.bfloat16 else 1e-5
    )
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    unpack_convolutions(holder)
    assert type(holder[0]) is torch.nn.Conv2d and "_packed" not in vars(holder[0])


def test_large_inputs_and_training_keep_the_eager_path() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1))
    prepack_convolutions(conv)
    big = torch.randn(1, 4, 16, 16)  # 4 x 9 < 256 pixels: repacking the activation would cost more
    with torch.no_grad():
        conv(big)
    assert conv[0]._packed is None
    small = torch.randn(1, 4, 2, 2, requires_grad=True)
    conv(small).sum().backward()  # with gradients: the eager op, so autograd works
    assert conv[0]._packed is None and small.grad is not None


def test_weight_changes_repack() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1)).eval()
    prepack_convolutions(conv)
    x = torch.randn(1, 8, 2, 2)
    with torch.no_grad():
        conv(x)
        conv[0].weight.copy_(conv[0].weight * 2)  # an in-place copy (load_state_dict) bumps the version: detected
        torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv[0].weight, conv[0].bias, padding=1))
