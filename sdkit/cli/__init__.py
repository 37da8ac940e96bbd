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
from typing import Annotated, Any

import typer
import typer.core
import typer.main

from sdkit.errors import SdkitError

# Command groups of task commands (`sdkit train lora`): their one-line help.
GROUPS: dict[str, str] = {
    "data": "Make datasets: `sdkit data shapes` writes the synthetic shapes world.",
    "train": "Fine-tune or train models with accelerate (checkpoints, exact resume, accelerate launch).",
    "eval": "Score models and images: shapes (the shapes world), clip-score, clip-directional, fid (and KID), sweep.",
}
# Commands that are not tasks: their one-line help (defined in sdkit.cli.commands).
TOOLS: dict[str, str] = {
    "info": "Print the recipe an image was made with (sdkit, A1111, Forge, civitai or ComfyUI) as YAML for --recipe.",
    "replay": "Regenerate an image from its recipe or A1111/ComfyUI settings (sdkit's own: bit-exact on the same device).",
    "schedulers": "List the samplers: A1111 name, schedule types, diffusers class and options; and what is refused.",
    "run": "Run YAML recipe files: every job is validated before the first one runs; one model load per run.",
    "schema": "Print the JSON Schema of a task's recipe (for editor completion of recipe files).",
    "models": "List the model library (checkpoints, loras, embeddings, vae, controlnet): family, size, hash, trigger words.",
    "serve": "Serve A1111's HTTP API, sdkit's job API and a web page (generate, progress, gallery, queue).",
}


def _commands() -> dict[str, tuple[str, str, str]]:
    """Top-level command → (module, its typer app there: "app" or a group's name, one-line help). The task commands
    come from the task registry (sdkit.tasks.registry, cheap to import), in its order; the tools follow."""
    from sdkit.tasks.registry import TASKS

    table: dict[str, tuple[str, str, str]] = {}
    for task in TASKS:
        top = task.command[0]
        if len(task.command) == 1:
            table[top] = ("sdkit.cli.task_commands", "app", task.help)
        else:
            table.setdefault(top, ("sdkit.cli.task_commands", top, GROUPS[top]))
    return {**table, **{name: ("sdkit.cli.commands", "app", text) for name, text in TOOLS.items()}}


COMMANDS: dict[str, tuple[str, str, str]] = _commands()


class LazyGroup(typer.core.TyperGroup):
    """The root group: commands are built from their module on first use; the listing reads `COMMANDS` only."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attr, _ = COMMANDS[cmd_name]
        loaded = import_module(module)
        typer_app = loaded.app if attr == "app" else loaded.groups[attr]
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
