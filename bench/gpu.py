"""GPU: whole-image generation through sdkit's fast path against plain diffusers defaults, side by side in one run.

SD 1.5 at 512 px and SDXL base at 1024 px, 30 steps, CFG 7, the same sampler (DPM++ 2M) on both sides, one image at a
time, each written as a PNG (sdkit always writes its images, so the diffusers side saves too). Models are built with
random weights from the published configs (bench/sd_configs.py: the compute is the same as the real weights') unless
`--model-dir` names a real local diffusers folder.

* diffusers default: `Pipeline.from_pretrained(dir, torch_dtype=fp16).to("cuda")`, SDPA (its default), nothing else.
* sdkit fast: `sdkit.tasks.generate.run` with `fast=True` (fp16 or --dtype, channels-last UNet, fused QKV) and
  `compile` with --compile; one PipelineCache, so the model loads once.

sdkit's per-image time is the marginal cost: (time of a call making 1 + k images − time of a call making 1) / k, so
the once-per-call work (checks, the model folder's sha256) is reported apart as "per-call overhead". it/s = steps /
s-per-image, decode and text encoding included (stable-fast's anchor counts the UNet loop only: ours is stricter).

    python -m bench.gpu [--model sd15|sdxl|all|tiny] [--steps 30] [--compile] [--dtype fp16|bf16] [--out DIR]
    python -m bench.gpu --model tiny       # no GPU needed: the whole script on CPU with sdkit's tiny-sd, in seconds

Without CUDA and without --model (as `make bench` calls `run()`), the tiny smoke run is what runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import HERE, Figure, write_results

BENCH = "gpu"
PROMPT = "a photo of an astronaut riding a horse on the moon"
ANCHORS = "H100 anchors: stable-fast 104.6 it/s, diffusers + compile 66 it/s (SD 1.5)"


@dataclass(frozen=True)
class Target:
    name: str  # sd15 | sdxl | tiny
    family: str  # diffusers pipeline family: sd | sdxl
    size: int
    goal_s: float | None  # s/image goal on an H100


TARGETS = {
    "sd15": Target("sd15", "sd", 512, 0.25),
    "sdxl": Target("sdxl", "sdxl", 1024, 1.2),
    "tiny": Target("tiny", "sd", 32, None),
}


def log(message: str) -> None:
    print(f"[gpu] {message}", file=sys.stderr, flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build_model(target: Target, folder: Path, dev: torch.device) -> Path:
    """A random-weight pipeline folder for `target` (fp16 weights for the real sizes, made on `dev`)."""
    if target.name == "tiny":
        from sdkit.architectures import build_pipeline, save_pipeline

        return save_pipeline(build_pipeline("tiny-sd", seed=0), folder)
    from bench.sd_configs import save_random_pipeline

    return save_random_pipeline(target.name, folder, device=dev, dtype=torch.float16)


def pipeline_dtypes(dev: torch.device, dtype: str) -> tuple[torch.dtype, str]:
    """(diffusers default torch_dtype, sdkit's --dtype for its fast path) on this device."""
    if dev.type == "cuda":
        return torch.float16, dtype
    return torch.float32, "auto"  # CPU: diffusers' default fp32; sdkit --fast picks bf16 where the CPU has it


def diffusers_default(
    folder: Path, target: Target, dev: torch.device, torch_dtype, steps: int, repeats: int, out: Path
) -> float:
    """Median s/image of the plain diffusers pipeline (after one warm-up image), PNG saved as sdkit does."""
    import diffusers

    pipeline_class = (
        diffusers.StableDiffusionXLPipeline if target.family == "sdxl" else diffusers.StableDiffusionPipeline
    )
    pipe = pipeline_class.from_pretrained(folder, dtype=torch_dtype).to(dev)  # `torch_dtype` in older diffusers
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True, exist_ok=True)

    def one(k: int) -> float:
        sync(dev)
        start = time.perf_counter()
        image = pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, height=target.size, width=target.size,
                     generator=torch.Generator("cpu").manual_seed(k)).images[0]  # fmt: skip
        image.save(out / f"diffusers-{k}.png")
        sync(dev)
        return time.perf_counter() - start

    one(0)
    seconds = statistics.median(one(k + 1) for k in range(repeats))
    pipe.to("cpu")  # frees the accelerator for the other side
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return seconds


def sdkit_recipe(
    folder: Path, target: Target, dev: torch.device, dtype: str, steps: int, compile_: bool, out: Path, n: int
):
    from sdkit.schema.generate import GenerateRecipe

    # sdkit's fast path: `fast` fills in its measured preset (sdkit/fast.py), `compile` is opt-in
    return GenerateRecipe(prompt=PROMPT, model=str(folder), device=dev.type, dtype=dtype, steps=steps, cfg=7.0,
                          scheduler="DPM++ 2M", width=target.size, height=target.size, seed=1, num_images=n,
                          out=out, fast=True, compile=compile_, backend="torch")  # fmt: skip


