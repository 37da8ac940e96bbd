"""--backend openvino against torch on CPU: one CFG step of an SD 1.5-architecture UNet (published config, random
weights) at 256 and 512 px, whole `sdkit generate` runs on the shapes model and on an SD 1.5-architecture folder
(random weights, 512 px, 10 steps), and `sdkit eval shapes` with each backend.

UNet step, side by side in alternated rounds (median per path): diffusers' fp32 default, sdkit's torch `--fast` row
(bf16 weights + channels_last) and sdkit's OpenVINO backend (sdkit.backends.openvino, the code `--backend openvino`
runs) with the f32 and the bf16 precision hint. Per path: s/step, ratio to fp32, share of the bf16 matmul peak measured
in the same run (FLOPs counted by bench.cpu_compute), PSNR of the noise prediction against fp32. Each OpenVINO graph is
converted first in a child process (its conversion time and peak RSS), then loaded from the disk cache here.

    python -m bench.openvino [--sizes 256 512] [--rounds 3] [--no-unet] [--no-generate] [--no-quality] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import PY, Figure, machine, write_results

BENCH = "openvino"
GOAL = "≤ 0.40× fp32, ≥ 70 % of bf16 peak, ≥ 1.4× faster than --fast"
HINTS = ("f32", "bf16")
DTYPE_OF = {"f32": "fp32", "bf16": "bf16"}


@contextlib.contextmanager
def cache_dir(path: str):
    """SDKIT_CACHE_DIR set to `path` for the block (this process and the children it starts), then as it was."""
    previous = os.environ.get("SDKIT_CACHE_DIR")
    os.environ["SDKIT_CACHE_DIR"] = path
    try:
        yield
    finally:
        os.environ.pop("SDKIT_CACHE_DIR") if previous is None else os.environ.__setitem__("SDKIT_CACHE_DIR", previous)


def log(message: str) -> None:
    print(f"[openvino] {message}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ov_unet(unet, hint: str, store: dict):
    """The UNet's OpenVINO forward as `--backend openvino` builds it (cached under a fixed identity)."""
    import openvino as ov

    from sdkit.backends.openvino import HINTS as SDKIT_HINTS
    from sdkit.backends.openvino import Forward, compile_config

    class Recipe:  # the fields compile_config reads
        backend, dtype = "openvino", DTYPE_OF[hint]

    assert SDKIT_HINTS[Recipe.dtype] == hint
    identity = {"model": "bench-sd15-random-seed0", "loras": [], "embeddings": [], "precision": hint,
                "graph": [False, False], "openvino": ov.get_version()}  # fmt: skip
    return Forward("unet", unet, "unet", identity, store, compile_config(Recipe), "CPU")


def convert_child(size: int, hint: str) -> None:
    """(in a child process) convert + compile the UNet graph for `size` and `hint`; print JSON figures."""
    from bench.cpu_variants import unet_inputs
    from bench.sd_configs import build_unet
    from sdkit.backends import ov_cache

    unet = build_unet("sd15")
    forward = ov_unet(unet, hint, {})
    start = time.perf_counter()
    forward(*unet_inputs(size))
    first = time.perf_counter() - start
    manifest = next(json.loads(p.read_text()) for p in ov_cache.root().glob("*/manifest.json")
                    if json.loads(p.read_text())["key"]["inputs"][0][1][-1] == size // 8
                    and json.loads(p.read_text())["key"]["precision"] == hint)  # fmt: skip
    ir_mb = sum(size_sha[0] for size_sha in manifest["files"].values()) / 2**20
    print(json.dumps({"convert_s": manifest["convert_s"], "first_s": first, "rss_mb": rss_mb(), "ir_mb": ir_mb}))


def psnr(reference, test) -> float:
    from bench.cpu_compute import psnr as tensor_psnr

    return tensor_psnr(reference, test)


