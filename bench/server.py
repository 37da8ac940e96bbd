"""sdkit serve: what a request costs against a CLI run and against the in-process library, throughput with a queue,
and peak memory with two models and the memory bound.

- warm request: the server's second (and later) txt2img request vs the same job as a whole `sdkit generate` process
  (shapes model, 64 px, DPM++ 2M, 20 steps, cfg 7). Goal ≤ 0.35×.
- overhead: a warm request vs `sdkit.tasks.generate.run` with a warm PipelineCache in this process, the library's
  own way to reuse a pipeline. Rounds alternate (server, in-process) so both see the same load; the figure is the
  median of the pairs' wall-time ratios (the CPU-time ratio, server process vs this one, in the detail). One torch
  thread in both. Goal ≤ 1.05×.
- throughput: 8 requests sent at once (queued, one worker), images per second, against 8 in-process runs one after
  another.
- memory: peak RSS of the server process (VmHWM) while requests alternate between two SD-1.5-sized random-weight
  models (bf16), with room for both (--max-loaded-models 2) and with --memory-limit-mb set below two models, so the
  least recently used one is dropped before the other loads.
"""

from __future__ import annotations

import base64
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.common import PY, Figure, median_of, wall

SDKIT = str(Path(PY).parent / "sdkit")
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
PROMPT = "a red circle on a blue background"
JOB = {"prompt": PROMPT, "sampler_name": "DPM++ 2M", "cfg_scale": 7, "steps": 20, "width": 64, "height": 64}


class Served:
    """A `sdkit serve` child process on a free port."""

    def __init__(self, out: Path, *args: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([SDKIT, "serve", "--port", str(self.port), "-o", str(out), *args],
                                     env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        import httpx

        self.client = httpx.Client(base_url=self.url, timeout=600)
        for _ in range(600):
            try:
                self.client.get("/sdapi/v1/samplers")
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("sdkit serve did not start")

    def txt2img(self, **fields) -> float:
        start = time.perf_counter()
        response = self.client.post("/sdapi/v1/txt2img", json={**JOB, **fields})
        response.raise_for_status()
        base64.b64decode(response.json()["images"][0])
        return time.perf_counter() - start

    def cpu_seconds(self) -> float:
        """user + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=60)


def in_process(out: Path):
    """A warm `generate.run` of the same job: (function timing one run)."""
    import torch

    import sdkit
    from sdkit.pipelines import PipelineCache
    from sdkit.tasks import generate

    torch.set_num_threads(1)
    cache = PipelineCache()
    recipe = sdkit.load_recipe("generate", {"prompt": PROMPT, "scheduler": "DPM++ 2M", "cfg": 7, "steps": 20, "width": 64,
                                            "height": 64, "seed": 1, "out": str(out)})  # fmt: skip

    def once(seed: int = 1) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        generate.run(recipe.model_copy(update={"seed": seed}), cache)
        return time.perf_counter() - start, time.process_time() - cpu

    once()
    return once


def requests_and_library(root: Path, repeats: int) -> list[Figure]:
    cli = median_of(repeats, lambda: wall([SDKIT, "generate", PROMPT, "--steps", "20", "--seed", "1", "-o", str(root / "cli")], ENV))
    server = Served(root / "served")
    try:
        first = server.txt2img(seed=1)
        library = in_process(root / "library")
        pairs, cpu = [], []
        for _ in range(max(5 * repeats, 15)):
            before = server.cpu_seconds()
            request = server.txt2img(seed=1)
            served_cpu = server.cpu_seconds() - before
            local, local_cpu = library()
            pairs.append((request, local))
            cpu.append(served_cpu / local_cpu)
        warm = statistics.median(s for s, _ in pairs)
        overhead = statistics.median(s / i for s, i in pairs)
        seeds = range(100, 108)
        start = time.perf_counter()
        threads = [threading.Thread(target=server.txt2img, kwargs={"seed": s}) for s in seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        queued = time.perf_counter() - start
        sequential = sum(library(s)[0] for s in seeds)
    finally:
        server.stop()
    inproc = statistics.median(i for _, i in pairs)
    return [
        Figure("server", "sdkit generate process", cli, "s", "reference", None, "shapes, 64 px, 20 steps"),
        Figure("server", "first request (loads the model)", first, "s", "reference", None),
        Figure("server", "warm request", warm, "s", "≤ 0.35× a CLI run", warm / cli <= 0.35, f"{warm / cli:.3f}× the CLI run"),
        Figure("server", "warm request / in-process run", overhead, "×", "≤ 1.05×", overhead <= 1.05,
               f"in-process {inproc * 1000:.0f} ms, request {warm * 1000:.0f} ms, median of {len(pairs)} alternating pairs; "
               f"CPU time {statistics.median(cpu):.3f}× (server process vs this one)"),
        Figure("server", "8 queued requests", 8 / queued, "img/s", "reference", None,
               f"{queued:.2f} s for 8 sent at once; 8 in-process runs in a row {sequential:.2f} s "
               f"({sequential / queued:.2f}× the server's rate)"),
    ]  # fmt: skip


def memory(root: Path) -> list[Figure]:
    """Peak RSS with two SD-1.5-sized models (bf16), both kept vs a memory bound that holds one."""
    import torch

    from bench.sd_configs import save_random_pipeline

    models = root / "models" / "checkpoints"
    for seed, name in enumerate(("sd15-a", "sd15-b")):
        if not (models / name).is_dir():
            save_random_pipeline("sd15", models / name, seed=seed, dtype=torch.float16)
    one_model_mb = sum(p.stat().st_size for p in (models / "sd15-a").rglob("*.safetensors")) / 2**20
    figures = []
    for label, args in (("both kept (--max-loaded-models 2)", ["--max-loaded-models", "2"]),
                        ("memory bound holds one", ["--memory-limit-mb", str(int(one_model_mb * 1.5))])):  # fmt: skip
        server = Served(root / f"rss-{len(figures)}", "--models-dir", str(root / "models"), "--dtype", "bf16", *args)
        try:
            for name in ("sd15-a", "sd15-b", "sd15-a", "sd15-b"):
                server.txt2img(seed=1, steps=2, override_settings={"sd_model_checkpoint": name})
            figures.append(Figure("server", f"peak RSS, two SD 1.5 models: {label}", server.peak_rss_mb(), "MB", "reference",
                                  None, f"{one_model_mb:.0f} MB of weights per model"))  # fmt: skip
        finally:
            server.stop()
    figures[1].goal, figures[1].met = "below both kept", figures[1].value < figures[0].value
    return figures


def run(repeats: int = 3) -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="sdkit-bench-server-"))
    return requests_and_library(root, repeats) + memory(root)
