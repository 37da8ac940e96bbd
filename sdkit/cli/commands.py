"""info, replay, schedulers, run, schema, serve: the top-level commands that are not tasks (their help: sdkit.cli.TOOLS)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sdkit.cli import COMMANDS, guarded
from sdkit.errors import UserError
from sdkit.schema.generate import GenerateRecipe

app = typer.Typer(rich_markup_mode=None)  # its commands are top-level ones: sdkit.cli.COMMANDS lists them

@app.command("info", help=COMMANDS["info"][2])
@guarded
def info(image: Annotated[Path, typer.Argument(help="A PNG written by sdkit.")]) -> None:
    import yaml

    record, _ = recorded(image, "info")
    model = record.get("model", {})
    print(f"# sdkit {record.get('sdkit')} {record.get('task')}; model {model.get('ref')} sha256 {model.get('sha256')}")
    print(yaml.safe_dump({"task": record.get("task"), **record["recipe"]}, sort_keys=False), end="")


def recorded(image: Path, command: str) -> tuple[dict[str, Any], Any]:
    """The sdkit record of a PNG and its recipe, validated as a GenerateRecipe (only generate writes recipes into
    images): a malformed record in anyone's PNG is bad input (exit 2 naming the field), never a crash."""
    from sdkit.outputs import read_recipe
    from sdkit.recipefile import validate

    record = read_recipe(image)
    if record.get("task") != "generate":
        raise UserError(f"{image} was made by task {record.get('task')!r}; sdkit {command} reads generate recipes only")
    return record, validate(GenerateRecipe, record["recipe"], f"{image} (sdkit metadata)")


@app.command("replay", help=COMMANDS["replay"][2])
@guarded
def replay(
    image: Annotated[Path, typer.Argument(help="A PNG written by sdkit.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (never the one recorded in the image).")] = Path("outputs"),
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow pickled weights (never taken from the image).")
    ] = False,
) -> None:
    """The image is untrusted: where to write and whether pickles may load come from this command line only, one
    image is made whatever num_images says, and the files its recipe names are listed on stderr before loading."""
    from sdkit.progress import warn
    from sdkit.tasks import generate as task

    record, recipe = recorded(image, "replay")
    recipe = recipe.model_copy(update={"out": out, "allow_pickle": allow_pickle, "num_images": 1})  # one image recorded
    model, _ = task.check(recipe)
    for line in files_used(recipe, model):
        print(f"replay: {line}", file=sys.stderr)
    recorded_sha = record.get("model", {}).get("sha256")
    if recorded_sha and model.sha256 and recorded_sha != model.sha256:
        warn(f"model {recipe.model} changed since {image} was made (sha256 {recorded_sha[:10]} → {model.sha256[:10]}): pixels will differ")
    task.run(recipe)


def files_used(recipe: GenerateRecipe, model: Any) -> list[str]:
    """What a recipe will read (the model, adapters, images, ControlNets, annotator weights) and where it writes,
    one line each, paths made absolute: a recipe from someone else's PNG may name any file on this machine."""

    def where(path: Path) -> str:
        return str(Path(path).expanduser().resolve())

    lines = [f"model {model.location} ({model.kind}{', sha256 ' + model.sha256[:10] if model.sha256 else ''})"]
    lines += [f"LoRA {where(lora.path)} (weight {lora.weight})" for lora in recipe.lora]
    lines += [f"embedding {where(emb.path)}" + (f" (token {emb.token})" if emb.token else "") for emb in recipe.embedding]
    if recipe.init_image:
        lines.append(f"init image {where(recipe.init_image)}")
    if recipe.mask:
        lines.append(f"mask {where(recipe.mask)}")
    for control in recipe.control:
        net = recipe.controlnet_for(control) or f"the default {control.type} ControlNet"
        lines.append(f"{control.type} control image {where(control.image)} with ControlNet {net}")
    if recipe.control and recipe.annotators_dir:
        lines.append(f"annotator weights from {where(recipe.annotators_dir)}")
    if recipe.tiny_vae:
        lines.append(f"tiny VAE {recipe.tiny_vae}")
    return [f"uses {line}" for line in lines] + [f"writes into {where(recipe.out)}"]


@app.command("schedulers", help=COMMANDS["schedulers"][2])
def schedulers_command() -> None:
    from rich.console import Console
    from rich.table import Table

    from sdkit.schedulers import SCHEDULERS

    table = Table("name", "diffusers class", "arguments", "also", "note", box=None)
    for spec in SCHEDULERS:
        args = ", ".join(f"{k}={v!r}" for k, v in spec.kwargs.items())
        table.add_row(spec.name, spec.cls, args, ", ".join(spec.aliases), spec.note)
    Console(file=sys.stdout, width=200).print(table)


