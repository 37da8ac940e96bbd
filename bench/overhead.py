"""Overhead: a whole `sdkit generate` process vs the plain diffusers script a user would write (bench/plain_diffusers.py).

Same model folder, sampler ("DPM++ 2M" = DPMSolverMultistepScheduler from the model's config), steps, CFG, seed and
size; one torch thread in both (the machine is shared). Runs come in back-to-back pairs (which goes first alternates),
so both of a pair see the same load; the figure is the median of the pairs' ratios (CPU-time and fastest-run ratios
in the detail). The two PNGs must hold identical pixels. Models: the embedded shapes model and
the random-weight "tiny-sd" preset saved to a temporary folder. Goal ≤ 1.03×.

Where the time goes (cProfile, one thread): both processes spend most of it importing diffusers/torch; denoising is
≈ 0.5 s. Python's exit then tears the interpreter down for ≈ 0.9 s; sdkit skips that teardown (`sdkit.cli.finish`),
which is what puts it ahead of the script.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PY, Figure

SDKIT = str(Path(PY).parent / "sdkit")
PLAIN = str(Path(__file__).with_name("plain_diffusers.py"))
SHAPES = Path(__file__).resolve().parents[1] / "sdkit" / "assets" / "shapes"
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
PROMPT = "a red circle on a blue background"
GOAL = 1.03


def sdkit_command(model: Path, out_dir: Path, steps: int, seed: int, cfg: float) -> list[str]:
    return [SDKIT, "generate", PROMPT, "-m", str(model), "--scheduler", "DPM++ 2M", "--steps", str(steps), "--seed", str(seed),
            "--cfg", str(cfg), "-o", str(out_dir)]  # fmt: skip


def plain_command(model: Path, out_file: Path, steps: int, seed: int, cfg: float) -> list[str]:
    return [PY, PLAIN, str(model), PROMPT, str(out_file), "--steps", str(steps), "--seed", str(seed), "--cfg", str(cfg)]


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one child process (os.wait4)."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        if proc.returncode:
            log.seek(0)
            raise RuntimeError(f"{' '.join(command[:3])} failed: {log.read().decode()[-800:]}")
    return seconds, usage.ru_utime + usage.ru_stime


def same_pixels(a: Path, b: Path) -> bool:
    import numpy as np
    from PIL import Image

    with Image.open(a) as x, Image.open(b) as y:
        return x.size == y.size and bool(np.array_equal(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB"))))


def compare(model: Path, root: Path, repeats: int, steps: int = 20, seed: int = 1, cfg: float = 7.0) -> dict:
    """Median wall and CPU seconds of both (alternating order) and whether the first pair of images is pixel-identical."""
    runs: dict[str, list[tuple[float, float]]] = {"sdkit": [], "plain": []}
    for i in range(repeats):
        commands = {
            "sdkit": sdkit_command(model, root / f"sdkit-{i}", steps, seed, cfg),
            "plain": plain_command(model, root / f"plain-{i}.png", steps, seed, cfg),
        }
        for name in (("sdkit", "plain") if i % 2 == 0 else ("plain", "sdkit")):
            runs[name].append(timed(commands[name]))
    identical = same_pixels(root / "sdkit-0" / f"00001-{seed}.png", root / "plain-0.png")
    result = {"identical": identical, "runs": runs}
    for name, values in runs.items():
        result[name] = statistics.median(w for w, _ in values)
        result[f"{name}_cpu"] = statistics.median(c for _, c in values)
    pairs = list(zip(runs["sdkit"], runs["plain"], strict=True))  # run back to back: the same load on the machine
    result["ratio"] = statistics.median(s[0] / p[0] for s, p in pairs)
    result["cpu_ratio"] = statistics.median(s[1] / p[1] for s, p in pairs)
    result["min_ratio"] = min(w for w, _ in runs["sdkit"]) / min(w for w, _ in runs["plain"])
    return result


def run(repeats: int = 7, steps: int = 20) -> list[Figure]:
    from sdkit.architectures import build_pipeline, save_pipeline

    root = Path(tempfile.mkdtemp(prefix="sdkit-bench-overhead-"))
    tiny = save_pipeline(build_pipeline("tiny-sd", seed=0), root / "tiny-sd")
    figures = []
    for label, model in (("shapes model", SHAPES), ("tiny-sd preset", tiny)):
        result = compare(model, root / label.split()[0], repeats, steps)
        ratio = result["ratio"]
        figures.append(Figure(
            "overhead", f"sdkit generate vs plain diffusers ({label})", ratio, "x", f"≤ {GOAL}× wall, identical pixels",
            ratio <= GOAL and result["identical"],
            f"median of {repeats} back-to-back pairs (order alternated) of whole processes, {steps} steps DPM++ 2M, "
            f"1 thread; median times sdkit {result['sdkit']:.2f} s, script {result['plain']:.2f} s; CPU time "
            f"{result['cpu_ratio']:.3f}×; fastest runs {result['min_ratio']:.3f}×; identical pixels: "
            f"{'yes' if result['identical'] else 'NO'}",
        ))  # fmt: skip
    return figures
