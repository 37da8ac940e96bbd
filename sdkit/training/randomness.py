"""Where a training step's randomness comes from: never global state, always a generator seeded by the run's seed and
the step's place in the run, so a resumed run draws what the uninterrupted one drew.

    generator = step_generator(seed, micro, process_index)   # one micro-batch of one process (the loop's)
    generators = generator.for_samples(roles)                 # one per sample, by its place in the global batch

Per-sample generators make a global batch's draws (noise, timesteps, crops, caption dropout) independent of how it
is split between processes or machines: two machines with batch b each draw what one process with batch 2b draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class StepGenerator(torch.Generator):
    """The CPU generator of one micro-batch, reproducible on resume and distinct per process; `for_samples` hands out
    one generator per sample instead, keyed by the sample's place in the global batch (not by process)."""

    def __new__(cls, *args, **kwargs):  # torch.Generator's own __new__ takes only a device
        return super().__new__(cls)

    def __init__(self, seed: int, micro: int, process_index: int):
        super().__init__()
        self.seed_, self.micro, self.process_index = seed, micro, process_index
        self.manual_seed((seed * 1_000_003 + micro * 1_009 + process_index) % 2**63)

    def for_samples(self, roles: Sequence[int]) -> list[torch.Generator]:
        """One generator per sample of this process's micro-batch. `roles` tells samples apart that are paired, not
        split, between processes (DreamBooth: 0 instance, 1 class image): sample j of a role with n samples here sits
        at place process_index * n + j of that role in the global batch."""
        counts = {role: list(roles).count(role) for role in set(roles)}
        seen: dict[int, int] = {}
        out = []
        for role in roles:
            place = self.process_index * counts[role] + seen.get(role, 0)
            seen[role] = seen.get(role, 0) + 1
            key = (self.seed_ * 1_000_003 + self.micro * 1_009) * 7_919 + place * 31 + role
            out.append(torch.Generator().manual_seed(key % 2**63))
        return out


def step_generator(seed: int, micro: int, process_index: int) -> StepGenerator:
    """The CPU generator of one micro-batch: all its randomness, reproducible on resume and distinct per process."""
    return StepGenerator(seed, micro, process_index)


def sample_generators(generator, roles: Sequence[int]):
    """One generator per sample: the loop's `StepGenerator.for_samples`, or (any other generator) seeds drawn from it."""
    if hasattr(generator, "for_samples"):
        return generator.for_samples(roles)
    seeds = torch.randint(0, 2**62, (len(roles),), generator=generator).tolist()
    return [torch.Generator().manual_seed(seed) for seed in seeds]
