"""bench/sampler_sweep.py's summary figure: the fewest steps at which a sampler reaches 95 % of its score at the most."""

from __future__ import annotations

from bench.sampler_sweep import steps_to_reach


def test_steps_to_reach_95_percent_of_the_last_score() -> None:
    assert steps_to_reach([2, 5, 20, 50], [0.1, 0.9, 0.97, 1.0]) == 20  # 0.9 < 0.95
    assert steps_to_reach([2, 5, 20, 50], [0.1, 0.95, 0.9, 1.0]) == 5  # the first count that reaches it
    assert steps_to_reach([2, 50], [0.0, 0.0]) == 2  # nothing to reach
