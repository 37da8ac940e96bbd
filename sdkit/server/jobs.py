"""sdkit's own job API: `POST /sdkit/v1/jobs` takes any task of the registry as a recipe-file job takes it
(`{"task": "generate", "prompt": ..., ...}`), validated by the same schemas (`Task.recipe`).

Everything that names a file is resolved by the server, never taken as a path: models, LoRAs, embeddings, VAEs,
ControlNets and datasets are library names (`catalog`), and so are `<lora:NAME:W>` tags in a prompt; a field that
takes a hub id (a CLIP model, a convert source) is refused when it names a local path; images are `gallery:NAME` (an output) or a data: URL
(an upload); outputs go under the output folder, to `<task>/<run>` (generate: `generate/`), or to a plain folder
name the client gives. A last check refuses any path in the validated recipe that lies outside the server's own
folders, so a field this module does not know about cannot smuggle one in.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sdkit.errors import UserError
from sdkit.server import catalog
from sdkit.server.a1111 import FieldError, at
from sdkit.server.config import ServerConfig
from sdkit.server.uploads import image_ref

MODEL_FIELDS = {"model": "checkpoints", "tiny_vae": "vae", "vae": "vae", "refiner": "checkpoints",
                "init_from": "checkpoints"}  # generate / eval / trainers / convert; controlnet below  # fmt: skip
NAME_FIELDS = ("source", "clip_model")  # a library name or a hub id, never a local path
DATASET_FIELDS = ("data_dir", "instance_data_dir", "class_data_dir")
IMAGE_FIELDS = {"init_image": "RGB", "mask": "L", "image": "RGB"}
SERVER_FIELDS = ("annotators_dir", "allow_pickle", "models_dir")  # settings of the server's machine, not a client's
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def find(kind: str, name: Any, loc: tuple, config: ServerConfig) -> str:
    if not isinstance(name, str):
        raise FieldError(loc, f"give a {catalog.LABELS[kind]} name from the library")
    return at(loc, catalog.find, kind, name, config.models_dir).ref


def output_path(task, given: Any, config: ServerConfig) -> str:
    """Where a job writes: a plain folder (or, for a single-file output, file) name under OUTPUT/<task>/, or a new
    run folder. generate writes into OUTPUT/generate/ by default, numbering on as the CLI does."""
    field = task.output_field
    if given is not None:
        if not isinstance(given, str) or not PLAIN_NAME.match(given):
            raise FieldError((field,), "give a plain name (letters, digits, . _ -): outputs stay in the output folder")
        return str(Path(config.output_dir) / task.name / given)
    if task.name == "generate":
        return str(Path(config.output_dir) / "generate")
    run = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    return str(Path(config.output_dir) / task.name / (f"{run}.png" if field == "output" else run))


def not_a_path(value: Any, loc: tuple) -> None:
    text = str(value)
    if Path(text).is_absolute() or text.startswith(("~", ".")) or ".." in Path(text).parts or Path(text).exists():
        raise FieldError(loc, f"{text!r} is a path: the server takes names from its library (or hub ids), not paths")


def adapters(fields: dict[str, Any], config: ServerConfig) -> None:
    """lora / embedding / control / controlnet entries of a generate recipe and the prompt's `<lora:>` tags: names in
    the library, images uploaded."""
    from sdkit.server.a1111 import prompt_loras

    for i, item in enumerate(fields.get("lora") or []):
        name, weight = (item.rsplit(":", 1) + ["1"])[:2] if isinstance(item, str) else (item.get("path"), item.get("weight", 1.0))
        unet = item.get("unet_weight") if isinstance(item, dict) else None
        fields["lora"][i] = {"path": find("loras", name, ("lora", i), config), "weight": weight,
                             **({"unet_weight": unet} if unet is not None else {})}  # fmt: skip
    if isinstance(fields.get("prompt"), str):
        fields["prompt"], tagged = prompt_loras(fields["prompt"], config.models_dir)
        if tagged:
            fields["lora"] = [*(fields.get("lora") or []), *tagged]
    for i, item in enumerate(fields.get("embedding") or []):
        name, token = (item.split(":", 1) + [None])[:2] if isinstance(item, str) else (item.get("path"), item.get("token"))
        fields["embedding"][i] = {"path": find("embeddings", name, ("embedding", i), config), "token": token or name}
    for i, item in enumerate(fields.get("control") or []):
        if not isinstance(item, dict):
            raise FieldError(("control", i), "give {type, image, scale, model, ...}: images are data: URLs or gallery: names")
        item = dict(item)
        item["image"] = str(at(("control", i, "image"), image_ref, item.get("image"), f"control.{i}.image",
                                config.output_dir, config.state))  # fmt: skip
        if item.get("model") is not None:
            item["model"] = find("controlnet", item["model"], ("control", i, "model"), config)
        fields["control"][i] = item
    for i, item in enumerate(fields.get("controlnet") or []):
        kind, sep, name = str(item).partition("=")
        fields["controlnet"][i] = f"{kind}={find('controlnet', name, ('controlnet', i), config)}" if sep else item


def task_fields(body: Any, config: ServerConfig, default_model: str | None = None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(task, recipe fields as JSON, payload extras) of a job request; FieldError on anything the server refuses.
    A task that takes a model and names none gets `default_model` (A1111's sd_model_checkpoint option)."""
    from sdkit.tasks.registry import get_task

    if not isinstance(body, dict):
        raise FieldError((), "send a JSON object: {\"task\": NAME, ...the task's recipe fields}")
    fields = dict(body)
    task = at(("task",), get_task, fields.pop("task", None))
    if fields.get("task") is None and "task" in task.schema.model_fields:
        fields["task"] = task.name  # schemas that carry their own task name (train-controlnet)
    for name in SERVER_FIELDS:
        if fields.get(name):
            raise FieldError((name,), "set on the server, not in a request")
    if fields.get("device", "auto") != "auto":
        raise FieldError(("device",), "the server runs each job on its worker's device: leave device out")
    if fields.get("resume") not in (None, "latest"):
        raise FieldError(("resume",), "give resume: latest (continue the run in the named output folder) or leave it out")
    fields[task.output_field] = output_path(task, fields.get(task.output_field), config)
    schema_fields = task.schema.model_fields
    if default_model and "model" in schema_fields and "model" not in fields and isinstance(schema_fields["model"].default, str):
        fields["model"] = default_model
    if "dtype" in schema_fields:
        fields.setdefault("dtype", config.dtype)
    for name, kind in MODEL_FIELDS.items():
        if fields.get(name) is not None and name in schema_fields:
            fields[name] = find(kind, fields[name], (name,), config)
    for name in NAME_FIELDS:
        if fields.get(name) is not None and name in schema_fields:
            not_a_path(fields[name], (name,))
    if fields.get("config") is not None:
        from sdkit.families import FAMILIES

        if fields["config"] not in FAMILIES:
            raise FieldError(("config",), f"give a model family ({', '.join(FAMILIES)}): the server takes no config files")
    if config.models_dir is not None and "models_dir" in schema_fields:
        fields["models_dir"] = [str(config.models_dir)]  # names inside recipes (embeddings in prompts) read the same library
    if task.name == "train-controlnet" and fields.get("controlnet") is not None:
        fields["controlnet"] = find("controlnet", fields["controlnet"], ("controlnet",), config)
    elif task.name == "generate":
        adapters(fields, config)
    for name in DATASET_FIELDS:
        if fields.get(name) is not None:
            fields[name] = find("datasets", fields[name], (name,), config)
    for name, mode in IMAGE_FIELDS.items():
        if fields.get(name) is not None:
            fields[name] = str(at((name,), image_ref, fields[name], name, config.output_dir, config.state, mode))
    if fields.get("validation_conditioning"):
        fields["validation_conditioning"] = [
            str(at(("validation_conditioning", i), image_ref, v, f"validation_conditioning.{i}", config.output_dir, config.state))
            for i, v in enumerate(fields["validation_conditioning"])]  # fmt: skip
    if task.name == "generate" and fields.get("seed") in (None, -1):
        fields["seed"] = secrets.randbelow(2**32)  # explicit, so a job run again after a restart makes the same images
    recipe = validated(task, fields)
    if task.name == "generate" and recipe.num_images > config.max_images:
        raise FieldError(("num_images",), f"give at most {config.max_images} images per job (--max-images)")
    data = recipe.model_dump(mode="json", exclude_defaults=False)
    confined(recipe, config)
    return task, data, {"_resumable": task.name.startswith("train-")}


def validated(task, fields: dict[str, Any]):
    try:
        return task.recipe(fields, "body")
    except UserError as err:
        key = re.match(r"^body (\S+?):", str(err))
        loc = tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", key.group(1)) if p) if key else ()
        raise FieldError(loc, str(err).removeprefix("body ")) from None


def paths_in(value: Any):
    """Every Path in a validated recipe (nested models and lists included)."""
    if isinstance(value, Path):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from paths_in(getattr(value, name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from paths_in(item)


def confined(recipe: Any, config: ServerConfig) -> None:
    """Refuse a recipe that names a path outside the server's folders (output, state, the library, sdkit's assets)."""
    from sdkit.models import ASSETS

    roots = [Path(config.output_dir).resolve(), config.state.resolve(), ASSETS.resolve(), *catalog.folders(config.models_dir)]
    for path in paths_in(recipe):
        resolved = Path(path).resolve()
        if not any(resolved == root or root in resolved.parents for root in roots):
            raise FieldError((), f"{path} is not a file of this server: name files from the library or the gallery")
