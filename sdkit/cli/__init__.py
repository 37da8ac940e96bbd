"""The `sdkit` command line: thin Typer commands over the task modules (no torch import at start-up)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel

from sdkit.errors import SdkitError, UserError

app = typer.Typer(
    name="sdkit",
    help="Typed, reproducible Stable Diffusion generation and fine-tuning on Hugging Face diffusers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # click's plain help: rendering it with rich imports ~0.2 s of modules on every --help
)
M = TypeVar("M", bound=BaseModel)


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
    """Console-script entry point."""
    app()


from sdkit.cli import commands, tasks  # noqa: E402,F401 - registers the commands on `app`
