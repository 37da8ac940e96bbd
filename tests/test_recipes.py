"""Every recipe file in recipes/ validates against its task's schema (the same check `sdkit run --dry-run` starts with)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdkit.jobs import load_file

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


def test_there_are_recipes_for_every_family() -> None:
    names = {p.stem for p in RECIPES}
    assert {"shapes-txt2img", "sd15-txt2img", "sdxl-txt2img", "sd15-controlnet", "shapes-eval", "shapes-base"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates(path: Path) -> None:
    jobs = load_file(path)
    assert jobs and all(job.task.schema.model_validate(job.raw) for job in jobs if "${" not in str(job.raw))
