"""bench/sd_configs.py, bench/cpu_compute.py helpers and bench/gpu.py end to end (tiny model, CPU). No timing asserts."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import cpu_compute, cpu_limits, cpu_variants, gpu, sd_configs


def test_sd15_unet_config_matches_published_parameter_count():
    unet = sd_configs.build_unet("sd15", device="meta")
    assert sd_configs.parameter_count(unet) == 859_520_964  # SD 1.5's UNet: 859.52 M
    assert not unet.training


def test_sdxl_unet_parameter_count_without_allocating():
    unet = sd_configs.build_unet("sdxl", device="meta")
    assert next(unet.parameters()).is_meta
    assert sd_configs.parameter_count(unet) == 2_567_463_684  # SDXL base UNet: 2.567 B


def test_vae_builds_with_random_weights_in_the_given_dtype():
    vae = sd_configs.build_vae("sd15", dtype=torch.bfloat16)
    assert sd_configs.parameter_count(vae) == 83_653_863  # SD's AutoencoderKL: 83.65 M
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    again = sd_configs.build_vae("sd15", dtype=torch.bfloat16)
    assert torch.equal(vae.decoder.conv_out.weight, again.decoder.conv_out.weight)  # seeded
    assert sd_configs.parameter_count(sd_configs.build_taesd(device="meta")) == 2_445_063  # TAESD: 2.4 M


def test_sd15_unet_config_is_a_fresh_copy():
    config = sd_configs.sd15_unet_config()
    config["block_out_channels"][0] = 1
    assert sd_configs.sd15_unet_config()["block_out_channels"] == [320, 640, 1280, 1280]


def test_architectures_tie_text_encoders_to_the_unets():
    sd15, sdxl = sd_configs.architecture("sd15"), sd_configs.architecture("sdxl")
    assert sd15.text_encoder.hidden_size == 768 and sd15.text_encoder_2 is None and sd15.image_size == 512
    assert (sdxl.text_encoder.hidden_size, sdxl.text_encoder_2.hidden_size) == (768, 1280)
    assert sdxl.text_encoder_2.projection_dim == 1280 and sdxl.image_size == 1024
    with pytest.raises(ValueError):
        sd_configs.architecture("sd3")


def test_psnr_on_known_inputs():
    ref = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert cpu_compute.psnr(ref, ref) == math.inf
    assert cpu_compute.psnr(ref, ref + 0.1, peak=1.0) == pytest.approx(20.0)  # mse 0.01
    assert cpu_compute.psnr(2 * ref, 2 * ref + 0.1) == pytest.approx(10 * math.log10(4 / 0.01))  # peak = range 2
    assert cpu_compute.psnr(ref, ref + 0.01, peak=1.0) > cpu_compute.psnr(ref, ref + 0.1, peak=1.0)


def test_flop_counting_and_peak_arithmetic():
    a, b = torch.ones(4, 5), torch.ones(5, 6)
    assert cpu_compute.count_flops(lambda: a @ b) == 2 * 4 * 5 * 6
    assert cpu_compute.matmul_gflops(1000, 2.0) == pytest.approx(1.0)
    assert 0 < cpu_compute.matmul_peak(torch.float32, n=64, repeats=2) < math.inf
    threads = torch.get_num_threads()
    peaks = cpu_compute.measure_peaks((1, 2), n=64)
    assert set(peaks) == {("fp32", 1), ("bf16", 1), ("fp32", 2), ("bf16", 2)} and min(peaks.values()) > 0
    assert torch.get_num_threads() == threads


def test_unet_flops_match_the_published_figure():
    flops = cpu_compute.unet_flops(512)  # batch 2: one CFG step
    assert flops / 2 / 1e9 == pytest.approx(803, rel=0.01)  # SD 1.5 UNet: ≈ 803 GFLOP per sample at 512 px
    assert cpu_compute.unet_flops(256) < flops / 4 + flops / 20  # ~∝ pixels (attention a little more)


def test_variant_settings_are_undone_and_bf16_holds_quality():
    from sdkit.architectures import build_components

    fp32 = build_components("tiny-sd")["unet"].requires_grad_(False)
    bf16 = sd_configs.cast(build_components("tiny-sd")["unet"], torch.bfloat16)
    processors = {k: type(v) for k, v in fp32.attn_processors.items()}
    threads, precision = torch.get_num_threads(), torch.backends.mkldnn.fp32_precision
    inputs = (torch.randn(2, 4, 16, 16), torch.tensor([500, 500]), torch.randn(2, 77, 32))
    outputs = {}
    for v in (cpu_variants.Variant("ref"), cpu_variants.Variant("classic", attention="classic", channels_last=True, threads=1),
              cpu_variants.Variant("bf16", bf16_weights=True, channels_last=True, onednn_bf16=True)):  # fmt: skip
        with cpu_variants.Applied(v, fp32, bf16) as step:
            outputs[v.name] = step(*inputs)
        assert {k: type(p) for k, p in fp32.attn_processors.items()} == processors
        assert (torch.get_num_threads(), torch.backends.mkldnn.fp32_precision) == (threads, precision)
        assert fp32.conv_in.weight.is_contiguous() and bf16.conv_in.weight.is_contiguous()
    assert cpu_compute.psnr(outputs["ref"], outputs["classic"]) > 80  # same math, other kernels
    assert cpu_compute.QUALITY_DB < cpu_compute.psnr(outputs["ref"], outputs["bf16"]) < 80  # bf16: close, not equal


def test_limits_split_a_step_by_operation_class():
    from sdkit.architectures import build_components

    assert [cpu_limits.op_class(n) for n in ("aten::mkldnn_convolution", "aten.convolution.default",
            "aten::_scaled_dot_product_flash_attention_for_cpu", "aten.baddbmm", "aten::addmm", "aten.mm.default",
            "aten::native_group_norm", "aten::copy_")] == ["convolution", "convolution", "attention", "attention",
                                                           "linear", "linear", "rest", "rest"]  # fmt: skip
    unet = build_components("tiny-sd")["unet"].requires_grad_(False)
    inputs = (torch.randn(2, 4, 16, 16), torch.tensor([500, 500]), torch.randn(2, 77, 32))
    flops = cpu_limits.flops_by_class(unet, inputs)
    assert {"convolution", "attention", "linear"} <= set(flops) and min(flops.values()) > 0
    variant = cpu_variants.Variant("bf16", bf16_weights=True, channels_last=True, threads=1)
    seconds = cpu_limits.seconds_by_class(variant, unet, inputs)
    assert {"convolution", "attention", "linear", "rest"} <= set(seconds) and min(seconds.values()) > 0
    assert unet.conv_in.weight.dtype == torch.float32 and unet.conv_in.weight.is_contiguous()  # the variant was undone


def test_recommendation_is_the_fastest_variant_that_holds_quality():
    rows = [cpu_compute.Measured("unet 512px default", 10.0, 10.0, 1, "fp32", 2, math.inf, ""),
            cpu_compute.Measured("unet 512px lossy", 2.0, 10.0, 1, "bf16", 2, 12.0, ""),
            cpu_compute.Measured("unet 512px bf16", 5.0, 10.0, 1, "bf16", 1, 45.0, ""),
            cpu_compute.Measured("unet 512px bf16 + prepacked convs", 4.0, 10.0, 1, "bf16", 1, 45.0, ""),
            cpu_compute.Measured("unet 256px bf16 faster", 1.0, 3.0, 1, "bf16", 1, 45.0, "")]  # fmt: skip
    figure = cpu_compute.recommend(rows, 512)
    assert figure.value == pytest.approx(0.5) and figure.detail.startswith("unet 512px bf16:")
    assert figure.met is False
    peaks = {("bf16", 1): 0.4e-9, ("bf16", 2): 1.0}  # the 1-thread peak applies: 1 FLOP in 5 s at 0.4 FLOP/s = 50 %
    shown = cpu_compute.figure(rows[2], peaks)
    assert "0.50× default · 50% of bf16 peak (1 thr) · PSNR 45.0 dB" in shown.detail and shown.met is False


def test_gpu_script_runs_end_to_end_on_cpu_with_the_tiny_model(tmp_path):
    results = tmp_path / "results"
    path = gpu.main(["--model", "tiny", "--steps", "2", "--repeats", "1", "--out", str(tmp_path / "work"),
                     "--results", str(results)])  # fmt: skip
    assert path == results / "results.md"
    data = json.loads((results / "results.json").read_text())
    names = {f["name"]: f for f in data["figures"]}
    default, fast = names["tiny 32px 2 steps diffusers default"], names["tiny 32px 2 steps sdkit fast"]
    assert default["value"] > 0 and fast["value"] > 0 and fast["met"] is None
    from sdkit import fast as fast_table
    from sdkit.schema.generate import GenerateRecipe

    resolved = fast_table.resolve(GenerateRecipe(prompt="x", device="cpu", fast=True, backend="torch"))  # torch's row
    assert f"backend {resolved.backend}, dtype {resolved.dtype}, channels_last {resolved.channels_last}" in fast["detail"]
    assert "it/s" in fast["detail"]
    assert "tiny 32px 2 steps sdkit per-call overhead" in names
    images = sorted((tmp_path / "work" / "images").rglob("*.png"))
    assert len([p for p in images if p.name.startswith("diffusers-")]) == 2
    assert len([p for p in images if "sdkit-tiny" in str(p)]) == 1 + 1 + 1 + 2 * 2  # warm-up, 1, 1, 2 × (1 + 1)
    assert "sdkit fast" in path.read_text()


def test_gpu_script_refuses_real_models_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(SystemExit, match="no CUDA"):
        gpu.run(["--model", "sd15"])
