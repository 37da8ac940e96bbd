"""Figures as PNG files, drawn with matplotlib's object API (a `Figure` per plot: no pyplot, no global state) and
written through sdkit.atomic: a metric against a swept setting per sampler, and samplers' noise schedules.

    line_plot(Path("sweep.png"), {"Euler": ([2, 5, 20], [0.1, 0.6, 0.9])}, "steps", "adherence", "shapes sweep")
    schedule_plot(Path("schedule.png"), schedules(["DPM++ 2M", "DPM++ 2M Karras"], config, steps=20), "shapes")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdkit import atomic

DPI = 100
STYLES = ("-", "--", ":", "-.")  # line styles in turn, so that lines lying on top of each other stay visible


def save(figure: Any, path: Path) -> Path:
    """Write a matplotlib Figure as a PNG, atomically (a temp file in the same folder, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_file(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))


def line_plot(path: Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
              title: str, *, log_x: bool = False) -> Path:  # fmt: skip
    """One line with markers per series (name -> (xs, ys)), a legend, a grid."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    for i, (name, (xs, ys)) in enumerate(series.items()):
        axes.plot(xs, ys, marker="o", linestyle=STYLES[i % len(STYLES)], label=name)
    if log_x:
        axes.set_xscale("log")
        ticks = sorted({x for xs, _ in series.values() for x in xs})
        axes.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axes.minorticks_off()
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return save(figure, path)


@dataclass(frozen=True)
class Schedule:
    name: str
    timesteps: list[float]  # the model timestep of each denoising step
    sigmas: list[float]  # the noise level before each step, and after the last one (0 for a clean image)


def schedule_of(name: str, config: Mapping[str, Any], steps: int) -> Schedule:
    """The timesteps and sigmas the named sampler runs at `steps` steps, built by sdkit.schedulers.build on `config`
    (the model's own scheduler config). Samplers without a sigma table (DDIM, DDPM, PNDM, LCM, TCD) get the sigma of
    each timestep, sqrt((1 - alpha_bar) / alpha_bar), followed by 0."""
    import torch

    from sdkit import schedulers

    scheduler = schedulers.build(name, config)
    scheduler.set_timesteps(steps, device="cpu")
    timesteps = [float(t) for t in scheduler.timesteps]
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or len(sigmas) == 0:
        alpha_bar = scheduler.alphas_cumprod[torch.as_tensor(scheduler.timesteps).long()]
        sigmas = torch.cat([((1 - alpha_bar) / alpha_bar).sqrt(), torch.zeros(1)])
    return Schedule(name, timesteps, [float(s) for s in sigmas])


def scheduler_config(ref: str) -> tuple[Any, dict[str, Any]]:
    """A model's resolved reference and its own scheduler config (scheduler/scheduler_config.json of a diffusers
    folder or hub repository), without loading any weights."""
    from sdkit.errors import UserError
    from sdkit.models import resolve_model

    model = resolve_model(ref, hash_local=False)
    if model.kind == "file":
        raise UserError(f"--model {ref} is a single-file checkpoint, which holds no scheduler config: give a diffusers folder or hub id")
    import diffusers

    try:
        config = diffusers.DDPMScheduler.load_config(model.location, subfolder="scheduler")
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"could not read the scheduler config of {ref} ({first}): give a diffusers folder, or a hub id reachable now") from None
    return model, dict(config)


def schedule_plot(path: Path, schedules: Sequence[Schedule], model: str) -> Path:
    """Two panels against the step index: sigma (log scale; a final 0 and an infinite first sigma, as DDIM reports at a
    zero-terminal-SNR schedule's first step, are left off) and the model timestep."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4.2))
    sigma_axes, time_axes = figure.subplots(1, 2)
    for n, schedule in enumerate(schedules):
        style = {"marker": ".", "linestyle": STYLES[n % len(STYLES)], "label": schedule.name}
        points = [(i, s) for i, s in enumerate(schedule.sigmas) if 0 < s < math.inf]
        sigma_axes.plot([i for i, _ in points], [s for _, s in points], **style)
        time_axes.plot(range(len(schedule.timesteps)), schedule.timesteps, **style)
    steps = max(len(s.timesteps) for s in schedules)
    sigma_axes.set(yscale="log", xlabel="step", ylabel="sigma (noise level)", title=f"sigmas, {steps} steps ({model})")
    time_axes.set(xlabel="step", ylabel="timestep", title=f"timesteps, {steps} steps ({model})")
    for axes in (sigma_axes, time_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    return save(figure, path)