def unet_figures(sizes: list[int], rounds: int) -> list[Figure]:
    import torch

    from bench.cpu_compute import measure_peaks, unet_flops
    from bench.cpu_variants import unet_inputs
    from bench.sd_configs import build_unet, cast

    threads = torch.get_num_threads()
    conversions = {}
    for size in sizes:
        for hint in HINTS:
            log(f"converting the UNet at {size} px, {hint} hint (child process)")
            out = subprocess.run([PY, "-m", "bench.openvino", "--convert", str(size), hint], check=True,
                                 capture_output=True, text=True, env=os.environ)  # fmt: skip
            conversions[(size, hint)] = json.loads(out.stdout.strip().splitlines()[-1])
            log(f"  {conversions[(size, hint)]}")
    fp32 = build_unet("sd15")
    fast = cast(build_unet("sd15"), torch.bfloat16).to(memory_format=torch.channels_last)
    store: dict = {}
    paths = {
        "fp32 default (diffusers)": lambda x: fp32(*x).sample,
        "--fast torch (bf16 + channels_last)": lambda x: fast(x[0].bfloat16(), x[1], x[2].bfloat16()).sample.float(),
        "openvino f32 hint": lambda x, f=ov_unet(fp32, "f32", store): f(*x).sample,
        "openvino bf16 hint": lambda x, f=ov_unet(fp32, "bf16", store): f(*x).sample,
    }
    peak = measure_peaks((threads,))[("bf16", threads)]
    figures = [Figure(BENCH, f"matmul peak bf16, {threads} threads", peak, "GFLOP/s", "reference", None, "2048² torch.matmul")]
    for size in sizes:
        inputs, flops = unet_inputs(size), unet_flops(size)
        times: dict[str, list[float]] = {name: [] for name in paths}
        outputs = {}
        with torch.inference_mode():
            for name, step in paths.items():  # warm-up (OpenVINO: compile from the cache), and the output for PSNR
                start = time.perf_counter()
                outputs[name] = step(inputs)
                log(f"{size} px {name}: first call {time.perf_counter() - start:.1f} s")
            for r in range(rounds):
                for name, step in paths.items():
                    start = time.perf_counter()
                    step(inputs)
                    times[name].append(time.perf_counter() - start)
                log(f"{size} px round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()))
        base = statistics.median(times["fp32 default (diffusers)"])
        fast_s = statistics.median(times["--fast torch (bf16 + channels_last)"])
        for name, values in times.items():
            seconds = statistics.median(values)
            share = flops / seconds / 1e9 / peak
            quality = "exact" if name.startswith("fp32") else f"{psnr(outputs['fp32 default (diffusers)'], outputs[name]):.1f} dB"
            detail = (f"{seconds / base:.2f}× fp32 · {share:.0%} of bf16 peak · {fast_s / seconds:.2f}× --fast's speed · "
                      f"PSNR {quality} vs fp32 · batch 2 (CFG), {flops / 1e9:.0f} GFLOP, median of {rounds} alternated")  # fmt: skip
            met = None
            if name == "openvino bf16 hint":
                met = seconds / base <= 0.40 and share >= 0.70 and fast_s / seconds >= 1.4
            figures.append(Figure(BENCH, f"unet {size}px {name}", seconds, "s", GOAL if met is not None else "reference", met, detail))
        for hint in HINTS:
            c = conversions[(size, hint)]
            figures.append(Figure(BENCH, f"unet {size}px openvino {hint} conversion", c["convert_s"], "s", "reported, cached", None,
                                  f"first call (convert + save + compile) {c['first_s']:.0f} s · peak RSS {c['rss_mb'] / 1024:.1f} GiB · "
                                  f"IR {c['ir_mb'] / 1024:.2f} GiB"))  # fmt: skip
    figures.append(Figure(BENCH, "unet timing process peak RSS", rss_mb() / 1024, "GiB", "reference", None,
                          "fp32 + bf16 UNets and both compiled OpenVINO graphs in one process"))  # fmt: skip
    return figures


def generate_wall(args: list[str], out: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([str(Path(PY).parent / "sdkit"), "generate", *args, "-o", str(out)], capture_output=True,
                          text=True, env=env)  # fmt: skip
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - start, done.stderr


def generate_figures(rounds: int, model: str = "shapes", label: str = "shapes", size: int | None = None,
                     steps: int = 20, per_run: int = 4) -> list[Figure]:
    """Whole `sdkit generate` on `model`. The first CLI run of each backend in a fresh cache (OpenVINO's converts its
    graphs: the conversion time it prints); then per-image time with warm pipelines, in process through the generate
    task (`sdkit.tasks.generate.run`, a PipelineCache per backend), `per_run` images a run, alternated rounds."""
    from sdkit.pipelines import PipelineCache
    from sdkit.schema.generate import GenerateRecipe
    from sdkit.tasks import generate

    figures = []
    shape = {"width": size, "height": size} if size else {}
    with tempfile.TemporaryDirectory(prefix="sdkit-bench-ov-") as tmp:
        env = {**os.environ, "SDKIT_CACHE_DIR": str(Path(tmp) / "cache")}
        base = ["a red circle on a blue background", "-m", model, "--steps", str(steps), "--cfg", "5", "--seed", "1"]
        base += ["--width", str(size), "--height", str(size)] if size else []
        backends = {"torch": {"backend": "torch"}, "--fast torch": {"fast": True, "backend": "torch"},
                    "openvino (bf16 hint)": {"backend": "openvino"}}  # fmt: skip
        log(f"generate {label}: first OpenVINO run in a fresh cache")
        seconds, stderr = generate_wall([*base, "--backend", "openvino"], Path(tmp) / "first", env)
        converted = [float(s) for s in re.findall(r"openvino: converted .* in ([\d.]+) s", stderr)]
        with cache_dir(env["SDKIT_CACHE_DIR"]):
            caches = {name: PipelineCache() for name in backends}
            recipes = {name: GenerateRecipe(prompt=base[0], model=model, steps=steps, cfg=5.0, seed=1, num_images=per_run,
                                            out=Path(tmp) / name.replace(" ", "-"), **shape, **fields)
                       for name, fields in backends.items()}  # fmt: skip
            for name in backends:  # warm: load (and, for openvino, load the converted graphs from the cache)
                generate.run(recipes[name].model_copy(update={"num_images": 1, "steps": 1}), caches[name])
            walls: dict[str, list[float]] = {name: [] for name in backends}
            for r in range(rounds):
                for name in backends:
                    start = time.perf_counter()
                    generate.run(recipes[name], caches[name])
                    walls[name].append((time.perf_counter() - start) / per_run)
                log(f"generate {label} round {r + 1}: " + ", ".join(f"{n} {w[-1]:.2f} s" for n, w in walls.items()))
        torch_s = statistics.median(walls["torch"])
        what = f"{steps} steps cfg 5{f', {size} px' if size else ''}, warm pipeline, {per_run} image{'s' * (per_run > 1)} a run"
        for name, values in walls.items():
            s = statistics.median(values)
            figures.append(Figure(BENCH, f"sdkit generate {label} per image, {name}", s, "s", "reference", None,
                                  f"{s / torch_s:.2f}× torch · {what}, median of {rounds}"))  # fmt: skip
        figures.append(Figure(BENCH, f"sdkit generate {label}, first run's conversion", sum(converted), "s", "reported", None,
                              f"{len(converted)} graphs converted ({', '.join(f'{c:.1f}' for c in converted)} s); whole first run {seconds:.0f} s"))  # fmt: skip
    return figures


def sd15_generate_figures(rounds: int, size: int = 512, steps: int = 10) -> list[Figure]:
    """Whole `sdkit generate` on an SD 1.5-architecture diffusers folder (published configs, random weights in fp32)."""
    import torch

    from bench.sd_configs import save_random_pipeline

    with tempfile.TemporaryDirectory(prefix="sdkit-bench-ov-sd15-") as tmp:
        log("saving a random-weight SD 1.5-architecture pipeline")
        model = save_random_pipeline("sd15", Path(tmp) / "sd15", dtype=torch.float32)
        return generate_figures(rounds, str(model), f"SD 1.5-arch {size}px", size, steps, per_run=1)


def quality_figures(n: int = 200) -> list[Figure]:
    """`sdkit eval shapes` (n prompts, cfg 5, the eval's own seed) with torch and with OpenVINO's bf16 hint: the
    goal is OpenVINO within 2 points of torch on colour, shape and background."""
    from sdkit.schema.eval import EvalShapesRecipe
    from sdkit.tasks import eval_shapes

    scores = {}
    with tempfile.TemporaryDirectory(prefix="sdkit-bench-ov-") as tmp:
        with cache_dir(tmp):
            for backend in ("torch", "openvino"):
                recipe = EvalShapesRecipe(n=n, cfg=[5.0], heldout=False, backend=backend, device="cpu")
                scores[backend] = eval_shapes.run(recipe)[0]
    figures = []
    for key, word in (("color", "colour"), ("shape", "shape"), ("background", "background"), ("all", "all")):
        t, o = 100 * getattr(scores["torch"], key), 100 * getattr(scores["openvino"], key)
        met = abs(o - t) <= 2 if key != "all" else None
        figures.append(Figure(BENCH, f"eval shapes {word}, openvino vs torch", o, "%", "within 2 points of torch" if met is not None
                              else "reference", met, f"torch {t:.1f} %, difference {o - t:+.1f} points, n={n}, cfg 5, bf16 hint"))  # fmt: skip
    return figures


def run(sizes: list[int] | None = None, rounds: int = 3, generate: bool = True, quality: bool = True,
        unet: bool = True) -> list[Figure]:
    log(machine())
    figures = []
    if unet:
        with tempfile.TemporaryDirectory(prefix="sdkit-bench-ov-") as tmp:
            with cache_dir(tmp):  # the child conversions and this process share a fresh cache
                figures += unet_figures(sizes or [256, 512], rounds)
    if generate:
        figures += generate_figures(max(1, rounds - 1))
        figures += sd15_generate_figures(max(1, rounds - 1))
    if quality:
        figures += quality_figures()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-generate", action="store_true")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-unet", action="store_true", help="skip the UNet-step rows")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--convert", nargs=2, metavar=("SIZE", "HINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert:
        convert_child(int(args.convert[0]), args.convert[1])
        return
    figures = run(args.sizes, args.rounds, not args.no_generate, not args.no_quality, not args.no_unet)
    for f in figures:
        print(f"{f.name:48s} {f.value:9.3f} {f.unit:7s} {f.detail}")
    if not args.no_write:
        print(write_results(figures))


if __name__ == "__main__":
    main()
