"""Samplers by the names users know: one literal table from A1111 names to diffusers classes and their arguments.

Each scheduler is built with `from_config` on the loaded model's own scheduler config, so the model's betas and
prediction type are kept and only the sampling algorithm changes. Names match case-, space-, '_'- and '-'-insensitively,
"dpmpp" reads as "dpm++" (ComfyUI spellings such as `dpmpp_2m_karras` work), and diffusers class names work too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sdkit.errors import UserError

KARRAS = MappingProxyType({"use_karras_sigmas": True})
# keys that shape the sampling algorithm: taken from the spec, never inherited from the model's config
_SAMPLER_KEYS = frozenset({"use_karras_sigmas", "algorithm_type", "solver_order"})


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    cls: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    note: str = ""


def _karras(spec: SchedulerSpec) -> SchedulerSpec:
    return SchedulerSpec(
        f"{spec.name} Karras", spec.cls, {**spec.kwargs, **KARRAS}, tuple(f"{a}_karras" for a in spec.aliases), spec.note
    )


_SDE = {"algorithm_type": "sde-dpmsolver++"}
_BASE = (
    SchedulerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {}, ("dpmpp_2m",)),
    SchedulerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE, ("dpmpp_2m_sde",)),
    SchedulerSpec("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}, ("dpmpp_3m_sde",)),
    SchedulerSpec(
        "DPM++ 2S a", "DPMSolverSinglestepScheduler", {}, ("dpmpp_2s_ancestral",),
        "diffusers' single-step DPM++ (no ancestral noise): the closest match",
    ),
    SchedulerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, ("dpmpp_sde",), "needs torchsde"),
    SchedulerSpec("DPM2", "KDPM2DiscreteScheduler", {}, ("dpm_2",)),
    SchedulerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("dpm_2_ancestral",)),
    SchedulerSpec("LMS", "LMSDiscreteScheduler", {}, ("lms",)),
    SchedulerSpec("Euler", "EulerDiscreteScheduler", {}, ("euler",)),
)
SCHEDULERS: tuple[SchedulerSpec, ...] = (
    *(s for b in _BASE for s in ((b, _karras(b)) if b.name not in ("Euler",) else (b,))),
    SchedulerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, ("euler_ancestral",)),
    SchedulerSpec("Heun", "HeunDiscreteScheduler", {}, ("heun",)),
    SchedulerSpec("DDIM", "DDIMScheduler", {}, ("ddim",)),
    SchedulerSpec("DDPM", "DDPMScheduler", {}, ("ddpm",)),
    SchedulerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, ("pndm",)),
    SchedulerSpec("UniPC", "UniPCMultistepScheduler", {}, ("uni_pc",)),
    SchedulerSpec("DEIS", "DEISMultistepScheduler", {}, ("deis",)),
    SchedulerSpec("LCM", "LCMScheduler", {}, ("lcm",), "for LCM-distilled models or LCM-LoRA"),
    SchedulerSpec("TCD", "TCDScheduler", {}, ("tcd",), "for TCD-distilled models or TCD-LoRA"),
)


def _key(name: str) -> str:
    key = name.strip().lower()
    for sep in (" ", "_", "-"):
        key = key.replace(sep, "")
    return key.replace("dpmpp", "dpm++")


def resolve(name: str) -> SchedulerSpec:
    """The spec for an A1111/ComfyUI name or a diffusers class name; unknown names raise with the valid list."""
    wanted = _key(name)
    for spec in SCHEDULERS:
        if wanted in {_key(spec.name), *(_key(a) for a in spec.aliases)}:
            return spec
    for spec in SCHEDULERS:
        if wanted == _key(spec.cls):
            return SchedulerSpec(spec.cls, spec.cls)
    names = ", ".join(f'"{s.name}"' for s in SCHEDULERS)
    raise UserError(f"unknown scheduler {name!r}: use one of {names} (or a diffusers class name; see `sdkit schedulers`)")


def build(name: str, base_config: Mapping[str, Any]):
    """Build the named scheduler from the model's own scheduler config."""
    import diffusers

    spec = resolve(name)
    cls = getattr(diffusers, spec.cls)
    config = {k: v for k, v in dict(base_config).items() if k not in _SAMPLER_KEYS}
    return cls.from_config(config, **spec.kwargs)
