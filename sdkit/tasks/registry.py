"""The task registry: every task sdkit runs, with its schema, its runner and its command. It is the one table the CLI
commands, `sdkit run` (the `task:` key of a recipe file), the Python API and the server read.

A task is a kind of work (generate, train-lora, ...); its recipe is the typed settings of one run (a `*Recipe`
schema, written as YAML in a recipe file); a job is one run of a task in a recipe file. Schemas and runners are
named by import path and loaded lazily, so reading this table costs nothing at start-up (`sdkit --help`). Adding a
task is its module plus one line here.

    task = get_task("train-lora")
    recipe = task.recipe({"data_dir": "data", "output_dir": "out"}, source="my.yaml")   # one-line UserErrors
    result = task.run(recipe)
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdkit.errors import UserError


@dataclass(frozen=True)
class Task:
    name: str  # the `task:` key of recipe files
    command: tuple[str, ...]  # the CLI command: ("generate",) or (group, name), e.g. ("train", "lora")
    schema_ref: str  # "module:Class" of the recipe schema
    runner_ref: str  # "module:function" taking the recipe, returning the result
    output_field: str  # the recipe field naming what the task writes
    help: str
    uses_pipelines: bool = False  # the runner takes `cache=` (a PipelineCache shared by the jobs of a run)
    processes: str = "main"  # under accelerate launch: "main" (rank 0 only), "all" (DDP training), "split" (work shared)
    reports: bool = True  # the CLI prints the result's paths on stdout (generate and eval print their own as they go)

    @property
    def schema(self) -> type:
        return _load(self.schema_ref)

    def run(self, recipe: Any, **kwargs: Any) -> Any:
        return _load(self.runner_ref)(recipe, **kwargs)

    def recipe(self, fields: Mapping[str, Any], source: str, *, flags: Mapping[str, str] | None = None, where: str = "") -> Any:
        """The one way fields become this task's typed recipe (CLI flags and --recipe files, recipe files' jobs, the
        Python API): a `task:` key must name this task and is dropped; the rest is validated with one-line errors
        naming the file, line and key (`sdkit.recipefile.validate`; `where` prefixes the key, e.g. "jobs[1].")."""
        from sdkit.recipefile import LineMap, validate

        if not isinstance(fields, Mapping):
            raise UserError(f"{source}: a recipe must be a mapping of keys to values (got {type(fields).__name__})")
        named = fields.get("task", self.name)
        if named != self.name:
            raise UserError(f"{source}: task {named!r} is not {self.name!r}: run it with `sdkit run`, or give the task's own fields")
        data = LineMap({k: v for k, v in fields.items() if k != "task"})
        data.lines = getattr(fields, "lines", {})
        return validate(self.schema, data, source, flags, where=where, task=self.name)

    def output_of(self, recipe: Any, result: Any) -> str:
        """What later jobs reference as ${jobs.NAME.output}: a returned path, a trainer's first file, or the output field."""
        files = result_files(result)
        return str(files[0]) if files else str(getattr(recipe, self.output_field))


def result_files(result: Any) -> list[Path]:
    """The paths a runner's result names: a returned path, or a result's `files`."""
    if isinstance(result, (str, Path)):
        return [Path(result)]
    return [Path(f) for f in getattr(result, "files", None) or ()]


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _trainer(name: str, schema_ref: str, help: str) -> Task:
    """`sdkit train NAME`: task train-NAME, runner sdkit.tasks.train_NAME:run, on every process of a launch (DDP)."""
    runner = f"sdkit.tasks.train_{name.replace('-', '_')}:run"
    return Task(f"train-{name}", ("train", name), schema_ref, runner, "output_dir", help, processes="all")


