"""Running one job: generation in the worker's own thread with its warm pipelines, every other task as a child
`sdkit run` process (training, datasets, evaluation), so its outputs are exactly the CLI's.

Generation runs one image at a time through `sdkit.tasks.generate.run(..., plan=[(k, None)])`: the file and the
recipe written into it are the ones `sdkit generate` writes for image k, and between images the worker can skip
one or stop. Each denoising step reports progress and, when a client watches, a preview (`Live`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdkit.errors import UserError
from sdkit.pipelines import PipelineCache

if TYPE_CHECKING:
    from sdkit.server.store import Job
    from sdkit.server.workers import Live

GRAPHS_PER_MODEL = 8  # compiled OpenVINO graphs kept per warm pipeline: one job needs up to 5 (UNet, VAE encoder and
# decoder, two text encoders); each new size is a new set, so requests choosing sizes cannot grow memory without bound
PREVIEW_LATENT = 32  # previews decode latents downscaled to at most this side (256 px on SD): a few % of a step
STEP_LINE = re.compile(r"^step (\d+)/(\d+)")


class Stop(Exception):
    """Raised from a step callback: `kind` is skip (this image), interrupt (the job, keeping what is done) or cancel."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


class RecentGraphs(OrderedDict):
    """At most `limit` entries; reading or writing one makes it the most recent, the least recent goes first."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class BoundedCache(PipelineCache):
    """The pipeline cache with a bound: at most `max_models` pipelines, and (with `memory_mb`) at most that many MB of
    weights, estimated from the weight files before a load. The least recently used pipeline is dropped first. The
    compiled OpenVINO graphs are bounded too (GRAPHS_PER_MODEL per pipeline; they reload from the disk cache)."""

    def __init__(self, max_models: int = 2, memory_mb: int | None = None):
        super().__init__()
        self.max_models, self.memory_mb = max_models, memory_mb
        self.converted = RecentGraphs(GRAPHS_PER_MODEL * max_models)
        self.sizes: dict[tuple, int] = {}
        self.dropped = 0

    def get(self, model, placement, *, allow_pickle: bool = False, speed=None, vae=None):
        key = self.key(model, placement, allow_pickle=allow_pickle, speed=speed, vae=vae)
        if key in self.entries:
            self.entries[key] = self.entries.pop(key)  # most recently used last
            return self.entries[key]
        need = weight_bytes(Path(model.location))
        while self.entries and (len(self.entries) >= self.max_models or self._over(need)):
            self._drop(next(iter(self.entries)))
        loaded = super().get(model, placement, allow_pickle=allow_pickle, speed=speed, vae=vae)
        self.sizes[key] = loaded_bytes(loaded.pipe) or need
        return loaded

    def _over(self, need: int) -> bool:
        return self.memory_mb is not None and sum(self.sizes.values()) + need > self.memory_mb * 2**20

    def _drop(self, key: tuple) -> None:
        import gc

        import torch

        del self.entries[key]
        self.sizes.pop(key, None)
        self.controlnets.clear()  # ControlNets are loaded per device and dtype; cheap to reload next time
        self.converted.clear()  # compiled from the pipeline's weights; the disk cache compiles them again in seconds
        self.dropped += 1
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def weight_bytes(location: Path) -> int:
    """Bytes of the weight files a model loads (a folder's .safetensors, or the file itself): the bound's estimate
    before a load (after it, `loaded_bytes` replaces it). 0 for a hub id."""
    if location.is_file():
        return location.stat().st_size
    if location.is_dir():
        return sum(p.stat().st_size for p in location.rglob("*.safetensors"))
    return 0


def loaded_bytes(pipe) -> int:
    """Bytes of a loaded pipeline's parameters and buffers (every torch module among its components)."""
    import torch

    modules = [m for m in getattr(pipe, "components", {}).values() if isinstance(m, torch.nn.Module)]
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def preview(pipe, latents):
    """The first latent of the batch through the pipeline's own VAE, downscaled to PREVIEW_LATENT: a PIL image."""
    import numpy as np
    import torch
    from PIL import Image

    lat = latents[:1].detach()
    scale = PREVIEW_LATENT / max(lat.shape[-2:])
    if scale < 1:
        lat = torch.nn.functional.interpolate(lat.float(), scale_factor=scale, mode="bilinear")
    vae = pipe.vae
    factor = getattr(vae.config, "scaling_factor", 1.0) or 1.0
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.inference_mode():
        decoded = vae.decode(lat.to(vae.device, vae.dtype) / factor + shift).sample
    pixels = (decoded[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((pixels * 255).round().astype(np.uint8))


def step_hook(live: Live):
    """The `on_step` of generate.run: progress, a requested stop, and a preview while someone watches (at most a
    fifth of the time: the next preview waits four times as long as the last one took)."""

    def on_step(pipe, step: int, latents) -> None:
        live.stepped(step + 1)
        if live.stop_requested:
            raise Stop(live.stop_requested)
        if live.wants_preview():
            start = time.monotonic()
            try:
                image = preview(pipe, latents)
            except Exception:  # a preview is never worth failing the job for (e.g. an fp16 VAE overflowing)
                return
            live.set_preview(image, step + 1, time.monotonic() - start)

    return on_step


def run_generate(job: Job, fields: dict[str, Any], live: Live, cache: PipelineCache, device: str) -> dict[str, Any]:
    """Every image of a generate job, one at a time; returns the job's result (paths, seeds, control maps, stop)."""
    from sdkit.outputs import read_text_chunks
    from sdkit.tasks import generate
    from sdkit.tasks.registry import get_task

    recipe = get_task("generate").recipe(fields, f"job {job.id}")
    recipe = recipe.model_copy(update={"device": device})
    total = recipe.num_images
    live.begin(job, images=total, steps=generate.effective_steps(recipe))
    images, seeds, infotexts, maps, stopped = [], [], [], [], None
    for k in range(total):
        if live.stop_requested in ("interrupt", "cancel"):
            stopped = live.stop_requested
            break
        live.next_image(k)
        try:
            (result,) = generate.run(recipe, cache, plan=[(k, None)], on_step=step_hook(live))
        except Stop as stop:
            live.clear_skip()
            if stop.kind == "skip":
                continue
            stopped = stop.kind
            break
        images.append(str(result.path))
        seeds.append(result.seed)
        infotexts.append(read_text_chunks(result.path).get("parameters", ""))
        if k == 0:
            maps = [str(p) for p in sorted(result.path.parent.glob(f"{result.path.stem}.control-*.png"))]
    return {"images": images, "seeds": seeds, "infotexts": infotexts, "control_maps": maps, "stopped": stopped}


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends SIGKILL when the worker thread that started it ends (a `kill -9` of
    the server), so no orphan keeps writing into a job's folder while a restarted server resumes it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def stop_previous(folder: Path, timeout: float = 30.0) -> None:
    """Before a job's process starts again (a resumed job): make sure the one a killed server started is gone (it
    gets SIGKILL when the server dies, which can take a moment to land), so two never write one output folder."""
    try:
        pid = int((folder / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(folder / "recipe.yaml").encode() not in cmdline:
        return  # the pid was reused by an unrelated process
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def run_process(job: Job, fields: dict[str, Any], live: Live, folder: Path) -> dict[str, Any]:
    """A task as `python -m sdkit run recipe.yaml` in a child process; progress from its `step k/N` lines, the log kept
    in FOLDER/log.txt, stopped with SIGTERM (trainers save a checkpoint first). Raises UserError on exit 2."""
    import yaml

    from sdkit import atomic

    folder.mkdir(parents=True, exist_ok=True)
    recipe_file = atomic.write_text(folder / "recipe.yaml", yaml.safe_dump({"task": job.task, **fields}, sort_keys=False))
    live.begin(job, images=1, steps=int(fields.get("max_steps") or 0))
    stop_previous(folder)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "sdkit", "run", str(recipe_file)]
    tail: list[str] = []
    with open(folder / "log.txt", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)  # fmt: skip
        live.attach(proc)
        atomic.write_text(folder / "pid", str(proc.pid))
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail = (tail + [line.rstrip("\n")])[-20:]
                found = STEP_LINE.match(line)
                if found:
                    live.stepped(int(found.group(1)), int(found.group(2)))
            code = proc.wait()
        finally:
            live.attach(None)
    output = str(fields.get(task_output_field(job.task)) or "")
    if live.stop_requested and code in (130, 143, -signal.SIGTERM):
        return {"files": [], "output": output, "stopped": live.stop_requested, "exit_code": code}
    if code == 2:
        errors = [t for t in tail if t.startswith("error: ")]
        raise UserError(errors[-1].removeprefix("error: ") if errors else f"{job.task} refused its recipe (exit 2)")
    if code != 0:
        raise RuntimeError(f"{job.task} exited with code {code}: {tail[-1] if tail else 'no output'}")
    files = [t for t in tail if t and not t.startswith(("step ", "warning", "note")) and Path(t).exists()]
    return {"files": files, "output": output, "stopped": None, "exit_code": 0}


def task_output_field(name: str) -> str:
    from sdkit.tasks.registry import get_task

    return get_task(name).output_field
