"""Recipe files: one job or a `jobs:` list with shared `defaults:`, sweeps, `${VAR}` and `${jobs.NAME.output}`.

    # yaml-language-server: $schema=...
    defaults: {model: shapes, steps: 20}
    jobs:
      - name: base
        task: generate
        prompt: a red circle on a blue background
        sweep: {cfg: [1, 3, 5], seed: [1, 2]}     # 6 jobs, and a labelled 2-D grid PNG
      - task: eval
        model: ${jobs.train.output}               # the folder an earlier job named "train" produced

Precedence: schema default < `defaults:` < the job's own keys < `--set`. Every job is validated against its task's
schema before anything runs, and errors name the file, line and key: `recipe.yaml:12 jobs[1].cfg: ...`.

Limits (exit 2 before anything runs): a file expands to at most `MAX_JOBS` (10,000) jobs, sweeps included, and its
jobs hold at most `MAX_JOB_VALUES` (1,000,000) values in all (each sweep point repeats its job's fields). The YAML
itself is read within sdkit.recipefile's limits (size, nesting, aliases, duplicate keys), `--set` values included.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.recipefile import MAX_YAML_VALUES, LineMap, load_yaml, parse_yaml
from sdkit.tasks.registry import Task, get_task

VAR = re.compile(r"\$\{([^}]+)\}")
JOB_KEYS = ("task", "name", "sweep")
MAX_JOBS = 10_000
MAX_JOB_VALUES = MAX_YAML_VALUES


@dataclass
class Job:
    task: Task
    name: str
    source: str
    sweep: dict[str, Any] = field(default_factory=dict)  # this job's point in its sweep
    axes: dict[str, list[Any]] = field(default_factory=dict)  # the whole sweep it belongs to
    raw: dict[str, Any] = field(default_factory=dict)  # fields before validation (references still unexpanded)


def _expand_env(value: Any, where: str) -> Any:
    """${VAR} from the environment in strings (unset → error); ${jobs.…} is left for run time."""
    if isinstance(value, str):

        def sub(match: re.Match) -> str:
            name = match.group(1)
            if name.startswith("jobs."):
                return match.group(0)
            if name not in os.environ:
                raise UserError(f"{where}: ${{{name}}} is not set in the environment: export it or remove the reference")
            return os.environ[name]

        return VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand_env(v, where) for v in value]
    if isinstance(value, dict):
        out = LineMap({k: _expand_env(v, where) for k, v in value.items()})
        out.lines = getattr(value, "lines", {})
        return out
    return value


def apply_set(data: Any, assignment: str) -> Any:
    """`--set jobs.1.cfg=3` (or `defaults.steps=10`, or `cfg=3` in a one-job file): YAML-typed value at a dotted path."""
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise UserError(f"--set {assignment!r}: write KEY=VALUE, e.g. --set jobs.0.cfg=5")
    value = parse_yaml(text, f"--set {assignment}", numbered=False) if text else ""
    parts = [p for p in re.split(r"[.\[\]]+", path) if p]
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"--set {path}: {part!r} is not a job index (0..{len(node) - 1})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, LineMap())
        else:
            raise UserError(f"--set {path}: {'.'.join(parts[:i])} is not a mapping or list")
    return data


def load_file(path: Path, sets: list[str] | tuple[str, ...] = ()) -> list[Job]:
    """Parse, expand and validate every job of a recipe file (nothing runs, nothing is written)."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe file is a mapping (one job, or `jobs:` with optional `defaults:`)")
    for assignment in sets:
        apply_set(data, assignment)
    if "jobs" in data:
        extra = sorted(set(data) - {"jobs", "defaults"})
        if extra:
            raise UserError(f"{path}:{data.lines.get(extra[0], '?')} {extra[0]}: unknown top-level key (use jobs: and defaults:)")
        jobs, defaults = data["jobs"], data.get("defaults") or LineMap()
        if not isinstance(jobs, list) or not jobs:
            raise UserError(f"{path}: jobs: must be a non-empty list of mappings")
        prefix = "jobs[{}]."
    else:
        jobs, defaults, prefix = [data], LineMap(), ""
    if not isinstance(defaults, dict):
        raise UserError(f"{path}: defaults: must be a mapping")

    check_size(path, jobs, defaults, prefix)
    out: list[Job] = []
    used_defaults: set[str] = set()
    for index, job in enumerate(jobs):
        where = _where(path, job, prefix.format(index))
        task = get_task(job.get("task", "generate"))
        names = set(task.schema.model_fields)
        used_defaults |= names & set(defaults)
        fields = LineMap({k: v for k, v in defaults.items() if k in names})
        fields.update({k: v for k, v in job.items() if k not in JOB_KEYS})
        fields.lines = {**getattr(defaults, "lines", {}), **getattr(job, "lines", {})}
        fields = _expand_env(fields, where)
        axes = job.get("sweep") or {}
        unknown = sorted(set(axes) - names)
        if unknown:
            raise UserError(f"{where} sweep.{unknown[0]}: {task.name} has no field {unknown[0]!r}")
        name = str(job.get("name", f"job{index}"))
        points = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())] or [{}]
        for point in points:
            merged = LineMap({**fields, **point})
            merged.lines = fields.lines
            _validate(task, merged, path, prefix.format(index))
            out.append(Job(task, name, str(path), point, dict(axes), dict(merged)))
    unused = sorted(set(defaults) - used_defaults)
    if unused:
        raise UserError(f"{path}:{defaults.lines.get(unused[0], '?')} defaults.{unused[0]}: no job's task has this field")
    return out