TASKS: tuple[Task, ...] = (
    Task("generate", ("generate",), "sdkit.schema.generate:GenerateRecipe", "sdkit.tasks.generate:run", "out",
         "Generate images: txt2img; img2img with --init-image; inpaint with --init-image and --mask.",
         uses_pipelines=True, processes="split", reports=False),
    Task("eval", ("eval", "shapes"), "sdkit.schema.eval:EvalShapesRecipe", "sdkit.tasks.eval_shapes:run", "out",
         "Generate from held-out prompts and seeds and score colour, shape and background adherence.",
         uses_pipelines=True, reports=False),
    Task("eval-clip-score", ("eval", "clip-score"), "sdkit.schema.eval:ClipScoreRecipe", "sdkit.tasks.eval_clip:run_score", "images", "CLIP score of a folder of images against their prompts (each PNG's recipe or infotext, or --prompts).", reports=False),
    Task("eval-clip-directional", ("eval", "clip-directional"), "sdkit.schema.eval:ClipDirectionalRecipe", "sdkit.tasks.eval_clip:run_directional", "pairs", "CLIP directional similarity of edits (init image, output, source caption, edit caption).", reports=False),
    Task("eval-fid", ("eval", "fid"), "sdkit.schema.eval:FidRecipe", "sdkit.tasks.eval_fid:run", "images", "FID and KID of a folder of images against a reference folder (Inception-v3 features, torchmetrics).", reports=False),
    Task("eval-sweep", ("eval", "sweep"), "sdkit.schema.eval:EvalSweepRecipe", "sdkit.tasks.eval_sweep:run", "out", "Generate one recipe over samplers x steps (or cfg, or LoRA weight) and score every cell: grid, plot and JSON.", uses_pipelines=True, reports=False),
    Task("data-shapes", ("data", "shapes"), "sdkit.schema.data:ShapesDataRecipe", "sdkit.tasks.data_shapes:run", "out",
         "Write the synthetic shapes world as a Hugging Face imagefolder dataset (PNGs + metadata.jsonl)."),
    Task("preprocess", ("preprocess",), "sdkit.schema.control:PreprocessRecipe", "sdkit.tasks.preprocess:run", "output",
         "Turn a picture into a ControlNet control map: canny, openpose, depth, seg, normal, mlsd, hed, scribble, "
         "lineart or shuffle (weights from the hub, or --annotators-dir / $SDKIT_ANNOTATORS)."),
    Task("convert", ("convert",), "sdkit.schema.convert:ConvertRecipe", "sdkit.tasks.convert:run", "output",
         "Convert models: diffusers folder <-> single-file checkpoint, VAE folder <-> file, LoRA diffusers <-> kohya."),
    _trainer("text-to-image", "sdkit.schema.train:TrainTextToImageRecipe",
             "Train or fine-tune a text-to-image model (from a pipeline, or from scratch from an architecture preset)."),
    _trainer("lora", "sdkit.schema.finetune:TrainLoraRecipe",
             "Train a LoRA (peft) on a pipeline's UNet, optionally its text encoder; saves diffusers and kohya/A1111 files."),
    _trainer("dreambooth", "sdkit.schema.finetune:TrainDreamBoothRecipe",
             "Teach a subject from a few images (full fine-tune or --lora), with optional prior preservation."),
    _trainer("textual-inversion", "sdkit.schema.finetune:TrainTextualInversionRecipe",
             "Learn a new token's embedding (textual inversion); saves diffusers and A1111 embedding files."),
    _trainer("controlnet", "sdkit.schema.control:TrainControlNetRecipe",
             "Train a ControlNet for a frozen SD 1.x/2.x pipeline (from_unet init) on images, control maps and captions."),
)  # fmt: skip


def get_task(name: Any) -> Task:
    for task in TASKS:
        if task.name == name:
            return task
    raise UserError(f"unknown task {name!r}: use one of {', '.join(t.name for t in TASKS)}")


def task_of(recipe: Any) -> Task:
    """The task whose schema `recipe` is an instance of (the Python API's `sdkit.train(recipe)`)."""
    for task in TASKS:
        if isinstance(recipe, task.schema):
            return task
    raise TypeError(f"{type(recipe).__name__} is not the recipe of any task ({', '.join(t.name for t in TASKS)})")
