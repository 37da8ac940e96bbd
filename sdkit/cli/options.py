"""Typer options derived from a pydantic schema, so a field's description is its --help and its default the only one.

Every derived option defaults to None, meaning "not given": only given flags override the recipe file, which
overrides the schema defaults.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

SCALARS = (str, int, float, bool, Path)


def _cli_type(annotation: Any) -> Any:
    """The type Typer parses: the field's scalar type; Literal → str; lists → list of the scalar."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _cli_type(args[0]) if len(args) == 1 else str
    if origin is Literal:
        return type(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        return list[_cli_type(typing.get_args(annotation)[0])]
    return annotation if annotation in SCALARS else str


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _help(field) -> str:
    text = field.description or ""
    if field.default is not PydanticUndefined and field.default not in (None, "", [], ()):
        default = field.default if not isinstance(field.default, bool) else str(field.default).lower()
        text += f" (default: {default})"
    return text


def schema_parameters(schema: type[BaseModel], exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword-only parameter per schema field, annotated with its typer Option/Argument."""
    params = []
    inherited = {n for base in schema.__mro__[1:] for n in getattr(base, "model_fields", {})}
    own_first = sorted(schema.model_fields.items(), key=lambda item: item[0] in inherited)
    for name, field in own_first:
        cli = (field.json_schema_extra or {}).get("cli", {}) if isinstance(field.json_schema_extra, dict) else {}
        if name in exclude or name == "task" or cli.get("hidden"):  # the command itself names the task
            continue
        if cli.get("argument"):
            info = typer.Argument(help=_help(field), show_default=False)
        else:
            main = cli.get("name") or flag_name(name)
            if _cli_type(field.annotation) is bool:  # --flag / --no-flag: a default of true can be switched off
                main = f"{main}/--no-{main.removeprefix('--')}"
            info = typer.Option(main, *cli.get("flags", []), help=_help(field), show_default=False)
        annotation = Annotated[typing.Optional[_cli_type(field.annotation)], info]  # noqa: UP045 - typer needs it
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return params


def flags_of(schema: type[BaseModel]) -> dict[str, str]:
    """Field name → how the user spells it on the command line (for error messages)."""
    out = {}
    for name, field in schema.model_fields.items():
        cli = (field.json_schema_extra or {}).get("cli", {}) if isinstance(field.json_schema_extra, dict) else {}
        out[name] = name.upper() if cli.get("argument") else cli.get("name") or flag_name(name)
    return out


def with_parameters(func: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """Give `func(**kwargs)` an explicit signature Typer can read."""
    ordered = sorted(params, key=lambda p: p.kind)
    func.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
    func.__annotations__ = {p.name: p.annotation for p in ordered}
    return func
