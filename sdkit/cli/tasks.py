"""data, train and eval commands: each derives its options from its task schema and calls the task's `run`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from sdkit.cli import COMMANDS, build_recipe, guarded
from sdkit.cli.commands import RECIPE_PARAM
from sdkit.cli.options import schema_parameters, with_parameters
from sdkit.schema.control import PreprocessRecipe, TrainControlNetRecipe
from sdkit.schema.data import ShapesDataRecipe
from sdkit.schema.eval import EvalShapesRecipe
from sdkit.schema.finetune import TrainDreamBoothRecipe, TrainLoraRecipe, TrainTextualInversionRecipe
from sdkit.schema.train import TrainTextToImageRecipe

data_app = typer.Typer(help=COMMANDS["data"][2], no_args_is_help=True, rich_markup_mode=None)
train_app = typer.Typer(help=COMMANDS["train"][2], no_args_is_help=True, rich_markup_mode=None)
eval_app = typer.Typer(help=COMMANDS["eval"][2], no_args_is_help=True, rich_markup_mode=None)
app = typer.Typer(rich_markup_mode=None)  # preprocess, a top-level command (sdkit.cli.COMMANDS)


def register(group: typer.Typer, name: str, schema: type, task: str, runner: Callable[[Any], Any], doc: str) -> None:
    """Add `sdkit <group> <name>`: flags from `schema`, plus --recipe; resolved recipe → `runner` (imported lazily)."""

    def command(recipe: Path | None = None, **given: Any) -> None:
        runner(build_recipe(schema, recipe, given, task=task))

    command.__doc__ = doc
    command.__name__ = name.replace("-", "_")
    group.command(name)(with_parameters(guarded(command), [*schema_parameters(schema), RECIPE_PARAM]))


def _data_shapes(recipe: ShapesDataRecipe) -> None:
    from sdkit.data.shapes import run

    print(run(recipe))


def _train_text_to_image(recipe: TrainTextToImageRecipe) -> None:
    from sdkit.tasks.train_text_to_image import run

    print(run(recipe))


def _preprocess(recipe: PreprocessRecipe) -> None:
    from sdkit.tasks.preprocess import run

    print(run(recipe))


def _train_controlnet(recipe: TrainControlNetRecipe) -> None:
    from sdkit.tasks.train_controlnet import run

    print(run(recipe))


def _train_lora(recipe: TrainLoraRecipe) -> None:
    from sdkit.tasks.train_lora import run

    run(recipe).print_files()


def _train_dreambooth(recipe: TrainDreamBoothRecipe) -> None:
    from sdkit.tasks.train_dreambooth import run

    run(recipe).print_files()


def _train_textual_inversion(recipe: TrainTextualInversionRecipe) -> None:
    from sdkit.tasks.train_textual_inversion import run

    run(recipe).print_files()


def _eval_shapes(recipe: EvalShapesRecipe) -> None:
    from sdkit.tasks.eval_shapes import run

    run(recipe)


register(data_app, "shapes", ShapesDataRecipe, "data-shapes", _data_shapes,
         "Write the synthetic shapes world as a Hugging Face imagefolder dataset (PNGs + metadata.jsonl).")
register(train_app, "text-to-image", TrainTextToImageRecipe, "train-text-to-image", _train_text_to_image,
         "Train or fine-tune a text-to-image model (from a pipeline, or from scratch from an architecture preset).")
register(train_app, "lora", TrainLoraRecipe, "train-lora", _train_lora,
         "Train a LoRA (peft) on a pipeline's UNet, optionally its text encoder; saves diffusers and kohya/A1111 files.")
register(train_app, "dreambooth", TrainDreamBoothRecipe, "train-dreambooth", _train_dreambooth,
         "Teach a subject from a few images (full fine-tune or --lora), with optional prior preservation.")
register(train_app, "textual-inversion", TrainTextualInversionRecipe, "train-textual-inversion", _train_textual_inversion,
         "Learn a new token's embedding (textual inversion); saves diffusers and A1111 embedding files.")
register(eval_app, "shapes", EvalShapesRecipe, "eval", _eval_shapes,
         "Generate from held-out prompts and seeds and score colour, shape and background adherence.")
register(app, "preprocess", PreprocessRecipe, "preprocess", _preprocess, COMMANDS["preprocess"][2])
register(train_app, "controlnet", TrainControlNetRecipe, "train-controlnet", _train_controlnet,
         "Train a ControlNet for a frozen SD 1.x/2.x pipeline (from_unet init) on images, control maps and captions.")