def sdkit_fast(
    folder: Path, target: Target, dev: torch.device, dtype: str, steps: int, compile_: bool, repeats: int, out: Path
) -> tuple[float, float, str]:
    """(s/image marginal, per-call overhead s, the resolved fast settings) through sdkit's Python API."""
    from sdkit.pipelines import PipelineCache
    from sdkit.tasks.generate import run

    cache = PipelineCache()
    settings = ""

    def call(n: int) -> float:
        nonlocal settings
        recipe = sdkit_recipe(folder, target, dev, dtype, steps, compile_, out, n)
        sync(dev)
        start = time.perf_counter()
        results = run(recipe, cache)
        sync(dev)
        elapsed = time.perf_counter() - start
        r = results[0].recipe
        settings = (f"backend {r.backend}, dtype {r.dtype}, channels_last {r.channels_last}, fuse_qkv {r.fuse_qkv}, "
                    f"compile {r.compile}")  # fmt: skip
        return elapsed

    call(1)  # loads the model (and compiles with --compile)
    call(1)
    single = statistics.median(call(1) for _ in range(repeats))
    batch = statistics.median(call(1 + repeats) for _ in range(2))
    per_image = (batch - single) / repeats
    if cache.loads != 1:
        raise RuntimeError(f"sdkit loaded the model {cache.loads} times; the timing would include loading")
    cache.entries.clear()  # frees the accelerator for the next model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return per_image, single - per_image, settings


def bench_target(target: Target, args, dev: torch.device, work: Path) -> list[Figure]:
    folder = args.model_dir or build_model(target, work / f"{target.name}-model", dev)
    log(f"{target.name}: model in {folder}")
    torch_dtype, sdkit_dtype = pipeline_dtypes(dev, args.dtype)
    base = diffusers_default(folder, target, dev, torch_dtype, args.steps, args.repeats, work / "images")
    log(f"{target.name}: diffusers default {base:.3f} s/image")
    fast, overhead, settings = sdkit_fast(folder, target, dev, sdkit_dtype, args.steps, args.compile, args.repeats,
                                          work / "images" / f"sdkit-{target.name}")  # fmt: skip
    log(f"{target.name}: sdkit fast {fast:.3f} s/image ({settings}), per-call overhead {overhead:.3f} s")
    on_h100 = dev.type == "cuda" and "H100" in torch.cuda.get_device_name(dev)
    label = f"{target.name} {target.size}px {args.steps} steps"
    goal = (
        f"≤ {target.goal_s} s/image on an H100" if target.goal_s else "smoke run (tiny model, not a performance figure)"
    )
    anchors = f" · {ANCHORS}" if target.name == "sd15" else ""
    where = f"{dev.type} {'(' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}".strip()
    return [
        Figure(BENCH, f"{label} diffusers default", base, "s/image", "reference", None,
               f"{where}, {torch_dtype}, SDPA · {args.steps / base:.1f} it/s · median of {args.repeats}"),
        Figure(BENCH, f"{label} sdkit fast{' + compile' if args.compile else ''}", fast, "s/image", goal,
               fast <= target.goal_s if on_h100 and target.goal_s else None,
               f"{where}, {settings} · {args.steps / fast:.1f} it/s · {fast / base:.2f}× diffusers default{anchors}"),
        Figure(BENCH, f"{label} sdkit per-call overhead", overhead, "s", "reference", None,
               "once per generate call: input checks, the model folder's sha256, output folder"),
    ]  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["sd15", "sdxl", "all", "tiny"],
                        help="default: all (SD 1.5 and SDXL) with CUDA, tiny without")  # fmt: skip
    parser.add_argument(
        "--model-dir", type=Path, help="a real local diffusers folder instead of random weights (one model)"
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="timed images per side (medians)")
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16", help="sdkit's precision on CUDA")
    parser.add_argument("--compile", action="store_true", help="sdkit side also torch.compiles (warm-up waits for it)")
    parser.add_argument("--out", type=Path, help="keep models and images here (default: a temporary folder)")
    parser.add_argument(
        "--results", type=Path, help="folder for results.md/json (default: bench/; tiny: the --out folder)"
    )
    args = parser.parse_args(argv)
    if args.model_dir and args.model in (None, "all"):
        parser.error("--model-dir needs --model sd15 or sdxl (which family the folder is)")
    return args


def run(argv: list[str] | None = None) -> list[Figure]:
    """The figures of one run (`argv`: this script's options; none = both models). Without CUDA only `--model tiny`
    runs (on CPU)."""
    args = parse(argv or [])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model is None:  # `make bench` on a machine without a GPU: prove the script works, at tiny scale
        args.model = "all" if dev.type == "cuda" else "tiny"
        if args.model == "tiny":
            log("no CUDA device: smoke run with the tiny model on CPU (not a performance figure)")
    if dev.type != "cuda" and args.model != "tiny":
        raise SystemExit("bench.gpu: no CUDA device; run `python -m bench.gpu --model tiny` to check the script on CPU")
    names = ["sd15", "sdxl"] if args.model == "all" else [args.model]
    work = args.out or Path(tempfile.mkdtemp(prefix="sdkit-gpu-bench-"))
    try:
        return [f for name in names for f in bench_target(TARGETS[name], args, dev, work)]
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    figures = run(argv)
    args = parse(argv)
    args.model = args.model or ("all" if torch.cuda.is_available() else "tiny")
    for f in figures:
        print(f"{f.name:45s} {f.value:8.3f} {f.unit:8s} {f.detail}")
    results = args.results or (args.out if args.model == "tiny" and args.out else None)
    if args.model == "tiny" and results is None:
        print("tiny smoke run: figures not written (give --results DIR or --out DIR)")
        return Path()
    path = write_results(figures, results or HERE)
    print(path)
    return path


if __name__ == "__main__":
    main()
