"""Reading recipe files and turning validation failures into one-line messages.

YAML is read with a safe loader (no `!!python/...` tags) that remembers the line of every mapping key, so an error
names the file, the line and the key: `recipe.yaml:12 cfg: input should be >= 0 (got -1)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sdkit.errors import UserError

M = TypeVar("M", bound=BaseModel)


class LineMap(dict):
    """A dict from a YAML mapping that also knows the 1-based line of each key (`.lines`)."""

    lines: dict[str, int]


def load_yaml(path: Path) -> Any:
    """Safely parse a YAML file; mappings come back as `LineMap`s."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineMap:
        data = LineMap(loader.construct_mapping(node, deep=True))
        data.lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
        return data

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file {path} does not exist: check the path")
    try:
        return yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else "?"
        raise UserError(f"{path}:{line}: {err.problem}: recipe files allow plain YAML only (no !!python tags)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(err, 'problem', err)}): fix the syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file: give a YAML recipe") from None


def _location(loc: tuple, data: Any, source: str, flags: Mapping[str, str]) -> str:
    key = ".".join(str(p) for p in loc) if loc else ""
    if loc and loc[0] in flags:
        return flags[str(loc[0])]
    line = None
    node = data
    for part in loc:
        if isinstance(node, LineMap) and isinstance(part, str):
            line = node.lines.get(part, line)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
    where = f"{source}:{line}" if line else source
    return f"{where} {key}".strip()


def describe(err: ValidationError, data: Any, source: str, flags: Mapping[str, str] | None = None) -> str:
    """The first validation error as one line: where, what, the value given and (for unknown keys) the valid ones."""
    first = err.errors(include_url=False)[0]
    where = _location(tuple(first["loc"]), data, source, flags or {})
    message = str(first["msg"]).removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key: remove it or fix its spelling"
    if first["type"] == "missing":
        return f"{where}: required but missing"
    value = first.get("input")
    shown = "" if isinstance(value, (Mapping, list)) or value is None or "(got " in message else f" (got {value!r})"
    return f"{where}: {message}{shown}"


def validate(schema: type[M], data: Any, source: str, flags: Mapping[str, str] | None = None) -> M:
    """`schema.model_validate(data)` with a one-line UserError naming where the bad value came from."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: a recipe must be a mapping of keys to values (got {type(data).__name__})")
    try:
        return schema.model_validate(dict(data))
    except ValidationError as err:
        valid = ", ".join(schema.model_fields)
        line = describe(err, data, source, flags)
        if "unknown key" in line:
            line += f" (valid keys: {valid})"
        raise UserError(line) from None
