"""sdkit's own routes: the job API (`/sdkit/v1/jobs`: submit any task, read, cancel, follow as server-sent events),
the gallery of the output folder, and the page (`/`, its files under `/static/`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from sdkit.server import gallery
from sdkit.server.store import FINAL

router = APIRouter()
STATIC = Path(__file__).parent / "static"
EVENT_POLL = 0.2  # seconds between looks at a job's progress while streaming it


def hub_of(request: Request):
    return request.app.state.hub


def job_view(hub, job) -> dict[str, Any]:
    view = job.public()
    worker = hub.worker_of(job.id) if job.status == "running" else None
    view["progress"] = worker.live.snapshot() if worker is not None else None
    view["position"] = hub.store.position(job.id) if job.status == "queued" else None
    result = view.get("result") or {}
    out, state = Path(hub.config.output_dir).resolve(), hub.config.state.resolve()
    files = [Path(p).resolve() for p in result.get("images", [])]
    view["outputs"] = [p.relative_to(out).as_posix() for p in files if out in p.parents and state not in p.parents]
    return view


@router.post("/sdkit/v1/jobs", status_code=202)
async def submit(request: Request) -> dict[str, Any]:
    """A job: the body is JSON whatever its Content-Type says (`curl -d '{...}'` sends it as a form)."""
    from sdkit.server.a1111 import FieldError
    from sdkit.server.jobs import task_fields
    from sdkit.server.options import DEFAULT_MODEL

    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise FieldError((), f"the body is not JSON ({type(err).__name__}): send a JSON object") from None
    hub = hub_of(request)
    model = hub.store.options().get("sd_model_checkpoint", DEFAULT_MODEL)
    task, fields, extras = await run_in_threadpool(task_fields, body, hub.config, model)
    if task.name == "generate":
        from sdkit.server.routes_a1111 import checked

        await run_in_threadpool(checked, fields)
    job_id = hub.submit("task", task.name, {"fields": fields, **extras})
    return {"id": job_id, "status": "queued", "url": f"/sdkit/v1/jobs/{job_id}"}


@router.get("/sdkit/v1/jobs")
def list_jobs(request: Request, status: str | None = None, limit: int = 50) -> dict[str, Any]:
    hub = hub_of(request)
    statuses = tuple(s for s in (status or "").split(",") if s)
    return {"jobs": [job_view(hub, job) for job in hub.store.list(statuses, min(max(limit, 1), 500))]}


def get_job(hub, job_id: int):
    job = hub.store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


@router.get("/sdkit/v1/jobs/{job_id}")
def read_job(request: Request, job_id: int) -> dict[str, Any]:
    hub = hub_of(request)
    return job_view(hub, get_job(hub, job_id))


@router.delete("/sdkit/v1/jobs/{job_id}")
def cancel_job(request: Request, job_id: int) -> dict[str, Any]:
    """Cancel a queued job, or stop a running one (a trainer saves a checkpoint first); finished jobs stay as they are."""
    hub = hub_of(request)
    get_job(hub, job_id)
    status = hub.stop_job(job_id, "cancel")
    return {"id": job_id, "status": status}


@router.get("/sdkit/v1/jobs/{job_id}/preview")
def job_preview(request: Request, job_id: int) -> Response:
    """The latest preview of a running job (PNG; 204 while there is none). Asking keeps previews coming."""
    worker = hub_of(request).worker_of(job_id)
    if worker is None:
        return Response(status_code=204)
    worker.live.watch()
    data = worker.live.preview
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"}) if data else Response(status_code=204)


@router.get("/sdkit/v1/jobs/{job_id}/events")
async def job_events(request: Request, job_id: int, preview: bool = False) -> StreamingResponse:
    """Server-sent events: `progress` whenever the job moves (step, image, preview), then one `done` with the job."""
    hub = hub_of(request)
    get_job(hub, job_id)

    async def stream():
        seen = None
        while True:
            job = hub.store.get(job_id)
            if job.status in FINAL:
                yield f"event: done\ndata: {json.dumps(job_view(hub, job))}\n\n"
                return
            worker = hub.worker_of(job_id)
            snap = worker.live.snapshot() if worker is not None else None
            if worker is not None and preview:
                worker.live.watch()
            key = (job.status, snap["version"] if snap else None)
            if key != seen:
                seen = key
                data = {"id": job_id, "status": job.status, "progress": snap, "position": hub.store.position(job_id)}
                yield f"event: progress\ndata: {json.dumps(data)}\n\n"
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.get("/sdkit/v1/gallery")
def gallery_page(request: Request, page: int = 1, per_page: int = 24) -> dict[str, Any]:
    config = hub_of(request).config
    return gallery.page(config.output_dir, config.state, max(page, 1), min(max(per_page, 1), 200))


@router.get("/sdkit/v1/gallery/image/{name:path}")
def gallery_image(request: Request, name: str) -> FileResponse:
    from sdkit.server.uploads import gallery_path

    config = hub_of(request).config
    return FileResponse(gallery_path(name, config.output_dir, config.state), media_type="image/png")


@router.get("/sdkit/v1/gallery/thumb/{name:path}")
def gallery_thumb(request: Request, name: str) -> Response:
    config = hub_of(request).config
    return Response(gallery.thumbnail(config.output_dir, config.state, name), media_type="image/png")


@router.get("/sdkit/v1/gallery/info/{name:path}")
def gallery_info(request: Request, name: str) -> dict[str, Any]:
    config = hub_of(request).config
    found = gallery.settings(config.output_dir, config.state, name)
    found["form"] = gallery.as_form(found.get("recipe"), config.models_dir)
    return found


@router.get("/sdkit/v1/library/{kind}")
def library(request: Request, kind: str) -> list[dict[str, Any]]:
    """What the library holds of one kind (checkpoints, loras, embeddings, vae, controlnet, datasets), by name."""
    from sdkit.server import catalog

    if kind not in catalog.KINDS:
        raise HTTPException(404, f"no library kind {kind!r}: use one of {', '.join(catalog.KINDS)}")
    return [{"name": e.name, "title": e.title if kind in catalog.HASHED else e.name}
            for e in catalog.entries(kind, hub_of(request).config.models_dir)]  # fmt: skip


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")
