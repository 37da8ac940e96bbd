"""Overhead: a whole `sdkit generate` process vs the plain diffusers script a user would write (bench/plain_diffusers.py).

Same model folder, sampler ("DPM++ 2M" = DPMSolverMultistepScheduler from the model's config), steps, CFG, seed and
size; one torch thread in both (the machine is shared). Runs alternate (sdkit first, then the script first, ...) and
the figure is the ratio of the medians; the two PNGs must hold identical pixels. Models: the embedded shapes model and
the random-weight "tiny-sd" preset saved to a temporary folder. Goal ≤ 1.03×.
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
    return result


def run(repeats: int = 5, steps: int = 20) -> list[Figure]:
    from sdkit.architectures import build_pipeline, save_pipeline

    root = Path(tempfile.mkdtemp(prefix="sdkit-bench-overhead-"))
    tiny = save_pipeline(build_pipeline("tiny-sd", seed=0), root / "tiny-sd")
    figures = []
    for label, model in (("shapes model", SHAPES), ("tiny-sd preset", tiny)):
        result = compare(model, root / label.split()[0], repeats, steps)
        ratio = result["sdkit"] / result["plain"]
        figures.append(Figure(
            "overhead", f"sdkit generate vs plain diffusers ({label})", ratio, "x", f"≤ {GOAL}× wall, identical pixels",
            ratio <= GOAL and result["identical"],
            f"sdkit {result['sdkit']:.2f} s vs script {result['plain']:.2f} s (whole process, median of {repeats} "
            f"alternated runs, {steps} steps DPM++ 2M, 1 thread); CPU time {result['sdkit_cpu'] / result['plain_cpu']:.3f}×; "
            f"identical pixels: {'yes' if result['identical'] else 'NO'}",
        ))  # fmt: skip
    return figures
