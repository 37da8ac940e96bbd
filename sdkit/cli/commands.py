"""info, replay, schedulers, run, schema, models, serve: the commands that are not tasks (their help: sdkit.cli.TOOLS)."""

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
def info(image: Annotated[Path, typer.Argument(help="An image written by sdkit, A1111, Forge, civitai or ComfyUI.")]) -> None:
    import yaml

    from sdkit.image_import import image_text, import_image

    if "sdkit" not in image_text(image):  # another generator's image: its settings, names as written in it
        imported = import_image(image, resolver=lambda kind, name, short_hash: name or short_hash)
        print(f"# {imported.source} of {image}; models, LoRAs and embeddings as named there (sdkit replay finds them)")
        if imported.ignored:
            print(f"# not reproduced by sdkit: {', '.join(imported.ignored)}")
        print(yaml.safe_dump({"task": "generate", **imported.fields}, sort_keys=False), end="")
        return
    record, _ = recorded(image, "info")
    model = record.get("model", {})
    print(f"# sdkit {record.get('sdkit')} {record.get('task')}; model {model.get('ref')} sha256 {model.get('sha256')}")
    print(yaml.safe_dump({"task": record.get("task"), **record["recipe"]}, sort_keys=False), end="")


def recorded(image: Path, command: str) -> tuple[dict[str, Any], Any]:
    """The sdkit record of an image and its recipe, validated as a GenerateRecipe (only generate writes recipes into
    images): a malformed record in anyone's image is bad input (exit 2 naming the field), never a crash. An image
    without sdkit's record (A1111, Forge, civitai, ComfyUI) gives the recipe its settings describe, found through
    `sdkit.infotext` (what sdkit cannot reproduce is one warning line); its record is then empty."""
    from sdkit.image_import import image_text, import_image
    from sdkit.outputs import read_recipe
    from sdkit.progress import warn
    from sdkit.recipefile import validate

    if "sdkit" not in image_text(image):
        imported = import_image(image)
        if imported.ignored:
            warn(f"{image}: sdkit does not reproduce {', '.join(imported.ignored)}")
        return {}, validate(GenerateRecipe, imported.fields, f"{image} ({imported.source})")
    record = read_recipe(image)
    if record.get("task") != "generate":
        raise UserError(f"{image} was made by task {record.get('task')!r}; sdkit {command} reads generate recipes only")
    return record, validate(GenerateRecipe, record["recipe"], f"{image} (sdkit metadata)")


def from_png_fields(image: Path, given: dict[str, Any]) -> dict[str, Any]:
    """`sdkit generate --from-png IMAGE`: the recipe fields the image describes, for the flags given to override.
    Fields the flags set are not looked up (a model given with -m need not exist under the image's name)."""
    from sdkit.image_import import import_image, library_resolver
    from sdkit.progress import warn

    skip = frozenset(k for k, v in given.items() if v not in (None, [], ()))
    imported = import_image(image, library_resolver(given.get("models_dir") or None), skip)
    if imported.ignored:
        warn(f"{image}: sdkit does not reproduce {', '.join(imported.ignored)}")
    return imported.fields


@app.command("replay", help=COMMANDS["replay"][2])
@guarded
def replay(
    image: Annotated[Path, typer.Argument(help="An image written by sdkit, A1111, Forge, civitai or ComfyUI.")],
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
    if recipe.vae:
        lines.append(f"VAE {recipe.vae}")
    return [f"uses {line}" for line in lines] + [f"writes into {where(recipe.out)}"]


@app.command("schedulers", help=COMMANDS["schedulers"][2])
@guarded
def schedulers_command(
    plot: Annotated[Optional[list[str]], typer.Option("--plot", help="Plot the sigma/timestep schedule of this sampler (repeatable) instead of listing.")] = None,  # noqa: UP045
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000, help="With --plot: the number of steps.")] = 20,
    model: Annotated[str, typer.Option("--model", "-m", help="With --plot: the model whose scheduler config the samplers are built on.")] = "shapes",
    out: Annotated[Path, typer.Option("--out", "-o", help="With --plot: the PNG to write.")] = Path("schedule.png"),
) -> None:
    if plot:
        print(plot_schedules(plot, steps, model, out))
        return
    from rich.console import Console
    from rich.table import Table

    from sdkit.schedulers import REFUSED, SAMPLERS, types_for

    table = Table("sampler", "Automatic", "schedule types", "diffusers class", "arguments", "also", "note", box=None)
    for spec in SAMPLERS:
        args = ", ".join(f"{k}={v!r}" for k, v in spec.kwargs.items())
        automatic = spec.automatic or "model's own"
        table.add_row(spec.name, automatic, ", ".join(t for t in types_for(spec) if t != "Automatic"), spec.cls, args,
                      ", ".join(spec.aliases), spec.note)
    console = Console(file=sys.stdout, width=240)
    console.print(table)
    console.print("Automatic on a zero-terminal-SNR model (the shapes model): the model's own schedule.")
    console.print("Refused (diffusers cannot run them):")
    for name, reason in REFUSED.items():
        console.print(f"  {name}: {reason}")


