"""Reading recipe files and turning validation failures into one-line messages.

YAML is read with a safe loader (no `!!python/...` tags) that remembers the line of every mapping key, so an error
names the file, the line and the key: `recipe.yaml:12 cfg: input should be >= 0 (got -1)`.

A recipe file may come from someone else, so every YAML text sdkit reads (recipe files, `--recipe` of generate and
train, `sdkit run` files and their `--set` values) is parsed within limits, each refused with exit 2 before it can
hang the process or exhaust memory:

- at most `MAX_YAML_BYTES` (2 MiB) per file: PyYAML's pure-Python parser reads about 0.2 MB/s on a slow CPU;
- at most `MAX_YAML_DEPTH` (64) levels of nesting, counted after aliases are expanded (a real recipe uses about 5);
  deeper documents would end in a RecursionError;
- at most `MAX_YAML_VALUES` (1,000,000) values (scalars, lists, mappings) once aliases are expanded: an alias
  repeats the whole node it points to, so nine levels of nine aliases ("billion laughs") stand for 10^9 values in a
  file of a few hundred bytes; the count is made on the parsed node graph, once per node, without expanding anything.
  An alias that refers to a node containing it (a cycle) is refused too;
- a key given twice in one mapping is an error naming both lines (PyYAML would keep the last one silently).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sdkit.errors import UserError

M = TypeVar("M", bound=BaseModel)

MAX_YAML_BYTES = 2 * 2**20
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 1_000_000
MERGE_TAG = "tag:yaml.org,2002:merge"


class LineMap(dict):
    """A dict from a YAML mapping that also knows the 1-based line of each key (`.lines`)."""

    lines: dict[str, int]


def load_yaml(path: Path) -> Any:
    """Safely parse a YAML file within the limits above; mappings come back as `LineMap`s."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file {path} does not exist: check the path")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise UserError(
            f"{path} is {size / 2**20:.1f} MiB; recipe files are limited to {MAX_YAML_BYTES // 2**20} MiB: "
            "split it into several files (or use sweep: instead of writing every job out)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file: give a YAML recipe") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str, *, numbered: bool = True) -> Any:
    """Safely parse YAML `text` within the limits; errors name `source` (and the line, when `numbered`)."""
    import yaml

    def where(mark: Any) -> str:
        return f"{source}:{mark.line + 1}" if numbered and mark is not None else source

    try:
        return yaml.load(text, Loader=_loader(where))  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as err:
        raise UserError(f"{where(err.problem_mark)}: {err.problem}: recipe files allow plain YAML only (no !!python tags)") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or err
        raise UserError(f"{where(getattr(err, 'problem_mark', None))}: not valid YAML ({problem}): fix the syntax") from None
    except RecursionError:  # not expected within MAX_YAML_DEPTH; kept so that no document ends in a traceback
        raise UserError(f"{source}: nested too deeply to read: flatten it") from None


def _loader(where: Callable[[Any], str]) -> type:
    """A SafeLoader subclass for one text: limits on nesting, expanded size and duplicate keys; LineMap mappings."""
    import yaml

    class Loader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self.depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.depth >= MAX_YAML_DEPTH:  # refused while composing: PyYAML's composer recurses once per level
                raise UserError(f"{where(self.peek_event().start_mark)}: nested more than {MAX_YAML_DEPTH} levels deep: flatten the document")
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def compose_mapping_node(self, anchor: Any) -> Any:
            node = super().compose_mapping_node(anchor)
            check_duplicate_keys(node, where)  # on the node as written, before merge keys (<<) are flattened in
            return node

        def compose_document(self) -> Any:
            node = super().compose_document()
            check_expansion(node, where)
            return node

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineMap:
        data = LineMap(loader.construct_mapping(node, deep=True))
        data.lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
        return data

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def check_duplicate_keys(node: Any, where: Callable[[Any], str]) -> None:
    """Refuse a mapping node that gives one key twice, naming both lines (keys a `<<` merge brings in may repeat)."""
    import yaml

    first: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if key.tag == MERGE_TAG or not isinstance(key, yaml.ScalarNode):
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first:
            raise UserError(f"{where(key.start_mark)}: key {key.value!r} is given twice (lines {first[key.tag, key.value]} and {line}): keep one")
        first[key.tag, key.value] = line


def check_expansion(root: Any, where: Callable[[Any], str]) -> None:
    """Refuse a composed YAML node graph that expands past MAX_YAML_VALUES values or MAX_YAML_DEPTH levels, or that
    contains a cycle. Each node is measured once (aliases share nodes), so this is linear in the file's size."""
    import yaml

    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height) of its expansion
    active: set[int] = set()

    def measure(node: Any, level: int) -> tuple[int, int]:
        key = id(node)
        if key in active:
            raise UserError(f"{where(node.start_mark)}: an alias refers to a node that contains it (a cycle): remove it")
        if key not in measured:
            if level > MAX_YAML_DEPTH:
                raise UserError(f"{where(node.start_mark)}: nested more than {MAX_YAML_DEPTH} levels deep once aliases are expanded: flatten it")
            if isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            active.add(key)
            values, height = 1, 1
            for child in children:
                child_values, child_height = measure(child, level + 1)
                values, height = values + child_values, max(height, child_height + 1)
                if values > MAX_YAML_VALUES:
                    raise UserError(
                        f"{where(node.start_mark)}: expands to more than {MAX_YAML_VALUES:,} values once its aliases are "
                        "repeated (the limit that stops alias bombs): write the data out without nested aliases"
                    )
            active.discard(key)
            measured[key] = (values, height)
        values, height = measured[key]
        if level + height - 1 > MAX_YAML_DEPTH:
            raise UserError(f"{where(node.start_mark)}: nested more than {MAX_YAML_DEPTH} levels deep once aliases are expanded: flatten it")
        return values, height

    if root is not None:
        measure(root, 1)


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


def validate(
    schema: type[M], data: Any, source: str, flags: Mapping[str, str] | None = None, *, where: str = "", task: str = ""
) -> M:
    """`schema.model_validate(data)` with a one-line UserError naming where the bad value came from (`where`: a
    prefix of the key, e.g. "jobs[1]."; `task`: named beside the valid keys of an unknown one)."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: a recipe must be a mapping of keys to values (got {type(data).__name__})")
    try:
        return schema.model_validate(dict(data))
    except ValidationError as err:
        line = describe(err, data, source, flags)
        if where:
            line = re.sub(r"^(\S+) ", lambda m: f"{m.group(1)} {where}", line, count=1)
        if "unknown key" in line:
            line += f" (valid keys{' for ' + task if task else ''}: {', '.join(schema.model_fields)})"
        raise UserError(line) from None
