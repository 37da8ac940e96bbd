"""Training throughput: `sdkit train lora` and `sdkit train text-to-image` (full UNet fine-tune) vs a plain loop written
like diffusers' example scripts (bench/plain_train.py), on the embedded shapes model and a 64-image `sdkit data
shapes` dataset, with matching settings (batch 8, 64 px, AdamW 1e-4 constant, clip 1.0, epsilon MSE, no min-SNR, no
caption dropout, no EMA, LoRA r=4 on to_q/to_k/to_v/to_out.0, one torch thread, no checkpoints or validation).

Each run is a child process. Its stderr "step k/N" lines are timestamped as they arrive, together with the child's CPU
time (/proc/PID/stat), so steps/s covers the steps after the first `WARMUP` (no start-up, loading or saving), both by
the wall clock and per CPU second (robust on a shared machine). Peak RSS: os.wait4's ru_maxrss of the whole process.
Runs come in back-to-back pairs (which goes first alternates); figures are medians of the pairs' ratios. Goals: ≥ 1.0× speed, ≤ 1.0× memory.

Each side runs as its authors wrote it: sdkit steps with torch's fused AdamW (the loop's default where the parameters
allow; the plain loop's `torch.optim.AdamW` is the per-tensor loop, ≈ 5× slower on the UNet's 326 tensors) and ends its
process with `sdkit.cli.finish` (no interpreter teardown, which costs a torch process ≈ 0.9 s and ≈ 125 MB of peak RSS).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import PY, Figure

SDKIT = str(Path(PY).parent / "sdkit")
PLAIN = str(Path(__file__).with_name("plain_train.py"))
SHAPES = Path(__file__).resolve().parents[1] / "sdkit" / "assets" / "shapes"
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
WARMUP = 3
BATCH, RESOLUTION, RANK = 8, 64, 4


def dataset(root: Path, n: int = 64) -> Path:
    from sdkit.data.shapes import write_dataset

    if not (root / "metadata.jsonl").is_file():
        write_dataset(root, n, seed=0, size=RESOLUTION)
    return root


def sdkit_recipe(kind: str, data: Path, out: Path, steps: int) -> dict:
    """The sdkit recipe that matches plain_train.py's settings."""
    common = {"model": str(SHAPES), "data_dir": str(data), "output_dir": str(out), "max_steps": steps, "seed": 0,
              "train_batch_size": BATCH, "resolution": RESOLUTION, "learning_rate": 1e-4, "lr_scheduler": "constant",
              "snr_gamma": None, "caption_dropout": 0.0, "center_crop": True, "random_flip": False,
              "checkpointing_steps": steps * 10, "threads": 1, "log_every": 1, "device": "cpu"}  # fmt: skip
    if kind == "lora":
        return {**common, "rank": RANK}
    return common


def sdkit_command(kind: str, data: Path, out: Path, steps: int) -> list[str]:
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(yaml.safe_dump(sdkit_recipe(kind, data, out, steps)))
    return [SDKIT, "train", "lora" if kind == "lora" else "text-to-image", "--recipe", str(recipe)]


def plain_command(kind: str, data: Path, steps: int) -> list[str]:
    lora = ["--lora", "--rank", str(RANK)] if kind == "lora" else []
    return [PY, PLAIN, str(SHAPES), str(data), *lora, "--max-steps", str(steps), "--batch-size", str(BATCH),
            "--resolution", str(RESOLUTION)]  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(command: list[str]) -> dict:
    """Steps/s (wall and per CPU second) after the warm-up steps, and peak RSS in MB, of one child process."""
    proc = subprocess.Popen(command, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marks: list[tuple[int, float, float]] = []
    tail: list[str] = []
    for line in proc.stderr:
        if line.startswith("step "):
            marks.append((int(line.split()[1].split("/")[0]), time.perf_counter(), _cpu_seconds(proc.pid)))
        tail = [*tail[-20:], line]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} failed ({proc.returncode}): {''.join(tail)[-1500:]}")
    timed = [m for m in marks if m[0] >= WARMUP]
    if len(timed) < 2:
        raise RuntimeError(f"{' '.join(command[:4])}: too few step lines ({len(marks)}) to time")
    (s0, w0, c0), (s1, w1, c1) = timed[0], timed[-1]
    return {"steps_per_s": (s1 - s0) / (w1 - w0), "steps_per_cpu_s": (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan"),
            "rss_mb": usage.ru_maxrss / 1024}  # fmt: skip


def compare(kind: str, data: Path, root: Path, repeats: int, steps: int) -> dict:
    runs: dict[str, list[dict]] = {"sdkit": [], "plain": []}
    for i in range(repeats):
        commands = {"sdkit": lambda i=i: sdkit_command(kind, data, root / f"{kind}-sdkit-{i}", steps),
                    "plain": lambda: plain_command(kind, data, steps)}  # fmt: skip
        for name in (("sdkit", "plain") if i % 2 == 0 else ("plain", "sdkit")):
            runs[name].append(measure(commands[name]()))
            print(kind, name, runs[name][-1], file=sys.stderr)
    result = {name: {key: statistics.median(r[key] for r in values) for key in values[0]} for name, values in runs.items()}
    pairs = list(zip(runs["sdkit"], runs["plain"], strict=True))  # back to back: the same load on the machine
    result["ratio"] = {key: statistics.median(s[key] / p[key] for s, p in pairs) for key in runs["sdkit"][0]}
    return result


def run(repeats: int = 3, steps: int = 25) -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="sdkit-bench-train-"))
    data = dataset(root / "data")
    figures = []
    for kind, label in (("lora", f"LoRA r={RANK}"), ("full", "full UNet fine-tune")):
        result = compare(kind, data, root, repeats, steps)
        sdk, plain = result["sdkit"], result["plain"]
        speed, cpu_speed, memory = (result["ratio"][key] for key in ("steps_per_s", "steps_per_cpu_s", "rss_mb"))
        where = f"shapes model, batch {BATCH}, {RESOLUTION} px, steps {WARMUP}-{steps}, {repeats} back-to-back pairs"
        figures += [
            Figure("train_throughput", f"{label}: steps/s vs plain loop", speed, "x", "≥ 1.0×", speed >= 1.0,
                   f"median sdkit {sdk['steps_per_s']:.2f} vs plain {plain['steps_per_s']:.2f} steps/s ({where}); per CPU second "
                   f"{cpu_speed:.3f}×"),
            Figure("train_throughput", f"{label}: peak RSS vs plain loop", memory, "x", "≤ 1.0×", memory <= 1.0,
                   f"median sdkit {sdk['rss_mb']:.0f} MB vs plain {plain['rss_mb']:.0f} MB (whole process, ru_maxrss)"),
        ]  # fmt: skip
    return figures
