"""The task commands, made from the task registry (`sdkit.tasks.registry.TASKS`): `sdkit generate`, `sdkit preprocess`,
`sdkit data shapes`, `sdkit eval shapes` and `sdkit train lora|dreambooth|textual-inversion|controlnet|text-to-image`.

Each command's options are its recipe schema's fields (`sdkit.cli.options`) plus `--recipe FILE`; the flags given
override the file, which overrides the schema's defaults (`build_recipe`). The result's paths are printed on stdout,
one per line, by the main process (generate and eval print their own as they go).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sdkit.cli import COMMANDS, GROUPS, guarded
from sdkit.cli.options import flags_of, schema_parameters, with_parameters
from sdkit.errors import UserError
from sdkit.tasks.registry import TASKS, Task, result_files


def path_option(name: str, help: str) -> inspect.Parameter:
    """A keyword-only `--NAME FILE` option that is not a schema field."""
    option = typer.Option("--" + name.replace("_", "-"), help=help)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[Path], option])  # noqa: UP045 - typer reads Optional


RECIPE_PARAM = path_option("recipe", "YAML file of recipe fields; flags given on the command line override it.")
FROM_PNG_PARAM = path_option(
    "from_png", "Start from an image's settings (sdkit, A1111, Forge, civitai, ComfyUI); --recipe and flags override them."
)

app = typer.Typer(rich_markup_mode=None)  # the top-level task commands (generate, preprocess)
groups = {name: typer.Typer(help=COMMANDS[name][2], no_args_is_help=True, rich_markup_mode=None) for name in GROUPS}


def build_recipe(task: Task, recipe_file: Path | None, given: dict[str, Any], from_png: Path | None = None) -> Any:
    """Schema defaults < an image's settings (--from-png) < the --recipe file < flags given on the command line,
    validated into the task's recipe."""
    from sdkit.recipefile import LineMap, load_yaml

    flags = {k: v for k, v in given.items() if v is not None and v != [] and v != ()}
    data, source = LineMap(), "command line"
    data.lines, loaded = {}, {}
    if recipe_file is not None:
        loaded = load_yaml(recipe_file)
        if not isinstance(loaded, dict):
            raise UserError(f"{recipe_file}: a recipe file must be a mapping of keys to values")
        data.lines = getattr(loaded, "lines", {})
        source = str(recipe_file)
    if from_png is not None:
        from sdkit.cli.commands import from_png_fields

        data.update(from_png_fields(from_png, {**loaded, **flags}))
        source = f"{from_png} with {source}"
    data.update(loaded)
    data.update(flags)
    return task.recipe(data, source, flags={k: v for k, v in flags_of(task.schema).items() if k in flags})


def is_main_process() -> bool:
    """False in the other processes of an `accelerate launch` (their RANK is not 0): they print no results."""
    return os.environ.get("RANK", "0") == "0"


def add_command(task: Task) -> None:
    """`sdkit <command>` for `task`: flags from its schema, plus --recipe."""

    def command(recipe: Path | None = None, from_png: Path | None = None, **given: Any) -> None:
        result = task.run(build_recipe(task, recipe, given, from_png))
        if task.reports and is_main_process():
            for path in result_files(result):
                print(path)

    *group, name = task.command
    command.__doc__ = task.help
    command.__name__ = name.replace("-", "_")
    target = groups[group[0]] if group else app
    extra = [RECIPE_PARAM, FROM_PNG_PARAM] if task.name == "generate" else [RECIPE_PARAM]
    target.command(name, help=task.help)(with_parameters(guarded(command), [*schema_parameters(task.schema), *extra]))


for _task in TASKS:
    add_command(_task)
