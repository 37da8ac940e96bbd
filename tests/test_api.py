"""The Python API: load_recipe, generate, run."""

from __future__ import annotations

from pathlib import Path

import pytest

import sdkit
from sdkit.errors import UserError


def test_load_recipe_from_mapping_and_file(tmp_path: Path) -> None:
    recipe = sdkit.load_recipe("generate", {"prompt": "x", "steps": 4})
    assert recipe.steps == 4 and recipe.cfg == 7.0
    (tmp_path / "r.yaml").write_text("task: generate\nprompt: y\ncfg: 2\n")
    assert sdkit.load_recipe("generate", tmp_path / "r.yaml").cfg == 2
    with pytest.raises(UserError, match="steps"):
        sdkit.load_recipe("generate", {"steps": 0})
    with pytest.raises(UserError, match="unknown task"):
        sdkit.load_recipe("paint", {})


def test_generate_and_run(tmp_path: Path, tiny_sd_dir: Path) -> None:
    results = sdkit.generate(prompt="a cat", model=str(tiny_sd_dir), steps=2, seed=3, num_images=2, out=tmp_path / "g")
    assert [r.seed for r in results] == [3, 4] and all(r.path.is_file() for r in results)
    (tmp_path / "r.yaml").write_text(f"name: one\ntask: generate\nprompt: x\nmodel: {tiny_sd_dir}\nsteps: 2\nseed: 1\nout: {tmp_path / 'r'}\n")
    assert sdkit.run(tmp_path / "r.yaml") == {"one": str(tmp_path / "r")}
    assert (tmp_path / "r" / "00001-1.png").is_file()
