"""The task table: every task name a recipe file may use, with its schema and its runner (imported lazily).

A literal table, not a registry: unknown names raise with the valid list. Each runner takes the task's validated
recipe and returns what the job produced (a folder, a model, a list of results); `output_of` turns that into the
path later jobs can reference as `${jobs.NAME.output}`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdkit.errors import UserError


@dataclass(frozen=True)
class Task:
    name: str
    schema_ref: str
    runner_ref: str
    output_field: str
    uses_pipelines: bool = False
    processes: str = (
        "main"  # under accelerate launch: "main" (rank 0 only), "all" (DDP training), "split" (work shared)
    )

    @property
    def schema(self) -> type:
        return _load(self.schema_ref)

    def run(self, recipe: Any, **kwargs: Any) -> Any:
        return _load(self.runner_ref)(recipe, **kwargs)

    def output_of(self, recipe: Any, result: Any) -> str:
        """What later jobs reference as ${jobs.NAME.output}: a returned path, a fine-tune's main file, or the output field."""
        if isinstance(result, (str, Path)):
            return str(result)
        files = getattr(result, "files", None)
        return str(files[0]) if files else str(getattr(recipe, self.output_field))


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


TASKS: tuple[Task, ...] = (
    Task(
        "generate",
        "sdkit.schema.generate:GenerateRecipe",
        "sdkit.tasks.generate:run",
        "out",
        uses_pipelines=True,
        processes="split",
    ),
    Task("eval", "sdkit.schema.eval:EvalShapesRecipe", "sdkit.tasks.eval_shapes:run", "out", uses_pipelines=True),
    Task("data-shapes", "sdkit.schema.data:ShapesDataRecipe", "sdkit.data.shapes:run_once", "out"),
    Task(
        "train-text-to-image",
        "sdkit.schema.train:TrainTextToImageRecipe",
        "sdkit.tasks.train_text_to_image:run",
        "output_dir",
        processes="all",
    ),
    Task(
        "train-lora",
        "sdkit.schema.finetune:TrainLoraRecipe",
        "sdkit.tasks.train_lora:run",
        "output_dir",
        processes="all",
    ),
    Task(
        "train-dreambooth",
        "sdkit.schema.finetune:TrainDreamBoothRecipe",
        "sdkit.tasks.train_dreambooth:run",
        "output_dir",
        processes="all",
    ),
    Task(
        "train-textual-inversion",
        "sdkit.schema.finetune:TrainTextualInversionRecipe",
        "sdkit.tasks.train_textual_inversion:run",
        "output_dir",
        processes="all",
    ),
    Task(
        "train-controlnet",
        "sdkit.schema.control:TrainControlNetRecipe",
        "sdkit.tasks.train_controlnet:run",
        "output_dir",
        processes="all",
    ),
    Task("preprocess", "sdkit.schema.control:PreprocessRecipe", "sdkit.tasks.preprocess:run", "output"),
)


def get_task(name: Any) -> Task:
    for task in TASKS:
        if task.name == name:
            return task
    raise UserError(f"unknown task {name!r}: use one of {', '.join(t.name for t in TASKS)}")
