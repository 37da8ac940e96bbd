"""Real-scale CPU compute: SD 1.5's UNet and VAE (published configs, random weights) in diffusers' default fp32 against
the candidate fast paths, with this machine's matmul peak measured in the same run.

One UNet step with classifier-free guidance = one forward pass at batch 2. Per variant: s/step (median), ratio to
diffusers' default (fp32, its default attention processor), fraction of the measured matmul peak of the variant's
compute dtype (FLOPs counted with torch's FlopCounterMode on the meta device), and PSNR of the output against fp32
for the same inputs (noise prediction: peak = the fp32 output's range; decoded image: [0, 1] pixels, peak 1).
A variant "holds quality" at ≥ QUALITY_DB; the recommendation is the fastest such variant at the largest size.
Peaks are measured per thread count (torch's default and 1): on a shared machine one busy core makes oneDNN's
multi-threaded kernels wait, so the thread setting is itself a variant. torch.compile (inductor with freezing) is
opt-in (--compile): its first call takes minutes. The recommended path's step is then profiled by operation class
(bench/cpu_limits.py): the time share and fraction of peak of convolutions, attention, linears and the rest.

    python -m bench.cpu_compute [--quick] [--compile] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.common import Figure, write_results
from bench.cpu_limits import breakdown, flops_by_class
from bench.cpu_variants import Applied, Variant, unet_inputs
from bench.prepack import prepack_convolutions, unpack_convolutions
from bench.sd_configs import build_taesd, build_unet, build_vae, cast

BENCH = "cpu_compute"
QUALITY_DB = 30.0  # PSNR against fp32 below which a variant does not hold output quality
GOAL = "≤ 0.33× diffusers default, ≥ 50 % of peak"


def psnr(reference: torch.Tensor, test: torch.Tensor, peak: float | None = None) -> float:
    """Peak signal-to-noise ratio of `test` against `reference` in dB; peak defaults to the reference's range."""
    ref, out = reference.double(), test.double()
    mse = torch.mean((ref - out) ** 2).item()
    if peak is None:
        peak = (ref.max() - ref.min()).item()
    if mse == 0:
        return math.inf
    return 10 * math.log10(peak**2 / mse)


def matmul_gflops(n: int, seconds: float) -> float:
    """GFLOP/s of an n×n by n×n matmul (2n³ floating-point operations) that took `seconds`."""
    return 2 * n**3 / seconds / 1e9


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of a large square torch.matmul in `dtype` on torch's current threads."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return matmul_gflops(n, best)


def measure_peaks(thread_counts: tuple[int, ...], n: int = 2048) -> dict[tuple[str, int], float]:
    """{(dtype, threads): matmul GFLOP/s} for fp32 and bf16 at each thread count."""
    before, peaks = torch.get_num_threads(), {}
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                peaks[(name, threads)] = matmul_peak(dtype, n)
    finally:
        torch.set_num_threads(before)
    return peaks


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def unet_flops(size: int, batch: int = 2) -> int:
    """FLOPs of one SD 1.5 UNet forward at `size` px and `batch`, counted on the meta device (no compute): the sum of
    bench.cpu_limits.flops_by_class."""
    unet = build_unet("sd15", device="meta")
    return sum(flops_by_class(unet, unet_inputs(size, batch, device="meta")).values())


