"""SIGKILL at random moments of a checkpointing run (10 trials): a complete checkpoint always survives, `latest`
never picks an incomplete one, and resuming ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_training_core import train_toy

from sdkit.training import checkpoints as ckpt

TARGET = Path(__file__).with_name("kill_target.py")
FIELDS = {"max_steps": 12, "checkpointing_steps": 1, "checkpoints_total_limit": 2}


@pytest.mark.slow  # multi-process or end to end
def test_sigkill_trials(tmp_path: Path) -> None:
    reference = train_toy(tmp_path / "reference", **FIELDS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(TARGET), str(tmp_path / "timing")], env=env, check=True, capture_output=True, timeout=300)
    duration = time.perf_counter() - start
    rng = random.Random(8)
    survived = 0
    for trial in range(10):
        out = tmp_path / f"trial{trial}"
        proc = subprocess.Popen([sys.executable, str(TARGET), str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if trial % 2 == 0:  # a random moment after the first checkpoint: mid-step or mid-save, never "too early"
            deadline = time.time() + 240
            while ckpt.latest_checkpoint(out) is None and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # a random moment of the whole run, start-up included
            time.sleep(rng.uniform(0.2, 1.0) * duration)
        proc.kill()
        proc.wait()
        latest = ckpt.latest_checkpoint(out)
        if latest is not None:
            survived += 1
            assert ckpt.is_complete(latest)
            assert all(ckpt.is_complete(p) for _, p in ckpt.complete_checkpoints(out))
        resumed = train_toy(out, resume="latest", **FIELDS)  # finishes the run from whatever the kill left
        assert all(torch.equal(reference[k], resumed[k]) for k in reference), f"trial {trial}"
    assert survived >= 5  # most kills land after the first checkpoint: the property was really exercised


def test_full_disk_during_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_toy(out, max_steps=2)  # step-2 is complete
    before = {p.name for p in (out / "checkpoints").iterdir()}
    done = subprocess.run([sys.executable, str(TARGET.with_name("full_disk_target.py")), str(out)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: saving checkpoint step-4") and "is the disk full?" in last and "step-2 is intact" in last
    assert {p.name for p in (out / "checkpoints").iterdir()} == before  # no half-written step-4, no temp folder
    assert ckpt.is_complete(ckpt.latest_checkpoint(out))
    resumed = train_toy(out, max_steps=6, resume="latest")  # with space again, the run continues from step-2
    assert all(torch.isfinite(v).all() for v in resumed.values())
