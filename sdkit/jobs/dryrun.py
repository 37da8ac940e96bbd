"""`sdkit run --dry-run`: check every job of a run without loading weights or writing anything.

Beyond validation (done when the file is loaded): references between jobs, models and schedulers, generate's inputs,
the input files and folders every task names (data_dir, instance_data_dir, image, ...; an earlier job's output counts
as present), and that each hub model can be had: in the local Hugging Face cache, or, when the hub may be used
(HF_HUB_OFFLINE unset), known to a reachable hub. A hub model that is neither is an error naming it and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdkit.errors import UserError
from sdkit.jobs.parse import check_references

if TYPE_CHECKING:
    from sdkit.jobs.parse import Job


def dry_run(jobs: list[Job]) -> None:
    """Check what can be checked without loading weights: references, models, schedulers, generate inputs, the input
    files and folders every task names (data_dir, instance_data_dir, image, ...), and that hub models are at hand."""
    from sdkit import schedulers
    from sdkit.models import resolve_model

    check_references(jobs)
    produced: list[Path] = []  # outputs of earlier jobs: inputs inside them will exist when the later job runs
    for job in jobs:
        if "${jobs." in str(job.raw):
            continue
        recipe = job.task.recipe(job.raw, job.source)
        if job.task.name == "generate":
            from sdkit.conditioning import resolve_controlnet
            from sdkit.tasks.generate import check

            model, inputs = check(recipe)
            hub = [("model", model.location)] if model.kind == "hub" else []
            if inputs.refs.vae is not None and inputs.refs.vae.kind == "hub":
                hub.append(("VAE", inputs.refs.vae.location))
            hub += [("ControlNet", resolve_controlnet(ref)) for c in recipe.control if (ref := recipe.controlnet_for(c))]
        else:
            check_input_paths(job, recipe, produced)
            hub = []
            if getattr(recipe, "model", None):
                model = resolve_model(recipe.model, hash_local=False)
                hub = [("model", model.location)] if model.kind == "hub" else []
            if getattr(recipe, "controlnet", None):
                hub.append(("ControlNet", recipe.controlnet))
        if getattr(recipe, "tiny_vae", None):
            hub.append(("tiny VAE", recipe.tiny_vae))
        for what, ref in hub:
            if not Path(ref).expanduser().exists():
                check_hub_model(ref, what, job)
        if getattr(recipe, "scheduler", None):
            schedulers.resolve(recipe.scheduler)
        output = getattr(recipe, job.task.output_field, None)
        if output is not None:
            produced.append(Path(output).resolve())


# Path fields that a task creates when missing, so a dry run does not require them (DreamBooth generates class images).
CREATED_WHEN_MISSING = frozenset({"class_data_dir"})


def check_input_paths(job: Job, recipe: Any, produced: list[Path]) -> None:
    """Every Path field of a task's recipe (but its output) names a file or folder that exists, or that an earlier
    job of the run writes. generate checks its own inputs (sdkit.tasks.generate.check)."""
    skip = {job.task.output_field, *CREATED_WHEN_MISSING}
    for name, field_info in type(recipe).model_fields.items():
        value = getattr(recipe, name)
        if name in skip or value is None or not _holds_paths(field_info.annotation):
            continue
        for path in value if isinstance(value, list) else [value]:
            resolved = Path(path).expanduser().resolve()
            if any(resolved == out or out in resolved.parents for out in produced):
                continue
            if not resolved.exists():
                raise UserError(
                    f"{job.source} job {job.name!r}: {name} {path} does not exist: fix the path, create it, or have an "
                    "earlier job of this file write it"
                )
            if name.endswith("_dir") and not resolved.is_dir():
                raise UserError(f"{job.source} job {job.name!r}: {name} {path} is a file, not a folder: give a folder")


def _holds_paths(annotation: Any) -> bool:
    """Whether a field's type is Path, Path | None or list[Path]."""
    import typing

    return annotation is Path or any(_holds_paths(arg) for arg in typing.get_args(annotation))


def check_hub_model(repo_id: str, what: str, job: Job) -> None:
    """A hub model must be in the local Hugging Face cache, or the hub must be reachable and know it: otherwise the
    run would fail when it reaches the job. Uses huggingface_hub's own cache lookup (no download)."""
    from huggingface_hub import HfApi, is_offline_mode, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        snapshot_download(repo_id, local_files_only=True)
        return
    except LocalEntryNotFoundError:
        pass
    fix = f"download it while online (`hf download {repo_id}`) or give a local folder"
    if is_offline_mode():
        raise UserError(f"{job.source} job {job.name!r}: {what} {repo_id!r} is not in the local Hugging Face cache and "
                        f"HF_HUB_OFFLINE=1 forbids downloading it: {fix}")
    try:
        HfApi().model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        raise UserError(f"{job.source} job {job.name!r}: {what} {repo_id!r} is not on the Hugging Face Hub (or is "
                        "private): check the id, or log in with `hf auth login`") from None
    except Exception as err:  # no network, DNS, proxy, timeout: whatever the HTTP stack raises
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"{job.source} job {job.name!r}: {what} {repo_id!r} is not in the local Hugging Face cache and "
                        f"the hub cannot be reached ({first}): {fix}") from None