@app.command("run", help=COMMANDS["run"][2])
@guarded
def run_command(
    files: Annotated[list[Path], typer.Argument(help="Recipe YAML files (one job, or jobs: with defaults:).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: --set jobs.0.cfg=5 (repeatable).")] = None,  # noqa: UP045
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate everything (files, models, schedulers) without loading weights.")] = False,
    print_: Annotated[bool, typer.Option("--print", help="Print the fully resolved jobs as YAML and exit.")] = False,
    output_root: Annotated[Optional[Path], typer.Option("--output-root", help="Refuse outputs that resolve outside this folder (for recipe files you did not write).")] = None,  # noqa: UP045
) -> None:
    import os

    import yaml

    from sdkit.jobs.dryrun import dry_run as check_jobs
    from sdkit.jobs.parse import load_file
    from sdkit.jobs.run import run_jobs
    from sdkit.outputs import OUTPUT_ROOT_ENV

    previous = os.environ.get(OUTPUT_ROOT_ENV)
    if output_root is not None:
        os.environ[OUTPUT_ROOT_ENV] = str(output_root)
    try:
        jobs = [job for file in files for job in load_file(file, tuple(set_ or ()))]
        if print_:
            print(yaml.safe_dump([{"task": j.task.name, "name": j.name, **j.raw} for j in jobs], sort_keys=False), end="")
        elif dry_run:
            check_jobs(jobs)
            print(f"ok: {len(jobs)} job(s) valid", file=sys.stderr)
        else:
            run_jobs(jobs)
    finally:
        if previous is None:
            os.environ.pop(OUTPUT_ROOT_ENV, None)
        else:
            os.environ[OUTPUT_ROOT_ENV] = previous


@app.command("schema", help=COMMANDS["schema"][2])
@guarded
def schema_command(task: Annotated[Optional[str], typer.Argument(help="Task name (default: every task).")] = None) -> None:  # noqa: UP045
    import json

    from sdkit.tasks.registry import TASKS, get_task

    tasks = [get_task(task)] if task else list(TASKS)
    schemas = {t.name: t.schema.model_json_schema() for t in tasks}
    print(json.dumps(schemas[task] if task else schemas, indent=2))


@app.command("serve", help=COMMANDS["serve"][2])
@guarded
def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; beyond loopback it needs --api-auth or --insecure.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 7860,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Outputs (the gallery); the queue lives in its .sdkit-server/.")] = Path("outputs"),
    state_dir: Annotated[Optional[Path], typer.Option("--state-dir", help="Queue database, uploads and job logs (default: OUTPUT/.sdkit-server).")] = None,  # noqa: UP045
    models_dir: Annotated[Optional[Path], typer.Option("--models-dir", help="Library: checkpoints/ loras/ embeddings/ vae/ controlnet/ datasets/ (or A1111's folder names).")] = None,  # noqa: UP045
    api_auth: Annotated[Optional[str], typer.Option("--api-auth", help="HTTP basic auth on every route: USER:PASSWORD[,USER:PASSWORD].")] = None,  # noqa: UP045
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without --api-auth.")] = False,
    cors_allow_origins: Annotated[Optional[list[str]], typer.Option("--cors-allow-origins", help="Allow browser pages from this origin (repeatable); CORS is off without it.")] = None,  # noqa: UP045
    device: Annotated[Optional[list[str]], typer.Option("--device", help="One worker per device, e.g. --device cuda:0 --device cuda:1 (default: auto).")] = None,  # noqa: UP045
    dtype: Annotated[str, typer.Option("--dtype", help="auto | fp32 | fp16 | bf16 for every job.")] = "auto",
    max_loaded_models: Annotated[int, typer.Option("--max-loaded-models", help="Warm pipelines per worker; the least recently used is dropped.")] = 2,
    memory_limit_mb: Annotated[Optional[int], typer.Option("--memory-limit-mb", help="Drop the least recently used pipelines past this many MB of weights.")] = None,  # noqa: UP045
    queue_limit: Annotated[int, typer.Option("--queue-limit", help="Queued jobs; more are refused with 429 and Retry-After.")] = 100,
    max_body_mb: Annotated[int, typer.Option("--max-body-mb", help="Largest request body in MiB (413 past it).")] = 64,
    max_images: Annotated[int, typer.Option("--max-images", help="Most images one request may ask for.")] = 100,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level (info shows every request).")] = "warning",
) -> None:
    from sdkit.server.config import ServerConfig
    from sdkit.server.main import serve

    if dtype not in ("auto", "fp32", "fp16", "bf16"):
        raise UserError(f"--dtype {dtype}: use auto, fp32, fp16 or bf16")
    serve(ServerConfig(host=host, port=port, output_dir=output_dir, state_dir=state_dir, models_dir=models_dir,
                       api_auth=api_auth, insecure=insecure, cors_allow_origins=tuple(cors_allow_origins or ()),
                       devices=tuple(device or ("auto",)), dtype=dtype, max_loaded_models=max_loaded_models,
                       memory_limit_mb=memory_limit_mb, queue_limit=queue_limit, max_body_mb=max_body_mb,
                       max_images=max_images), log_level=log_level)  # fmt: skip