def decoder_flops(vae, size: int) -> int:
    """FLOPs of decoding one `size` px image (counted on a meta-device copy: no compute)."""
    meta = copy.deepcopy(vae).to("meta")
    dtype = next(meta.parameters()).dtype
    return count_flops(lambda: meta.decode(torch.empty(1, 4, size // 8, size // 8, device="meta", dtype=dtype)))


def variants(compile_: bool) -> list[Variant]:
    found = [
        Variant("diffusers default (fp32, SDPA)"),
        Variant("fp32 classic attention", attention="classic", sizes=(256,)),
        Variant("fp32 channels_last", channels_last=True, sizes=(256,)),
        Variant("fp32 oneDNN bf16 math", onednn_bf16=True, sizes=(256,)),
        Variant("bf16 autocast", autocast=True, sizes=(256,)),
        Variant("bf16 weights", bf16_weights=True),
        Variant("fp32, 1 thread", threads=1, sizes=(256,)),
        Variant("bf16 weights + channels_last", bf16_weights=True, channels_last=True),
        Variant("bf16 weights + channels_last, 1 thread", bf16_weights=True, channels_last=True, threads=1),
        Variant("bf16 weights + channels_last + prepacked convs", bf16_weights=True, channels_last=True, prepack=True),
        Variant("bf16 weights + channels_last + prepacked convs, 1 thread", bf16_weights=True, channels_last=True,
                prepack=True, threads=1),
    ]
    if compile_:
        found.append(
            Variant(
                "bf16 + channels_last + torch.compile (freezing), 1 thread",
                bf16_weights=True,
                channels_last=True,
                threads=1,
                compile=True,
                sizes=(256,),
            )
        )
    return found


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, float, torch.Tensor]:
    """(first call's seconds, median of `repeats` further calls, last output)."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), out


def log(message: str) -> None:
    print(f"[cpu_compute] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Measured:
    name: str
    seconds: float
    base: float  # diffusers default's seconds for the same work
    flops: int
    dtype: str  # compute dtype: which peak applies
    threads: int
    quality: float | None  # PSNR vs fp32 (None: not comparable)
    detail: str


def figure(m: Measured, peaks: dict[tuple[str, int], float]) -> Figure:
    """The figure of one measurement; "% of peak" against the matmul peak of its dtype at its thread count."""
    ratio, fraction = m.seconds / m.base, m.flops / m.seconds / 1e9 / peaks[(m.dtype, m.threads)]
    quality = m.quality
    shown = "n/a" if quality is None else ("exact" if math.isinf(quality) else f"{quality:.1f} dB")
    # without a PSNR (a preview decoder) the goal does not apply: previews never become a default
    met = None if quality is None else ratio <= 0.33 and fraction >= 0.5 and quality >= QUALITY_DB
    return Figure(
        BENCH,
        m.name,
        m.seconds,
        "s",
        GOAL if quality is not None else "preview only (other network)",
        met,
        f"{ratio:.2f}× default · {fraction:.0%} of {m.dtype} peak ({m.threads} thr) · PSNR {shown} vs fp32 · {m.detail}",
    )


def run_unet(sizes: tuple[int, ...], repeats: int, compile_: bool) -> list[Measured]:
    fp32 = build_unet("sd15")
    bf16 = cast(copy.deepcopy(fp32), torch.bfloat16)
    threads = torch.get_num_threads()
    measured = []
    for size in sizes:
        flops = unet_flops(size)
        inputs = unet_inputs(size)
        reference, base = None, None
        for v in variants(compile_):
            if size not in v.sizes:
                continue
            with Applied(v, fp32, bf16) as step:
                first, seconds, out = timed(lambda s=step, x=inputs: s(*x), repeats)
            if reference is None:
                reference, base = out, seconds
            extra = f", compile + first call {first:.0f} s" if v.compile else ""
            detail = f"{size} px, batch 2 (CFG), {flops / 2e9:.0f} GFLOP/sample, median of {repeats}{extra}"
            measured.append(
                Measured(
                    f"unet {size}px {v.name}",
                    seconds,
                    base,
                    flops,
                    v.compute_dtype,
                    v.threads or threads,
                    psnr(reference, out),
                    detail,
                )
            )
            log(
                f"{measured[-1].name}: {seconds:.2f} s/step ({seconds / base:.2f}×, PSNR {measured[-1].quality:.1f} dB)"
            )
    return measured


def to_image(decoded: torch.Tensor) -> torch.Tensor:
    return (decoded.float() / 2 + 0.5).clamp(0, 1)


def run_vae(size: int, repeats: int) -> list[Measured]:
    """Decode one image's latents: SD's VAE in fp32 (diffusers' default) and bf16, and TAESD (previews)."""
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    vae, threads = build_vae("sd15"), torch.get_num_threads()
    vae_bf16 = cast(copy.deepcopy(vae), torch.bfloat16)
    taesd = build_taesd()
    # (name, model, compute dtype, channels_last, prepacked convolutions, threads)
    candidates = [("vae decode fp32 (diffusers default)", vae, "fp32", False, False, threads),
                  ("vae decode bf16 weights", vae_bf16, "bf16", False, False, threads),
                  ("vae decode bf16 weights + channels_last", vae_bf16, "bf16", True, False, threads),
                  ("vae decode bf16 weights + channels_last, 1 thread", vae_bf16, "bf16", True, False, 1),
                  ("vae decode bf16 weights + channels_last + prepacked convs", vae_bf16, "bf16", True, True, threads),
                  ("taesd decode fp32 (preview)", taesd, "fp32", False, False, threads),
                  ("taesd decode bf16 (preview)", cast(copy.deepcopy(taesd), torch.bfloat16), "bf16", False, False, threads)]  # fmt: skip
    measured, reference, base = [], None, None
    for name, model, dtype, channels_last, prepack, count in candidates:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        if prepack:
            prepack_convolutions(model)
        z = latents.to(next(model.parameters()).dtype).contiguous(memory_format=fmt)
        # AutoencoderTiny decodes raw latents; the KL VAE gets them unscaled, as the pipeline passes them
        scaled = z if "taesd" in name else z / vae.config.scaling_factor

        def decode(m=model, x=scaled):
            with torch.inference_mode():
                return m.decode(x).sample

        torch.set_num_threads(count)
        try:
            _, seconds, out = timed(decode, repeats)
        finally:
            torch.set_num_threads(threads)
            model.to(memory_format=torch.contiguous_format)
            unpack_convolutions(model)
        image = to_image(out)
        if reference is None:
            reference, base = image, seconds
        # a random-weight TAESD is a different network from the VAE: its pixels say nothing about quality
        quality = None if "taesd" in name else psnr(reference, image, peak=1.0)
        flops = decoder_flops(model, size)
        detail = f"{size} px, 1 image, {flops / 1e9:.0f} GFLOP, median of {repeats}"
        measured.append(Measured(f"{name} {size}px", seconds, base, flops, dtype, count, quality, detail))
        log(f"{measured[-1].name}: {seconds:.2f} s ({seconds / base:.2f}×)")
    return measured


def fastest(measured: list[Measured], size: int) -> Measured:
    """The fastest UNet variant at `size` px whose output holds quality (PSNR ≥ QUALITY_DB vs fp32), among those
    sdkit can ship: prepacked convolutions are measured but not a candidate (bench/prepack.py: their gain does not hold
    across runs and thread counts, and they slow the VAE decode)."""
    rows = [
        m
        for m in measured
        if m.name.startswith(f"unet {size}px ") and m.quality is not None and m.quality >= QUALITY_DB
        and "prepacked" not in m.name
    ]
    return min(rows, key=lambda m: m.seconds)


def recommend(measured: list[Measured], size: int) -> Figure:
    """The recommendation: `fastest` at `size` px, as a ratio to diffusers' default."""
    best = fastest(measured, size)
    ratio = best.seconds / best.base
    shown = "exact" if math.isinf(best.quality) else f"{best.quality:.1f} dB"
    return Figure(
        BENCH,
        "recommended CPU fast path",
        ratio,
        "×",
        "≤ 0.33× diffusers default",
        ratio <= 0.33,
        f"{best.name}: {best.seconds:.2f} s/step, PSNR {shown} (fastest with PSNR ≥ {QUALITY_DB:.0f} dB vs fp32)",
    )


def run(quick: bool = False, compile_: bool = False) -> list[Figure]:
    """Peaks, UNet variants at 512 and 256 px (256 only with quick), VAE/TAESD decodes. ≈ 8 min on 2 idle cores."""
    threads = torch.get_num_threads()
    counts = tuple(sorted({threads, 1}))
    peaks = measure_peaks(counts)
    log("matmul peaks (GFLOP/s): " + ", ".join(f"{d} {t} thr {v:.0f}" for (d, t), v in peaks.items()))
    sizes = (256,) if quick else (512, 256)
    repeats = 1 if quick else 2
    measured = run_unet(sizes, repeats, compile_) + run_vae(256 if quick else 512, repeats)
    # the peak is the best the machine showed: measured again at the end (a shared machine's speed varies)
    again = measure_peaks(counts)
    log("matmul peaks again: " + ", ".join(f"{d} {t} thr {v:.0f}" for (d, t), v in again.items()))
    peaks = {k: max(peaks[k], again[k]) for k in peaks}
    figures = [Figure(BENCH, f"matmul peak {d}, {t} thread{'s' if t > 1 else ''}", v, "GFLOP/s", "reference", None,
                      "2048² torch.matmul, best of 10 at the start and 10 at the end")
               for (d, t), v in peaks.items()]  # fmt: skip
    best = fastest(measured, max(sizes))
    variant = next(v for v in variants(compile_) if best.name == f"unet {max(sizes)}px {v.name}")
    log(f"profiling {best.name} by operation class")
    limits = breakdown(variant, max(sizes), peaks[(best.dtype, best.threads)], "recommended path")
    return figures + [figure(m, peaks) for m in measured] + [recommend(measured, max(sizes)), *limits]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_compute", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 px only, one repeat (a smoke run)")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile at 256 px (first call: ≈ 5 min on 2 busy cores)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the figures, do not touch bench/results.*")
    args = parser.parse_args(argv)
    figures = run(quick=args.quick, compile_=args.compile)
    for f in figures:
        print(f"{f.name:55s} {f.value:9.3f} {f.unit:7s} {f.detail}")
    if not args.no_write:
        print(write_results(figures))


if __name__ == "__main__":
    main()
