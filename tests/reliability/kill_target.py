"""A toy training run for kill trials: `python kill_target.py OUT` (checkpoint every step, a little work per step)."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import test_training_core  # noqa: E402
from test_training_core import toy_loss, train_toy  # noqa: E402


def slow_loss(batch, models, generator):
    time.sleep(0.05)  # spread the run out so kills land in steps and in checkpoint saves alike
    return toy_loss(batch, models, generator)


test_training_core.toy_loss = slow_loss  # this script's own copy of the toy: nothing else imports it
train_toy(Path(sys.argv[1]), **{"max_steps": 12, "checkpointing_steps": 1, "checkpoints_total_limit": 2, "resume": "latest"})
