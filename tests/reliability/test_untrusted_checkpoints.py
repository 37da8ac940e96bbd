"""Checkpoints from someone else, given to the real `sdkit train lora --resume` in a subprocess: a crafted pickle never
runs (its payload would create a file), a file that differs from the manifest is refused naming it, a checkpoint
without a manifest is refused, and a rank-4 checkpoint in a rank-8 run names both ranks. Each: exit 2, one line, no
traceback, the checkpoint untouched and no result written."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import shapes_dataset, snapshot

from sdkit.lora_io import LORA_FILE

SDKIT = str(Path(sys.executable).parent / "sdkit")
TRAIN = ["train", "lora", "--train-batch-size", "2", "--threads", "1", "--use-ema", "--checkpointing-steps", "2"]


class Payload:
    """Unpickling this (anything but a weights-only load) creates `target`: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def sdkit(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([SDKIT, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def assert_refused(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one `error:` line on stderr naming `fragments`, no traceback, nothing on stdout."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout and done.stdout.strip() == ""
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_sd_dir: Path) -> tuple[Path, Path]:
    """(data, a run folder holding checkpoints/step-2) from a real rank-4 LoRA run with EMA."""
    root = tmp_path_factory.mktemp("untrusted")
    data = shapes_dataset(root / "data")
    done = sdkit(*TRAIN, "-m", tiny_sd_dir, "--data", data, "--max-steps", "2", "--rank", "4", "-o", root / "run")
    assert done.returncode == 0, done.stderr[-2000:]
    return data, root / "run"


@pytest.fixture
def checkpoint(saved, tmp_path: Path) -> Path:
    """A copy of the saved step-2 checkpoint to tamper with."""
    return Path(shutil.copytree(saved[1] / "checkpoints/step-2", tmp_path / "given/step-2"))


def resume(tiny_sd_dir: Path, data: Path, out: Path, checkpoint: Path | str, *extra) -> subprocess.CompletedProcess:
    return sdkit(*TRAIN, "-m", tiny_sd_dir, "--data", data, "--max-steps", "4", "-o", out, "--resume", checkpoint, *extra)


def update_manifest(checkpoint: Path, name: str) -> None:
    marker = json.loads((checkpoint / "checkpoint.json").read_text())
    marker.setdefault("files", {})[name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    (checkpoint / "checkpoint.json").write_text(json.dumps(marker))


def test_a_checkpoint_holds_no_pickled_sdkit_state_and_a_full_manifest(saved) -> None:
    folder = saved[1] / "checkpoints/step-2"
    names = sorted(p.name for p in folder.iterdir())
    assert "sdkit_state.safetensors" in names and "sdkit_state.json" in names
    assert not [n for n in names if n.startswith("custom_checkpoint_")]  # accelerate's fully-unpickled custom objects
    files = json.loads((folder / "checkpoint.json").read_text())["files"]
    assert sorted(files) == [n for n in names if n != "checkpoint.json"]
    assert all(files[n] == hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in files)


@pytest.mark.parametrize(
    ("name", "form"),
    [("custom_checkpoint_0.pkl", "torch"), ("random_states_0.pkl", "torch"), ("optimizer.bin", "torch"),
     ("scheduler.bin", "raw pickle"), ("model.safetensors", "torch")],
)  # fmt: skip
def test_crafted_pickle_with_a_matching_manifest_never_runs(name, form, saved, checkpoint, tiny_sd_dir, tmp_path):
    target = tmp_path / "payload-ran"
    if form == "torch":
        torch.save({"state": Payload(target)}, checkpoint / name)
    else:
        (checkpoint / name).write_bytes(pickle.dumps({"state": Payload(target)}))
    update_manifest(checkpoint, name)  # the manifest check passes: this tests the pickle defence itself
    before = snapshot(checkpoint)
    done = resume(tiny_sd_dir, saved[0], tmp_path / "out", checkpoint)
    assert not target.exists(), "the crafted pickle's payload ran"
    line = assert_refused(done, "refused:", name)
    assert any(why in line for why in ("contains code", "not a torch zip file", "not a valid safetensors file")), line
    assert snapshot(checkpoint) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_crafted_pickle_without_the_manifest_is_refused_naming_it(name, saved, checkpoint, tiny_sd_dir, tmp_path):
    target = tmp_path / "payload-ran"
    added = not (checkpoint / name).exists()
    torch.save({"state": Payload(target)}, checkpoint / name)
    before = snapshot(checkpoint)
    done = resume(tiny_sd_dir, saved[0], tmp_path / "out", checkpoint)
    assert not target.exists(), "the crafted pickle's payload ran"
    assert_refused(done, name, "is not in its manifest" if added else "does not match its sha256")
    assert snapshot(checkpoint) == before and not (tmp_path / "out").exists()


def test_latest_in_a_tampered_run_is_refused_and_nothing_is_lost(saved, tiny_sd_dir, tmp_path):
    run = Path(shutil.copytree(saved[1], tmp_path / "run"))
    (run / "checkpoints/step-2/sdkit_state.json").write_text('{"objects": []}')  # a changed plain-data file
    (run / "checkpoints/step-2/model.safetensors").unlink()
    before = snapshot(run)
    assert_refused(resume(tiny_sd_dir, saved[0], run, "latest"), "model.safetensors", "is missing")
    assert snapshot(run) == before


def test_a_checkpoint_without_a_manifest_is_refused(saved, checkpoint, tiny_sd_dir, tmp_path):
    """What an older sdkit wrote: no manifest, pickled custom objects (here a crafted one). It cannot be verified."""
    target = tmp_path / "payload-ran"
    torch.save({"state": Payload(target)}, checkpoint / "custom_checkpoint_0.pkl")
    marker = json.loads((checkpoint / "checkpoint.json").read_text())
    del marker["files"]
    (checkpoint / "checkpoint.json").write_text(json.dumps(marker))
    before = snapshot(checkpoint)
    assert_refused(resume(tiny_sd_dir, saved[0], tmp_path / "out", checkpoint), "no file manifest", "new output folder")
    assert not target.exists() and snapshot(checkpoint) == before and not (tmp_path / "out").exists()


def test_a_rank_4_checkpoint_in_a_rank_8_run_names_both_ranks(saved, checkpoint, tiny_sd_dir, tmp_path):
    before = snapshot(checkpoint)
    done = resume(tiny_sd_dir, saved[0], tmp_path / "out", checkpoint, "--rank", "8")
    assert_refused(done, "rank-4", "rank 8", "--rank 4")
    assert snapshot(checkpoint) == before
    # train_lora writes recipe.yaml once the base model is loaded, before the checkpoint is: no LoRA, no checkpoint
    out = tmp_path / "out"
    assert not out.exists() or {p.name for p in out.iterdir()} <= {"recipe.yaml"}, LORA_FILE
