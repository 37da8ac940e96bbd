"""The `sdkit` command line: thin Typer commands over the task modules.

Start-up stays cheap: `sdkit --help` lists the commands from `COMMANDS` without importing the modules that define
them (their pydantic schemas), and `sdkit train lora …` imports only the module of `train`. No torch until a task runs.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import typer.core
import typer.main

from sdkit.errors import SdkitError, UserError

if TYPE_CHECKING:
    from pydantic import BaseModel

# Top-level command → (module, the typer.Typer there that defines it, its one-line help for `sdkit --help`).
# A module's `app` holds several top-level commands; a named sub-app (`train_app`) is itself the command group.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("sdkit.cli.commands", "app", "Generate images: txt2img; img2img with --init-image; inpaint with --init-image and --mask."),
    "info": ("sdkit.cli.commands", "app", "Print the recipe embedded in an image (YAML, usable with `sdkit generate --recipe`)."),
    "replay": ("sdkit.cli.commands", "app", "Regenerate an image from its embedded recipe (bit-exact on the same device and dtype)."),
    "schedulers": ("sdkit.cli.commands", "app", "List the samplers: A1111 name, diffusers class and arguments."),
    "run": ("sdkit.cli.commands", "app", "Run YAML recipe files: every job is validated before the first one runs; one model load per run."),
    "schema": ("sdkit.cli.commands", "app", "Print the JSON Schema of a task's recipe (for editor completion of recipe files)."),
    "preprocess": ("sdkit.cli.tasks", "app", "Turn a picture into a ControlNet control map: canny, openpose, depth, seg, normal, mlsd, hed, scribble, lineart or shuffle (weights from the hub, or --annotators-dir / $SDKIT_ANNOTATORS)."),
    "data": ("sdkit.cli.tasks", "data_app", "Make datasets: `sdkit data shapes` writes the synthetic shapes world."),
    "train": ("sdkit.cli.tasks", "train_app", "Fine-tune or train models with accelerate (checkpoints, exact resume, accelerate launch)."),
    "eval": ("sdkit.cli.tasks", "eval_app", "Score models: `sdkit eval shapes` measures prompt adherence on the shapes world."),
}  # fmt: skip


class LazyGroup(typer.core.TyperGroup):
    """The root group: commands are built from their module on first use; the listing reads `COMMANDS` only."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attr, _ = COMMANDS[cmd_name]
        typer_app = getattr(import_module(module), attr)
        if attr == "app":  # a module's top-level commands: typer builds a group of them, or the command if only one
            built = typer.main.get_command(typer_app)
            return built.commands[cmd_name] if isinstance(built, typer.core.TyperGroup) else built
        group = typer.main.get_group(typer_app)  # a group even with one subcommand (`sdkit data shapes`)
        group.name = cmd_name
        return group

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        width = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [
            (name, typer.core._click.utils.make_default_short_help(text, width))
            for name, (_, _, text) in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    cls=LazyGroup,
    name="sdkit",
    help="Typed, reproducible Stable Diffusion generation and fine-tuning on Hugging Face diffusers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # click's plain help: rendering it with rich imports ~0.2 s of modules on every --help
)
M = TypeVar("M", bound="BaseModel")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Report errors as one line on stderr: exit 2 for bad input, 1 for anything else, 130 on Ctrl-C."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            return func(*args, **kwargs)
        except SdkitError as err:
            print(f"error: {_one_line(err)}", file=sys.stderr)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted: finished outputs were kept", file=sys.stderr)
            raise typer.Exit(130) from None
        except Exception as err:
            if os.environ.get("SDKIT_DEBUG"):
                raise
            print(f"internal error: {type(err).__name__}: {_one_line(err)[:500]} (SDKIT_DEBUG=1 shows the traceback)", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper


def build_recipe(schema: type[M], recipe_file: Path | None, given: dict[str, Any], task: str) -> M:
    """Schema defaults < recipe file < flags given on the command line, validated into one typed recipe."""
    from sdkit.cli.options import flags_of
    from sdkit.recipefile import LineMap, load_yaml, validate

    flags = {k: v for k, v in given.items() if v is not None and v != [] and v != ()}
    data = LineMap()
    data.lines = {}
    source = "command line"
    if recipe_file is not None:
        loaded = load_yaml(recipe_file)
        if not isinstance(loaded, dict):
            raise UserError(f"{recipe_file}: a recipe file must be a mapping of keys to values")
        if loaded.get("task", task) != task:
            raise UserError(f"{recipe_file}: task {loaded['task']!r} is not {task!r}: run it with `sdkit run {recipe_file}`")
        data.update({k: v for k, v in loaded.items() if k != "task"})
        data.lines = getattr(loaded, "lines", {})
        source = str(recipe_file)
    data.update(flags)
    cli_flags = {k: v for k, v in flags_of(schema).items() if k in flags}
    return validate(schema, data, source, cli_flags)


def main() -> None:
    """Console-script entry point (also `python -m sdkit`): run the command, then end the process with
    `sdkit.cli.finish` (the normal exit without the interpreter's ≈ 0.9 s teardown of torch and diffusers)."""
    from sdkit.cli.finish import finish

    try:
        app()  # standalone mode: ends in SystemExit with the command's exit status
    except SystemExit as done:
        finish(done.code)
    finish(0)


def version_callback(value: bool) -> None:
    if value:
        from sdkit.version import __version__

        print(f"sdkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Typed, reproducible Stable Diffusion generation and fine-tuning on Hugging Face diffusers."""
