"""The workers: one thread per device takes jobs from the queue in order and runs them (`runs.py`); `Hub` is what
the routes talk to (submit, wait, stop, progress).

A route that answers when its job is done (A1111's txt2img) awaits an asyncio future that the worker resolves from
its thread; nothing blocks the event loop. Progress lives in each worker's `Live`, read by /progress, the job
API's events and the page.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.server.config import ServerConfig
from sdkit.server.store import Job, JobStore

log = logging.getLogger("sdkit.server")
WATCH_SECONDS = 5.0  # a preview request keeps previews coming for this long


class Live:
    """The progress of a worker's current job, written by the worker thread, read by the routes (under a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.job_id: int | None = None
        self.task = ""
        self.step = self.steps = self.image = self.images = 0
        self.started = 0.0
        self.version = 0  # bumped on every change (server-sent events send when it moves)
        self.preview: bytes | None = None
        self.preview_step = 0
        self.next_preview = 0.0
        self.watched_until = 0.0
        self.stop_requested: str | None = None
        self.child = None

    def begin(self, job: Job, images: int, steps: int) -> None:
        with self.lock:
            self.job_id, self.task, self.images, self.steps = job.id, job.task, images, steps
            self.step = self.image = 0
            self.started = time.time()
            self.preview, self.preview_step, self.next_preview = None, 0, 0.0
            self.version += 1

    def end(self) -> None:
        with self.lock:
            self.job_id, self.stop_requested, self.child = None, None, None
            self.version += 1

    def next_image(self, k: int) -> None:
        with self.lock:
            self.image, self.step = k, 0
            self.version += 1

    def stepped(self, step: int, steps: int | None = None) -> None:
        with self.lock:
            self.step = step
            if steps:
                self.steps = steps
            self.version += 1

    def progress(self) -> float:
        """0..1 over the whole job (images done plus the current one's steps)."""
        if not self.images:
            return 0.0
        within = self.step / self.steps if self.steps else 0.0
        return min(1.0, (self.image + within) / self.images)

    def eta(self) -> float:
        done = self.progress()
        spent = time.time() - self.started
        return spent / done - spent if done > 0 else 0.0

    def request_stop(self, kind: str) -> None:
        with self.lock:
            if self.stop_requested in ("interrupt", "cancel") and kind == "skip":
                return
            self.stop_requested = kind
            child = self.child
        if child is not None and child.poll() is None:
            child.terminate()  # trainers save a checkpoint on SIGTERM, then exit 143

    def clear_skip(self) -> None:
        with self.lock:
            if self.stop_requested == "skip":
                self.stop_requested = None

    def attach(self, child) -> None:
        with self.lock:
            self.child = child
        if child is not None and self.stop_requested:
            child.terminate()

    def watch(self) -> None:
        with self.lock:
            self.watched_until = time.monotonic() + WATCH_SECONDS

    def wants_preview(self) -> bool:
        now = time.monotonic()
        return now < self.watched_until and now >= self.next_preview

    def set_preview(self, image, step: int, cost: float) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        with self.lock:
            self.preview, self.preview_step = buffer.getvalue(), step
            self.next_preview = time.monotonic() + 4 * cost
            self.version += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"job": self.job_id, "task": self.task, "step": self.step, "steps": self.steps, "image": self.image,
                    "images": self.images, "progress": self.progress(), "eta": self.eta(), "started": self.started,
                    "preview_step": self.preview_step if self.preview else None, "version": self.version,
                    "stopping": self.stop_requested}  # fmt: skip


class Worker(threading.Thread):
    """Runs queued jobs one after another on one device."""

    def __init__(self, hub: Hub, index: int, device: str):
        super().__init__(name=f"sdkit-worker-{index}", daemon=True)
        from sdkit.server.runs import BoundedCache

        self.hub, self.device = hub, device
        self.live = Live()
        self.cache = BoundedCache(hub.config.max_loaded_models, hub.config.memory_limit_mb)

    def run(self) -> None:
        while not self.hub.stopping.is_set():
            job = self.hub.store.claim(self.name)
            if job is None:
                with self.hub.wake:
                    self.hub.wake.wait(timeout=1.0)
                continue
            try:
                status, result, error = self.execute(job)
                self.hub.store.finish(job.id, status, result, error)
            except Exception:  # the queue itself failed (a full disk): the job stays running until a restart
                log.error("worker %s: job %s could not be recorded:\n%s", self.name, job.id, traceback.format_exc())
            finally:
                self.live.end()
                self.hub.resolve(job.id)

    def execute(self, job: Job) -> tuple[str, dict[str, Any] | None, str | None]:
        from sdkit.server.runs import run_generate, run_process

        fields = dict(job.payload["fields"])
        try:
            if job.task == "generate":
                result = run_generate(job, fields, self.live, self.cache, self.device)
            else:
                if job.payload.get("_resumable"):
                    fields["resume"] = "latest"  # a fresh start when there is no checkpoint yet
                result = run_process(job, fields, self.live, self.hub.config.state / "jobs" / str(job.id))
        except UserError as err:
            return "failed", None, str(err)
        except Exception as err:  # a bug or a library failure: the job fails, the server goes on
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            return "failed", None, f"internal error: {type(err).__name__}: {str(err)[:500]}"
        stopped = result.get("stopped")
        return {"cancel": "cancelled", "interrupt": "interrupted"}.get(stopped, "done"), result, None


class Hub:
    """The queue, the workers, and the futures of the requests waiting for their jobs."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.store = JobStore(config.state / "queue.sqlite3")
        self.recovered = self.store.recover()
        self.stopping = threading.Event()
        self.wake = threading.Condition()
        self.waiters: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self.waiters_lock = threading.Lock()
        self.workers = [Worker(self, i, device) for i, device in enumerate(config.devices)]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; a running generation stops at its next step (interrupted), a child gets SIGTERM."""
        self.stopping.set()
        for worker in self.workers:
            worker.live.request_stop("interrupt")
        with self.wake:
            self.wake.notify_all()
        for worker in self.workers:
            if worker.is_alive():
                worker.join(timeout)

    def submit(self, kind: str, task: str, payload: dict[str, Any]) -> int:
        job_id = self.store.submit(kind, task, payload, self.config.queue_limit)
        with self.wake:
            self.wake.notify_all()
        return job_id

    async def wait(self, job_id: int) -> Job:
        """The job once it is final (done, failed, interrupted or cancelled)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.waiters_lock:
            self.waiters.setdefault(job_id, []).append((loop, future))
        job = self.store.get(job_id)
        if job is None or job.status not in ("queued", "running"):
            self.resolve(job_id)  # already final: nobody else will
        await future
        return self.store.get(job_id)

    def resolve(self, job_id: int) -> None:
        with self.waiters_lock:
            waiting = self.waiters.pop(job_id, [])
        for loop, future in waiting:
            loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_result(True))

    def running(self) -> list[Worker]:
        return [w for w in self.workers if w.live.job_id is not None]

    def worker_of(self, job_id: int) -> Worker | None:
        return next((w for w in self.workers if w.live.job_id == job_id), None)

    def stop_job(self, job_id: int, kind: str = "cancel") -> str | None:
        """Cancel a queued job, or stop a running one; its status now (None: no such job)."""
        status = self.store.cancel(job_id)
        worker = self.worker_of(job_id)
        if status == "running" and worker is not None:
            worker.live.request_stop(kind)
        elif status == "cancelled":
            self.resolve(job_id)
        return status

    def job_folder(self, job_id: int) -> Path:
        return self.config.state / "jobs" / str(job_id)
