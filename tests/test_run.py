"""`sdkit run`: recipe files with jobs, defaults, sweeps, references, --set, --dry-run, --print, errors with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, snapshot

from sdkit.outputs import read_text_chunks


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def recipe(tmp_path: Path, tiny_sd_dir: Path) -> Path:
    return write(tmp_path / "r.yaml", f"""\
defaults:
  model: {tiny_sd_dir}
  steps: 2
  width: 32
  height: 32
jobs:
  - name: grid
    task: generate
    prompt: a red circle
    out: {tmp_path}/out
    sweep: {{cfg: [1, 5], seed: [1, 2]}}
  - name: again
    task: generate
    prompt: ${{PROMPT_FROM_ENV}}
    seed: 9
    out: ${{jobs.grid.output}}/again
""")


def test_run_sweep_grid_reuse_and_references(recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdkit.jobs.parse import load_file
    from sdkit.jobs.run import run_jobs

    monkeypatch.setenv("PROMPT_FROM_ENV", "a blue square")
    jobs = load_file(recipe, ["jobs.1.steps=3"])
    assert [j.sweep for j in jobs[:4]] == [{"cfg": 1, "seed": 1}, {"cfg": 1, "seed": 2}, {"cfg": 5, "seed": 1}, {"cfg": 5, "seed": 2}]
    from sdkit.pipelines import PipelineCache

    cache = PipelineCache()
    outputs = run_jobs(jobs, cache)
    assert cache.loads == 1  # five generate jobs, one model load
    assert (tmp_path / "out" / "grid-grid.png").is_file()
    assert sorted(p.name for p in (tmp_path / "out").glob("0*.png")) == ["00001-1.png", "00002-2.png", "00003-1.png", "00004-2.png"]
    again = json.loads(read_text_chunks(tmp_path / "out" / "again" / "00001-9.png")["sdkit"])["recipe"]
    assert again["prompt"] == "a blue square" and again["steps"] == 3
    assert outputs["again"] == f"{tmp_path}/out/again"


def test_print_and_dry_run(recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPT_FROM_ENV", "x")
    before = snapshot(tmp_path)
    printed = invoke("run", recipe, "--print", "--set", "defaults.steps=7")
    assert printed.exit_code == 0 and printed.stdout.count("task: generate") == 5 and "steps: 7" in printed.stdout
    dry = invoke("run", recipe, "--dry-run")
    assert dry.exit_code == 0 and "5 job(s) valid" in dry.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "body,fragments",
    [
        ("jobs:\n  - task: generate\n    prompt: x\n    cfg: -1\n", ["r.yaml:4 jobs[0].cfg", "greater than or equal to 0"]),
        ("jobs:\n  - task: generate\n    stepz: 3\n", ["r.yaml:3 jobs[0].stepz", "unknown key", "valid keys for generate"]),
        ("jobs:\n  - task: paint\n", ["unknown task 'paint'", "generate"]),
        ("jobs:\n  - task: generate\n    prompt: ${NOT_SET_ANYWHERE}\n", ["NOT_SET_ANYWHERE", "not set"]),
        ("jobs:\n  - task: generate\n    model: ${jobs.nope.output}\n", ["no earlier job", "nope"]),
        ("defaults: {bogus: 1}\njobs:\n  - task: generate\n", ["r.yaml:1 defaults.bogus", "no job's task"]),
        ("jobs:\n  - task: generate\n    sweep: {colour: [1, 2]}\n", ["sweep.colour", "no field"]),
        ("prompt: !!python/object/apply:os.system ['touch pwned']\n", ["r.yaml:1", "no !!python tags"]),
        ("jobs: []\n", ["non-empty list"]),
        ("steps: [\n", ["not valid YAML"]),
    ],
)
def test_recipe_errors_name_file_line_key(body: str, fragments: list[str], tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", body)
    before = snapshot(tmp_path)
    assert_user_error(invoke("run", path, "--dry-run"), *fragments)
    assert_user_error(invoke("run", path), *fragments)
    assert snapshot(tmp_path) == before and not Path("pwned").exists()


def test_set_errors(recipe: Path) -> None:
    assert_user_error(invoke("run", recipe, "--set", "nokey"), "KEY=VALUE")
    assert_user_error(invoke("run", recipe, "--set", "jobs.7.cfg=1"), "not a job index")


def test_schema_command() -> None:
    result = invoke("schema", "generate")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False and "cfg" in schema["properties"]
    assert invoke("schema", "paint").exit_code == 2
