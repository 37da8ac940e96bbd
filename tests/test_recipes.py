"""Every recipe file in recipes/ validates against its task's schema (the same check `sdkit run --dry-run` starts with)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdkit.jobs.parse import load_file

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


def test_there_are_recipes_for_every_family() -> None:
    names = {p.stem for p in RECIPES}
    assert {"shapes-txt2img", "sd15-txt2img", "sdxl-txt2img", "sd15-controlnet", "shapes-eval", "shapes-base"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates(path: Path) -> None:
    """Every job is its task's recipe (references to earlier jobs' outputs filled with their output fields), and the
    recipe survives a round trip through its own YAML form: what `sdkit run` would run is what the file says."""
    from sdkit.jobs.parse import resolve_references

    jobs = load_file(path)
    assert jobs
    outputs: dict[str, str] = {}
    for job in jobs:
        recipe = resolve_references(job, outputs)
        assert isinstance(recipe, job.task.schema), (job.name, type(recipe))
        assert job.task.schema.model_validate(recipe.model_dump(mode="json")) == recipe
        outputs[job.name] = job.task.output_of(recipe, None)


SMALL = {
    "shapes-txt2img.yaml": ["steps=2", "num_images=1"],
    "shapes-sweep.yaml": ["defaults.steps=2"],
    "shapes-eval.yaml": ["n=2", "steps=2", "batch_size=2"],
    "shapes-sampler-sweep.yaml": ["world_prompts=1", "values=[1, 2]"],
    "shapes-canny.yaml": ["jobs.0.n=8", "jobs.1.max_steps=2", "jobs.1.train_batch_size=4", "jobs.1.validation_steps=null",
                          "jobs.1.checkpointing_steps=null"],
    "shapes-base.yaml": ["jobs.0.n=12", "jobs.1.n=12", "jobs.2.max_steps=2", "jobs.2.train_batch_size=4",
                         "jobs.2.validation_steps=null", "jobs.2.checkpointing_steps=null", "jobs.3.max_steps=2",
                         "jobs.3.train_batch_size=4", "jobs.3.validation_steps=null", "jobs.3.checkpointing_steps=null",
                         "jobs.7.n=12", "jobs.9.n=12", "jobs.11.n=12",
                         *(f"jobs.{i}.{field}" for i in (4, 5, 6, 8, 10, 12) for field in (
                             "max_steps=2", "train_batch_size=4", "validation_steps=null", "checkpointing_steps=null"))],
}


@pytest.mark.slow  # multi-process or end to end
@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_recipes_run_end_to_end(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shapes-world recipes run as written, with tiny counts, in a scratch folder (their paths are relative)."""
    from helpers import invoke

    path = next(p for p in RECIPES if p.name == name)
    monkeypatch.chdir(tmp_path)
    sets = [a for s in SMALL[name] for a in ("--set", s)]
    result = invoke("run", path, *sets)
    assert result.exit_code == 0, result.output[-2000:]
    # every job wrote what its task writes: generate its numbered images, eval its report, data its dataset, a
    # trainer its result (a folder in the output folder, or the LoRA/embedding files)
    expected_images: dict[Path, int] = {}
    for job in load_file(path, SMALL[name]):
        recipe = job.task.recipe({k: v for k, v in job.raw.items() if "${" not in str(v)} | _filled(job), str(path))
        out = Path(getattr(recipe, job.task.output_field))
        assert out.exists() and (out.is_file() or any(out.iterdir())), (job.name, out)
        if job.task.name == "generate":
            expected_images[out.resolve()] = expected_images.get(out.resolve(), 0) + recipe.num_images
        elif job.task.name == "data-shapes":
            assert len((out / "metadata.jsonl").read_text().splitlines()) == recipe.n
        elif job.task.name == "eval":
            assert (out / "report.json").is_file(), sorted(p.name for p in out.iterdir())
        elif job.task.name == "eval-sweep":
            assert {"sweep.json", "sweep.plot.png", "sweep.grid.png"} <= {p.name for p in out.iterdir()}
        elif job.task.name.startswith("train-"):
            assert (out / "run.json").is_file() and (out / "recipe.yaml").is_file(), job.name
    for out, count in expected_images.items():
        assert len([p for p in out.glob("*.png") if re.fullmatch(r"\d{5,}-\d+\.png", p.name)]) == count, out


def _filled(job) -> dict:
    """The job's `${jobs.NAME.output}` fields, filled with a placeholder path (only the output field is read)."""
    return {k: "." for k, v in job.raw.items() if "${" in str(v)}