def _where(path: Path, job: Any, prefix: str) -> str:
    return f"{path}:{getattr(job, 'lines', {}).get('task', '?')} {prefix}".rstrip(". ")


def check_size(path: Path, jobs: list[Any], defaults: dict[str, Any], prefix: str) -> None:
    """Before validating anything: every job is a mapping with a well-formed sweep, and the file expands to at most
    MAX_JOBS jobs holding at most MAX_JOB_VALUES values (a sweep point repeats its job's fields and the defaults)."""
    total_jobs = total_values = 0
    shared = count_values(defaults, MAX_JOB_VALUES)
    for index, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise UserError(f"{path} {prefix.format(index)}: each job must be a mapping with a task: key")
        axes = job.get("sweep") or {}
        if not isinstance(axes, dict) or any(not isinstance(v, list) or not v for v in axes.values()):
            raise UserError(f"{_where(path, job, prefix.format(index))} sweep: must map field names to non-empty lists of values")
        points = math.prod(len(values) for values in axes.values())
        total_jobs += points
        total_values += points * (count_values(job, MAX_JOB_VALUES) + shared)
    if total_jobs > MAX_JOBS:
        raise UserError(
            f"{path}: expands to {total_jobs:,} jobs (a sweep runs every combination of its lists), more than the limit "
            f"of {MAX_JOBS:,}: sweep fewer values or split the work into several files"
        )
    if total_values > MAX_JOB_VALUES:
        raise UserError(
            f"{path}: its {total_jobs:,} jobs hold {total_values:,} values in all (each sweep point repeats its job's "
            f"fields), more than the limit of {MAX_JOB_VALUES:,}: sweep fewer values or make the jobs smaller"
        )


def count_values(value: Any, cap: int) -> int:
    """How many values (scalars, lists, mappings, keys) `value` holds, counting shared ones each time; stops past `cap`."""
    count, todo = 0, [value]
    while todo and count <= cap:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return count


def _validate(task: Task, fields: LineMap, path: Path, prefix: str) -> None:
    """Validate a job before anything runs; `${jobs.NAME.output}` references are checked at run time."""
    probe = LineMap({k: ("." if isinstance(v, str) and "${jobs." in v else v) for k, v in fields.items()})
    probe.lines = fields.lines
    task.recipe(probe, str(path), where=prefix)


def resolve_references(job: Job, outputs: dict[str, str]) -> Any:
    """The job's recipe with `${jobs.NAME.output}` replaced by what that earlier job produced."""

    def sub(value: Any) -> Any:
        if isinstance(value, str):

            def repl(match: re.Match) -> str:
                ref = match.group(1)
                parts = ref.split(".")
                if len(parts) != 3 or parts[2] != "output":
                    raise UserError(f"{job.source}: ${{{ref}}}: write ${{jobs.NAME.output}}")
                if parts[1] not in outputs:
                    raise UserError(f"{job.source}: ${{{ref}}}: no earlier job is named {parts[1]!r}")
                return outputs[parts[1]]

            return VAR.sub(repl, value)
        if isinstance(value, list):
            return [sub(v) for v in value]
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return value

    return job.task.recipe(sub(job.raw), job.source)


def check_references(jobs: list[Job]) -> None:
    """Every ${jobs.NAME.output} names a job that runs earlier in the same run."""
    seen: set[str] = set()
    for job in jobs:
        for match in VAR.finditer(str(job.raw)):
            parts = match.group(1).split(".")
            if parts[0] == "jobs" and (len(parts) != 3 or parts[2] != "output" or parts[1] not in seen):
                raise UserError(f"{job.source}: ${{{match.group(1)}}} in job {job.name!r}: no earlier job of that name "
                                "(write ${jobs.NAME.output} and give the earlier job name: NAME)")
        seen.add(job.name)
