"""AUTOMATIC1111's API routes (`/sdapi/v1/...`) and sd-webui-controlnet's (`/controlnet/...`), with the response
shapes A1111 documents. txt2img and img2img are jobs in the queue like any other: the request is checked, queued,
and answered when its job is done (images finished before an interrupt are returned, as A1111 returns them).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Request
from starlette.concurrency import run_in_threadpool

from sdkit.server import a1111, catalog, options
from sdkit.server.a1111 import FieldError
from sdkit.server.a1111_units import MODULES
from sdkit.server.uploads import decode_base64, encode_file

router = APIRouter()
IDLE_STATE = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}  # fmt: skip


class JobFailed(Exception):
    """A job that ended in an error: a user error is answered 400, anything else 500 (A1111's error body)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.status = 500 if message.startswith("internal error") else 400


def ctx_of(request: Request) -> a1111.Context:
    hub = request.app.state.hub
    return a1111.Context(hub.config, options.current(hub.store.options(), hub.config.models_dir))


def checked(fields: dict[str, Any], files: bool = True) -> None:
    """The fields as the generate task validates them, before the job is queued; with `files`, also what
    `generate.check` reads (the model's and adapters' weight files, the images: ~10 ms for the shapes model)."""
    from sdkit.server.jobs import validated
    from sdkit.tasks import generate
    from sdkit.tasks.registry import get_task

    recipe = validated(get_task("generate"), fields)
    if files:
        a1111.at((), generate.check, recipe)


async def run_generation(request: Request, req: a1111.Processing, kind: str) -> dict[str, Any]:
    hub = request.app.state.hub
    ctx = ctx_of(request)
    fields, extras = await run_in_threadpool(a1111.generate_fields, req, kind, ctx)
    await run_in_threadpool(checked, fields, False)  # names came from the library, images were decoded already
    job_id = hub.submit(kind, "generate", {"fields": fields, "a1111": extras})
    job = await hub.wait(job_id)
    if job.status == "failed":
        raise JobFailed(job.error or "failed")
    if extras.get("keep_options"):
        hub.store.set_options(extras["keep_options"])
    return await run_in_threadpool(response, fields, extras, job.result or {})


def response(fields: dict[str, Any], extras: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A1111's TextToImageResponse / ImageToImageResponse: the PNGs as written (infotext included), then the control
    maps of units that keep them; unsaved images are removed once read."""
    maps = [m for m, keep in zip(result.get("control_maps", []), extras["detected_maps"], strict=False) if keep]
    files = [Path(p) for p in result.get("images", [])]
    images = [encode_file(p) for p in [*files, *map(Path, maps)]] if extras["send_images"] else []
    if not extras["save_images"]:
        for path in [*files, *map(Path, result.get("control_maps", []))]:
            path.unlink(missing_ok=True)
    parameters = dict(extras["request"])
    if extras["kind"] == "img2img" and not extras["include_init_images"]:
        parameters.update(init_images=None, mask=None)
    return {"images": images, "parameters": parameters, "info": json.dumps(a1111.info(fields, extras, result))}


@router.post("/sdapi/v1/txt2img")
async def txt2img(request: Request, req: a1111.Txt2Img) -> dict[str, Any]:
    return await run_generation(request, req, "txt2img")


@router.post("/sdapi/v1/img2img")
async def img2img(request: Request, req: a1111.Img2Img) -> dict[str, Any]:
    return await run_generation(request, req, "img2img")


@router.get("/sdapi/v1/progress")
def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
    """A1111's progress of the current generation: 0.01 + images done / images + this image's share of its steps."""
    hub = request.app.state.hub
    busy = [w for w in hub.running() if w.live.task == "generate"]
    if not busy:
        return {"progress": 0, "eta_relative": 0, "state": IDLE_STATE, "current_image": None, "textinfo": None,
                "current_task": None}  # fmt: skip
    live = busy[0].live
    if not skip_current_image:
        live.watch()
    snap = live.snapshot()
    state = {**IDLE_STATE, "job": f"job({snap['job']})", "job_count": snap["images"], "job_no": snap["image"],
             "sampling_step": snap["step"], "sampling_steps": snap["steps"], "interrupted": snap["stopping"] == "interrupt",
             "skipped": snap["stopping"] == "skip", "job_timestamp": str(int(snap["started"]))}  # fmt: skip
    done = 0.01 + (snap["image"] + (snap["step"] / snap["steps"] if snap["steps"] else 0)) / max(snap["images"], 1)
    preview = live.preview if not skip_current_image else None
    return {"progress": min(done, 1.0), "eta_relative": snap["eta"], "state": state,
            "current_image": base64.b64encode(preview).decode("ascii") if preview else None, "textinfo": None,
            "current_task": f"task({snap['job']})"}  # fmt: skip


def stop_generations(request: Request, kind: str) -> None:
    for worker in request.app.state.hub.running():
        if worker.live.task == "generate":
            worker.live.request_stop(kind)


@router.post("/sdapi/v1/interrupt")
def interrupt(request: Request) -> dict[str, Any]:
    stop_generations(request, "interrupt")
    return {}


@router.post("/sdapi/v1/skip")
def skip(request: Request) -> None:
    stop_generations(request, "skip")


@router.get("/sdapi/v1/sd-models")
def sd_models(request: Request) -> list[dict[str, Any]]:
    models_dir = request.app.state.hub.config.models_dir
    return [{"title": e.title, "model_name": catalog.model_name(e), "hash": e.short_hash, "sha256": e.sha256,
             "filename": str(e.path), "config": None} for e in catalog.entries("checkpoints", models_dir)]  # fmt: skip


@router.get("/sdapi/v1/sd-vae")
def sd_vae(request: Request) -> list[dict[str, Any]]:
    return [{"model_name": e.name, "filename": str(e.path)} for e in catalog.entries("vae", request.app.state.hub.config.models_dir)]


@router.get("/sdapi/v1/loras")
def loras(request: Request) -> list[dict[str, Any]]:
    from sdkit.lora_io import read_metadata

    found = []
    for e in catalog.entries("loras", request.app.state.hub.config.models_dir):
        try:
            metadata = read_metadata(e.path)
        except Exception:  # an unreadable file is listed without metadata; using it fails with the reason
            metadata = {}
        found.append({"name": e.name, "alias": e.name, "path": str(e.path), "metadata": metadata})
    return found


@router.get("/sdapi/v1/embeddings")
def embeddings(request: Request) -> dict[str, Any]:
    from safetensors import safe_open

    loaded = {}
    for e in catalog.entries("embeddings", request.app.state.hub.config.models_dir):
        try:
            with safe_open(str(e.path), framework="pt") as f:
                shape = [f.get_slice(k).get_shape() for k in f.keys()][0]
        except Exception:
            continue
        vectors, width = (shape[0], shape[-1]) if len(shape) == 2 else (1, shape[-1])
        loaded[e.name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": width, "vectors": vectors}
    return {"loaded": loaded, "skipped": {}}


@router.get("/sdapi/v1/samplers")
def samplers() -> list[dict[str, Any]]:
    from sdkit.schedulers import SAMPLERS

    return [{"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.kwargs.items()}} for s in SAMPLERS]


@router.get("/sdapi/v1/schedulers")
def schedulers() -> list[dict[str, Any]]:
    """The schedule types sdkit runs, as A1111's sd_schedulers lists them (name, label, aliases, default_rho)."""
    from sdkit.schedulers import SCHEDULES

    inner = ("SGM Uniform", "Simple", "Normal", "DDIM")  # A1111's schedules computed from the model's own timesteps
    return [{"name": label.lower().replace(" ", "_"), "label": label, "aliases": ["SGMUniform"] if label == "SGM Uniform" else None,
             "default_rho": 7.0 if label == "Karras" else -1, "need_inner_model": label in inner}
            for label, runs in SCHEDULES.items() if runs is not None]  # fmt: skip


@router.get("/sdapi/v1/options")
def get_options(request: Request) -> dict[str, Any]:
    hub = request.app.state.hub
    return options.current(hub.store.options(), hub.config.models_dir)


@router.post("/sdapi/v1/options")
def set_options(request: Request, body: dict[str, Any] = Body(...)) -> None:
    hub = request.app.state.hub
    models_dir = hub.config.models_dir
    hub.store.set_options({key: a1111.at((key,), options.check_option, key, value, models_dir)
                           for key, value in body.items()})  # every value checked before any is stored


@router.post("/sdapi/v1/png-info")
def png_info(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    from sdkit.server.pnginfo import parse, read

    image = body.get("image")
    if not isinstance(image, str) or not image.strip():
        raise FieldError(("image",), "give the image as base64")
    infotext, items = a1111.at(("image",), lambda: read(decode_base64(image.strip(), "image")))
    return {"info": infotext, "items": items, "parameters": parse(infotext) if infotext else {}}


@router.post("/sdapi/v1/refresh-checkpoints")
@router.post("/sdapi/v1/refresh-loras")
@router.post("/sdapi/v1/refresh-vae")
@router.post("/sdapi/v1/refresh-embeddings")
def refresh() -> None:
    """The library is read afresh on every listing: nothing to refresh."""


@router.get("/controlnet/version")
def controlnet_version() -> dict[str, int]:
    return {"version": 3}


@router.get("/controlnet/model_list")
def controlnet_models(request: Request) -> dict[str, list[str]]:
    return {"model_list": [e.name for e in catalog.entries("controlnet", request.app.state.hub.config.models_dir)]}


@router.get("/controlnet/module_list")
def controlnet_modules() -> dict[str, Any]:
    return {"module_list": [m for m in MODULES if m != "invert"], "module_detail": {}}
