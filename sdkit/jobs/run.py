"""Running the jobs of recipe files (`sdkit run`): in order, one pipeline cache for the whole run, split between
processes under `accelerate launch`, with a labelled grid for each generate sweep. sdkit.jobs.parse reads the files.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdkit.errors import UserError
from sdkit.jobs.parse import Job, check_references, resolve_references

if TYPE_CHECKING:
    from sdkit.pipelines import PipelineCache


def run_jobs(jobs: list[Job], cache: PipelineCache | None = None) -> dict[str, str]:
    """Run the jobs in order, one pipeline cache for the whole run; returns each named job's output.

    Under `accelerate launch`, runs of consecutive generate jobs are planned (explicit seeds and file numbers, the same
    on every process) and their images split between the processes; training jobs run on all processes (DDP); other
    jobs run on the main process. The files written are the same as a single-process run's.
    """
    from sdkit.device import process_state
    from sdkit.pipelines import PipelineCache

    check_references(jobs)
    cache = cache if cache is not None else PipelineCache()
    state = process_state()
    if state.num_processes > 1 and state.is_main_process:
        print(f"distributed run: {state.distributed_type.value} with {state.num_processes} processes", file=sys.stderr)
    outputs: dict[str, str] = {}
    i = 0
    while i < len(jobs):
        if jobs[i].task.processes == "split":
            group = list(itertools.takewhile(lambda j: j.task.processes == "split", jobs[i:]))
            run_generate_group(group, outputs, cache, state)
            i += len(group)
            continue
        job = jobs[i]
        recipe = resolve_references(job, outputs)
        if job.task.processes == "all" or state.is_main_process:
            result = job.task.run(recipe, **({"cache": cache} if job.task.uses_pipelines else {}))
            outputs[job.name] = job.task.output_of(recipe, result)
        else:
            outputs[job.name] = job.task.output_of(recipe, None)
        state.wait_for_everyone()
        i += 1
    return outputs


def run_generate_group(group: list[Job], outputs: dict[str, str], cache: PipelineCache, state) -> None:
    """Plan seeds and file numbers for consecutive generate jobs, share the images out, then draw sweep grids."""
    import secrets

    from sdkit.outputs import next_index
    from sdkit.schema.generate import SEED_RANGE
    from sdkit.tasks import generate

    recipes = []
    for job in group:
        recipe = resolve_references(job, outputs)
        recipes.append(recipe)
        outputs[job.name] = str(recipe.out)
    seeds = [r.seed if r.seed is not None else secrets.randbelow(SEED_RANGE) for r in recipes]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        seeds = broadcast_object_list(seeds)
    recipes = [r.model_copy(update={"seed": seed}) for r, seed in zip(recipes, seeds, strict=True)]
    for recipe in recipes:
        generate.check(recipe)

    state.wait_for_everyone()  # every process plans from the same folder contents
    next_free: dict[Path, int] = {}
    units = []
    for n, recipe in enumerate(recipes):
        out = Path(recipe.out).resolve()
        start = next_free.get(out) or next_index(out)
        units.extend((n, k, start + k) for k in range(recipe.num_images))
        next_free[out] = start + recipe.num_images
    state.wait_for_everyone()

    with state.split_between_processes(units) as mine:
        for n, share in itertools.groupby(mine, key=lambda unit: unit[0]):
            generate.run(recipes[n], cache, plan=[(k, index) for _, k, index in share])
    state.wait_for_everyone()

    if state.is_main_process:
        first = {n: index for n, k, index in reversed(units) if k == 0}
        sweeps: dict[str, list[tuple[dict[str, Any], Any, Path]]] = {}
        for n, job in enumerate(group):
            if job.axes and 1 <= len(job.axes) <= 2:
                path = Path(recipes[n].out) / f"{first[n]:05d}-{recipes[n].seed}.png"
                sweeps.setdefault(job.name, []).append((job.sweep, recipes[n], path))
        for name, points in sweeps.items():
            write_grid(name, points)


def write_grid(name: str, points: list[tuple[dict[str, Any], Any, Path]]) -> Path:
    """A labelled X/Y grid of the first image of each sweep point (columns: the first swept field)."""
    from PIL import Image

    from sdkit import atomic
    from sdkit.grids import labelled_grid

    first_axis = next(iter(points[0][0]))
    columns = len({str(p[0][first_axis]) for p in points})
    items = [(", ".join(f"{k}={v}" for k, v in point.items()), Image.open(path).convert("RGB")) for point, _, path in points]
    out = Path(points[0][1].out) / f"grid-{name}.png"
    grid = labelled_grid(items, columns=columns, title=name)
    try:
        atomic.write_file(out, lambda tmp: grid.save(tmp, format="PNG"))
    except OSError as err:
        if err.errno in atomic.NO_SPACE:
            raise UserError(f"no space left to write {out} ({err.strerror}): free disk space and run again") from None
        raise
    print(out, flush=True)
    return out