def plot_schedules(names: list[str], steps: int, model: str, out: Path) -> Path:
    """`sdkit schedulers --plot`: the schedules the named samplers run at `steps` steps, built as sdkit builds them."""
    from sdkit.outputs import confine
    from sdkit.plots import schedule_of, schedule_plot, scheduler_config
    from sdkit.schedulers import resolve

    for name in names:
        resolve(name)
    confine(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the plot is a PNG; give a file name ending in .png")
    ref, config = scheduler_config(model)
    return schedule_plot(out, [schedule_of(name, config, steps) for name in names], ref.name)


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


@app.command("models", help=COMMANDS["models"][2])
@guarded
def models_command(
    kind: Annotated[Optional[str], typer.Argument(help="checkpoints, loras, embeddings, vae or controlnet (default: all).")] = None,  # noqa: UP045
    models_dir: Annotated[Optional[list[Path]], typer.Option("--models-dir", help="Library folder (repeatable); default: $SDKIT_MODELS, else models_dir in ~/.config/sdkit/config.yaml.")] = None,  # noqa: UP045
    hashes: Annotated[bool, typer.Option("--hash/--no-hash", help="Show each file's short hash (read once, then cached).")] = True,
) -> None:
    """One table per kind on stdout: NAME (what -m/--lora/... take), FAMILY, SIZE, HASH (A1111's short hash) and, for
    LoRAs, trigger words. The folders read are named on stderr."""
    from sdkit import library
    from sdkit.model_info import human_size, row

    kinds = [kind] if kind else list(library.KINDS)
    if kind is not None and kind not in library.KINDS:
        raise UserError(f"unknown kind {kind!r}: use one of {', '.join(library.KINDS)}")
    roots = library.roots(models_dir)
    if not roots:
        raise UserError("no model library is set: give --models-dir DIR, or set $SDKIT_MODELS or models_dir in "
                        "~/.config/sdkit/config.yaml")  # fmt: skip
    for root in roots:
        print(f"library {root.path} ({root.layout} layout)", file=sys.stderr)
    memo: dict = {}
    for name in kinds:
        rows = [row(entry, with_hash=hashes, memo=memo) for entry in library.entries(name, models_dir)]
        print(f"{name} ({len(rows)})")
        if not rows:
            continue
        table = [("NAME", "FAMILY", "SIZE", "HASH", "TRIGGER WORDS" if name == "loras" else "")]
        table += [(r.name, r.family, human_size(r.size), r.short_hash, r.triggers) for r in rows]
        widths = [max(len(line[i]) for line in table) for i in range(5)]
        for line in table:
            print("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@app.command("serve", help=COMMANDS["serve"][2])
@guarded
def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; beyond loopback it needs --api-auth or --insecure.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 7860,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Outputs (the gallery); the queue lives in its .sdkit-server/.")] = Path("outputs"),
    state_dir: Annotated[Optional[Path], typer.Option("--state-dir", help="Queue database, uploads and job logs (default: OUTPUT/.sdkit-server).")] = None,  # noqa: UP045
    models_dir: Annotated[Optional[Path], typer.Option("--models-dir", help="Model library (sdkit, ComfyUI or A1111 layout) and its datasets/; default: $SDKIT_MODELS, else the config file.")] = None,  # noqa: UP045
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
