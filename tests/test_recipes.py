"""Every recipe file in recipes/ validates against its task's schema (the same check `sdkit run --dry-run` starts with)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdkit.jobs.parse import load_file

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


def test_there_are_recipes_for_every_family() -> None:
    names = {p.stem for p in RECIPES}
    assert {"shapes-txt2img", "sd15-txt2img", "sdxl-txt2img", "sd15-controlnet", "shapes-eval", "shapes-base"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates(path: Path) -> None:
    jobs = load_file(path)
    assert jobs and all(job.task.schema.model_validate(job.raw) for job in jobs if "${" not in str(job.raw))


SMALL = {
    "shapes-txt2img.yaml": ["steps=2", "num_images=1"],
    "shapes-sweep.yaml": ["defaults.steps=2"],
    "shapes-eval.yaml": ["n=2", "steps=2", "batch_size=2"],
    "shapes-canny.yaml": ["jobs.0.n=8", "jobs.1.max_steps=2", "jobs.1.train_batch_size=4", "jobs.1.validation_steps=null",
                          "jobs.1.checkpointing_steps=null"],
    "shapes-base.yaml": ["jobs.0.n=12", "jobs.1.n=12", "jobs.2.max_steps=2", "jobs.2.train_batch_size=4",
                         "jobs.2.validation_steps=null", "jobs.2.checkpointing_steps=null", "jobs.3.max_steps=2",
                         "jobs.3.train_batch_size=4", "jobs.3.validation_steps=null", "jobs.3.checkpointing_steps=null",
                         "jobs.7.n=12", "jobs.9.n=12", "jobs.11.n=12",
                         *(f"jobs.{i}.{field}" for i in (4, 5, 6, 8, 10, 12) for field in (
                             "max_steps=2", "train_batch_size=4", "validation_steps=null", "checkpointing_steps=null"))],
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_recipes_run_end_to_end(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shapes-world recipes run as written, with tiny counts, in a scratch folder (their paths are relative)."""
    from cli_helpers import invoke

    path = next(p for p in RECIPES if p.name == name)
    monkeypatch.chdir(tmp_path)
    sets = [a for s in SMALL[name] for a in ("--set", s)]
    result = invoke("run", path, *sets)
    assert result.exit_code == 0, result.output[-2000:]
    assert list(tmp_path.rglob("*.png")) or list(tmp_path.rglob("*.safetensors"))
