"""YAML from someone else: alias bombs, deep nesting, cycles, duplicate keys, huge sweeps and job lists, a bad --set
value, an oversized file. Each exits 2 at once with one line, no traceback, nothing written; the limits hold for
every YAML sdkit reads (`sdkit run`, `--recipe` of generate and train, `--set`). The subprocess timeout turns a
hang into a failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import snapshot
from untrusted_helpers import assert_refused, sdkit


def anchors() -> list[str]:
    """Nine levels of nine aliases: 9^9 ≈ 387 million strings in 700 bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    return lines + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]


def laughs() -> str:
    return "prompt: a red circle\n" + "\n".join(anchors()) + "\nlora: *a9\n"


COMMANDS = {
    "run --dry-run": ["run", "{f}", "--dry-run"],
    "run": ["run", "{f}"],
    "generate --recipe": ["generate", "--recipe", "{f}", "-o", "{w}/out"],
    "train lora --recipe": ["train", "lora", "--recipe", "{f}", "--output-dir", "{w}/out", "--data-dir", "{w}"],
}


def refused(work: Path, text: str, *fragments: str, command: str = "run --dry-run", extra: tuple = ()) -> str:
    recipe = work / "recipe.yaml"
    recipe.write_text(text)
    before = snapshot(work)
    args = [a.replace("{f}", str(recipe)).replace("{w}", str(work)) for a in COMMANDS[command]]
    line = assert_refused(sdkit(*args, *extra, cwd=work), *fragments)
    assert snapshot(work) == before
    assert not (work / "outputs").exists() and not (work / "out").exists()
    return line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_alias_bomb_is_refused_at_once(command: str, tmp_path: Path) -> None:
    line = refused(tmp_path, laughs(), "recipe.yaml:", "1,000,000 values", command=command)
    assert "alias" in line


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    refused(tmp_path, "prompt: x\nlora: " + "[" * 5000 + "]" * 5000 + "\n", "recipe.yaml:2", "nested more than 64 levels")


def test_nesting_through_aliases_is_counted(tmp_path: Path) -> None:
    """Each anchor is 40 levels deep; the second holds the first: 80 levels once expanded."""
    text = "a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: &b " + "[" * 40 + "*a" + "]" * 40 + "\nprompt: x\n"
    refused(tmp_path, text, "nested more than 64 levels deep once aliases are expanded")


def test_alias_cycle_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, "prompt: x\nlora: &a [1, *a]\n", "recipe.yaml:2", "(a cycle)")


@pytest.mark.parametrize("command", ["run --dry-run", "generate --recipe"])
def test_duplicate_key_names_both_lines(command: str, tmp_path: Path) -> None:
    refused(tmp_path, "prompt: x\ncfg: 3\nsteps: 2\ncfg: 5\n", "recipe.yaml:4", "'cfg'", "lines 2 and 4", command=command)


def test_duplicate_key_inside_a_job(tmp_path: Path) -> None:
    text = "jobs:\n  - task: generate\n    prompt: x\n    seed: 1\n  - task: generate\n    seed: 2\n    seed: 3\n"
    refused(tmp_path, text, "recipe.yaml:7", "'seed'", "lines 6 and 7")


def test_merge_keys_may_repeat_a_key(tmp_path: Path) -> None:
    """`<<: *base` then an explicit key overrides the merged one: plain YAML, not a duplicate."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("defaults: &base {steps: 2, cfg: 3}\njobs:\n  - {<<: *base, task: generate, prompt: x, cfg: 5}\n")
    proc = sdkit("run", recipe, "--print", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cfg: 5" in proc.stdout and "steps: 2" in proc.stdout


def test_sweep_past_the_job_limit_names_the_count(tmp_path: Path) -> None:
    seeds = ", ".join(map(str, range(101)))
    cfgs = ", ".join(map(str, range(1, 101)))
    text = f"prompt: x\nsweep:\n  seed: [{seeds}]\n  cfg: [{cfgs}]\n"
    refused(tmp_path, text, "10,100 jobs", "10,000", command="run")


def test_job_list_past_the_job_limit_names_the_count(tmp_path: Path) -> None:
    text = "defaults: {steps: 2}\njobs: [" + ", ".join(["&j {task: generate, prompt: x}"] + ["*j"] * 10_000) + "]\n"
    refused(tmp_path, text, "10,001 jobs", "10,000")


def test_sweep_repeating_a_large_field_is_refused(tmp_path: Path) -> None:
    """400,000 values under the YAML limit, but three sweep points repeat them: 1.2 million values to validate."""
    text = ("x: &x [" + ", ".join(["a.safetensors"] * 2000) + "]\nprompt: p\nlora: &y [" + ", ".join(["*x"] * 200)
            + "]\nsweep: {seed: [1, 2, 3]}\n")
    refused(tmp_path, text, "3 jobs", "values", "1,000,000", command="run")


def test_bad_set_value_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, "prompt: x\n", "--set cfg=[1,2", "not valid YAML", extra=("--set", "cfg=[1,2"))


def test_alias_bomb_in_a_set_value_is_refused(tmp_path: Path) -> None:
    bomb = "{" + ", ".join(anchors()) + "}"
    refused(tmp_path, "prompt: x\n", "--set", "1,000,000 values", extra=("--set", f"negative={bomb}"))


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    text = "prompt: x\n" + "# padding\n" * 220_000  # 2.2 MB of comments around a valid recipe
    refused(tmp_path, text, "MiB", "limited to 2 MiB")
