"""Samplers and schedule types by the names users know: A1111 1.10's samplers on diffusers' schedulers.

    choice = resolve("DPM++ 2M", "automatic")      # -> DPMSolverMultistepScheduler, Karras sigmas (A1111's Automatic)
    scheduler = build("DPM++ 2M SDE Karras", pipe.scheduler.config)

Each scheduler is built with `from_config` on the loaded model's own scheduler config, so the model's betas and
prediction type are kept and only the sampling algorithm and the schedule change. Names match case-, space-, '_'- and
'-'-insensitively, "dpmpp" reads as "dpm++", and these all work:

* A1111 1.10 sampler names (`SAMPLERS`) with a schedule type (`SCHEDULES`): "Automatic" is the sampler's own default
  in A1111 (Karras for DPM++ 2M, Exponential for DPM++ 2M SDE, ...; Uniform where it has none). On a model trained
  with zero terminal SNR (the shapes model) Automatic keeps the model's own spacing instead: Karras and exponential
  sigmas would start from its infinite top sigma.
* the pre-1.9 combined names ("DPM++ 2M Karras", "DPM++ 2M SDE Exponential"), the k_* aliases ("k_dpmpp_2m_ka"),
  ComfyUI sampler_name + scheduler pairs ("dpmpp_2m" + "karras"), and diffusers class names.
* A1111 samplers and schedules that diffusers cannot run are refused with the reason (`REFUSED`).

A schedule type maps to diffusers' options (`use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`,
`timestep_spacing`); a class without the option refuses that type. `written_schedule` gives the label to write into
an image, so that A1111 replays the same schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sdkit.errors import UserError

SIGMAS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
# keys that shape the sampling algorithm or schedule: taken from the choice, never inherited from the model's config
_SAMPLER_KEYS = frozenset({*SIGMAS, "algorithm_type", "solver_order", "solver_type"})
_LINSPACE = {"timestep_spacing": "linspace"}  # sigma schedules span the model's whole range, as k-diffusion's do

# A1111 1.10 schedule types (modules/sd_schedulers.py) -> diffusers options; None: refused (REFUSED says why)
SCHEDULES: Mapping[str, Mapping[str, Any] | None] = MappingProxyType({
    "Automatic": {},
    "Uniform": _LINSPACE,
    "Karras": {"use_karras_sigmas": True, **_LINSPACE},
    "Exponential": {"use_exponential_sigmas": True, **_LINSPACE},
    "Polyexponential": None,
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "KL Optimal": None,
    "Align Your Steps": None,
    "Simple": {"timestep_spacing": "trailing"},
    "Normal": _LINSPACE,
    "DDIM": {"timestep_spacing": "leading", "steps_offset": 1},
    "Beta": {"use_beta_sigmas": True, **_LINSPACE},
    "Linear Quadratic": None,  # ComfyUI's
})  # fmt: skip
# other spellings of schedule types: A1111's internal names and ComfyUI's scheduler names
SCHEDULE_ALIASES = MappingProxyType({"ddim_uniform": "DDIM", "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal",
                                     "align_your_steps": "Align Your Steps", "linear_quadratic": "Linear Quadratic",
                                     "polyexponential": "Polyexponential"})
# combined-name and k_* suffixes that name a schedule type (longest first)
_SUFFIXES = (("sgmuniform", "SGM Uniform"), ("exponential", "Exponential"), ("karras", "Karras"), ("uniform", "Uniform"),
             ("simple", "Simple"), ("normal", "Normal"), ("beta", "Beta"), ("exp", "Exponential"), ("ka", "Karras"))


@dataclass(frozen=True)
class Sampler:
    """An A1111 sampler on a diffusers scheduler class; `automatic` is A1111's default schedule type for it ("" = the
    model's own schedule, as for A1111's DDIM, PLMS, UniPC and LCM, whose schedule type A1111 ignores)."""

    name: str
    cls: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    automatic: str = ""
    aliases: tuple[str, ...] = ()
    note: str = ""


_SDE = {"algorithm_type": "sde-dpmsolver++"}
SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras",
            ("k_dpmpp_2m", "dpmpp_2m")),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", {}, "Karras", ("k_dpmpp_sde", "dpmpp_sde", "dpmpp_sde_gpu"),
            "needs torchsde"),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {**_SDE, "solver_order": 2, "solver_type": "midpoint"},
            "Exponential", ("k_dpmpp_2m_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu")),
    Sampler("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", {**_SDE, "solver_order": 2, "solver_type": "heun"},
            "Exponential", ("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu")),
    Sampler("DPM++ 2S a", "DPMSolverSinglestepScheduler", {"solver_order": 2}, "Karras",
            ("k_dpmpp_2s_a", "dpmpp_2s_ancestral"), "diffusers' single-step DPM++, without the ancestral noise"),
    Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}, "Exponential",
            ("k_dpmpp_3m_sde", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu")),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", {}, "Uniform", ("k_euler_a", "k_euler_ancestral", "euler_ancestral")),
    Sampler("Euler", "EulerDiscreteScheduler", {}, "Uniform", ("k_euler", "euler")),
    Sampler("LMS", "LMSDiscreteScheduler", {}, "Uniform", ("k_lms", "lms")),
    Sampler("Heun", "HeunDiscreteScheduler", {}, "Uniform", ("k_heun", "heun")),
    Sampler("DPM2", "KDPM2DiscreteScheduler", {}, "Karras", ("k_dpm_2", "dpm_2")),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, "Karras", ("k_dpm_2_a", "dpm_2_ancestral")),
    Sampler("DDIM", "DDIMScheduler", {}, "", ("ddim",)),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, "", ("plms", "pndm")),
    Sampler("UniPC", "UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"},
            "", ("unipc", "uni_pc"), "A1111's defaults: variant bh1, order 3, ending at the smallest sigma"),
    Sampler("LCM", "LCMScheduler", {}, "", ("k_lcm", "lcm"), "for LCM-distilled models or LCM-LoRA"),
    # not A1111 samplers: diffusers schedulers sdkit offers under these names
    Sampler("UniPC bh2", "UniPCMultistepScheduler", {"solver_type": "bh2", "solver_order": 2}, "", ("uni_pc_bh2",),
            "ComfyUI's uni_pc_bh2 (diffusers' default UniPC)"),
    Sampler("DDPM", "DDPMScheduler", {}, "", ("ddpm",)),
    Sampler("DEIS", "DEISMultistepScheduler", {}, "", ("deis",)),
    Sampler("TCD", "TCDScheduler", {}, "", ("tcd",), "for TCD-distilled models or TCD-LoRA"),
)  # fmt: skip

_NO_SCHEDULER = "diffusers has no scheduler for it"
REFUSED: Mapping[str, str] = MappingProxyType({
    "DPM fast": f"k-diffusion's fixed-step DPM-Solver of adaptive order: {_NO_SCHEDULER}",
    "DPM adaptive": f"k-diffusion's adaptive step size (it ignores the step count): {_NO_SCHEDULER}",
    "Restart": f"the Restart sampler re-noises back to earlier steps: {_NO_SCHEDULER}",
    "DDIM CFG++": "CFG++ changes the guidance formula inside the sampler step, which diffusers' pipelines do not expose",
    "Polyexponential": "diffusers' schedulers have no polyexponential sigmas",
    "KL Optimal": "diffusers' schedulers have no KL-optimal sigmas",
    "Align Your Steps": "diffusers' schedulers have no Align Your Steps sigmas for any step count",
    "Linear Quadratic": "diffusers' schedulers have no linear-quadratic schedule",
})  # fmt: skip
REFUSED_SAMPLERS = ("DPM fast", "DPM adaptive", "Restart", "DDIM CFG++")
_REFUSED_ALIASES = MappingProxyType({
    "k_dpm_fast": "DPM fast", "dpm_fast": "DPM fast", "k_dpm_ad": "DPM adaptive", "dpm_adaptive": "DPM adaptive",
    "restart": "Restart", "ddim_cfgpp": "DDIM CFG++",
})  # fmt: skip
_COMFY_OTHERS = ("euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "dpmpp_2s_ancestral_cfg_pp", "heunpp2",
                 "ipndm", "ipndm_v", "res_multistep", "res_multistep_ancestral", "gradient_estimation", "er_sde",
                 "seeds_2", "seeds_3", "sa_solver", "dpmpp_2m_sde_heun_gpu_cfg_pp", "lcm_cfg_pp")

# which schedule options each diffusers class takes (checked against the classes' signatures by the tests)
_ALL_SIGMAS = frozenset(SIGMAS)
CLASS_OPTIONS: Mapping[str, frozenset[str]] = MappingProxyType({
    "DPMSolverMultistepScheduler": _ALL_SIGMAS | {"timestep_spacing"},
    "DPMSolverSinglestepScheduler": _ALL_SIGMAS,
    "DPMSolverSDEScheduler": _ALL_SIGMAS | {"timestep_spacing"},
    "KDPM2DiscreteScheduler": _ALL_SIGMAS | {"timestep_spacing"},
    "KDPM2AncestralDiscreteScheduler": _ALL_SIGMAS | {"timestep_spacing"},
    "LMSDiscreteScheduler": _ALL_SIGMAS | {"timestep_spacing"},
    "EulerDiscreteScheduler": _ALL_SIGMAS | {"timestep_spacing"},
    "EulerAncestralDiscreteScheduler": frozenset({"timestep_spacing"}),
    "HeunDiscreteScheduler": _ALL_SIGMAS | {"timestep_spacing"},
    "DDIMScheduler": frozenset({"timestep_spacing"}),
    "DDPMScheduler": frozenset({"timestep_spacing"}),
    "PNDMScheduler": frozenset({"timestep_spacing"}),
    "UniPCMultistepScheduler": _ALL_SIGMAS | {"timestep_spacing"},
    "DEISMultistepScheduler": _ALL_SIGMAS | {"timestep_spacing"},
    "LCMScheduler": frozenset({"timestep_spacing"}),
    "TCDScheduler": frozenset({"timestep_spacing"}),
})  # fmt: skip


@dataclass(frozen=True)
class Choice:
    """A sampler with a schedule type: `schedule` is the type asked for ("Automatic" resolves in `config`)."""

    sampler: Sampler
    schedule: str

    @property
    def name(self) -> str:
        return self.sampler.name

    @property
    def cls(self) -> str:
        return self.sampler.cls

    def options(self, base_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The diffusers options of the schedule actually used on a model with `base_config`."""
        schedule = self.effective(base_config)
        takes = CLASS_OPTIONS.get(self.cls, frozenset()) | {"steps_offset"}
        return {k: v for k, v in SCHEDULES[schedule].items() if k in takes}

    def effective(self, base_config: Mapping[str, Any] | None = None) -> str:
        """The schedule type that runs: Automatic becomes the sampler's default, except for samplers that follow the
        model's own schedule, and on zero-terminal-SNR models for classes that take the model's timestep spacing (then
        it stays "Automatic")."""
        if self.schedule != "Automatic":
            return self.schedule
        own_spacing = "timestep_spacing" in CLASS_OPTIONS.get(self.cls, frozenset())
        if not self.sampler.automatic or (own_spacing and (base_config or {}).get("rescale_betas_zero_snr")):
            return "Automatic"
        return self.sampler.automatic

    @property
    def kwargs(self) -> dict[str, Any]:
        return {**self.sampler.kwargs, **self.options()}

    def config(self, base_config: Mapping[str, Any]) -> dict[str, Any]:
        """The scheduler config this choice builds from a model's config (what `build` passes to `from_config`)."""
        config = {k: v for k, v in dict(base_config).items() if k not in _SAMPLER_KEYS}
        return {**config, **self.sampler.kwargs, **self.options(base_config)}


def _key(name: str) -> str:
    key = str(name).strip().lower()
    for sep in (" ", "_", "-"):
        key = key.replace(sep, "")
    return key.replace("dpmpp", "dpm++")


def schedule_label(name: str | None) -> str:
    """The A1111 label of a schedule type as A1111, ComfyUI or sdkit spell it ("karras", "sgm_uniform", "SGM Uniform")."""
    if name is None or not str(name).strip():
        return "Automatic"
    wanted = _key(name)
    for label in SCHEDULES:
        if _key(label) == wanted:
            return label
    for alias, label in SCHEDULE_ALIASES.items():
        if _key(alias) == wanted:
            return label
    names = ", ".join(_key(s).replace("sgmuniform", "sgm-uniform") for s, o in SCHEDULES.items() if o is not None)
    raise UserError(f"unknown schedule type {name!r}: use one of {names}")


def _sampler(key: str) -> Sampler | None:
    for sampler in SAMPLERS:
        if key in {_key(sampler.name), *(_key(a) for a in sampler.aliases)}:
            return sampler
    for sampler in SAMPLERS:
        if key == _key(sampler.cls):
            return Sampler(sampler.cls, sampler.cls)
    return None


def _refuse_sampler(key: str, name: str) -> None:
    for label in REFUSED_SAMPLERS:
        if key in {_key(label), *(_key(a) for a, v in _REFUSED_ALIASES.items() if v == label)}:
            raise UserError(f"sampler {name!r} cannot run in sdkit: {REFUSED[label]}; choose another (see `sdkit schedulers`)")
    if key in {_key(c) for c in _COMFY_OTHERS}:
        raise UserError(f"ComfyUI sampler {name!r} cannot run in sdkit: {_NO_SCHEDULER}; choose another (see `sdkit schedulers`)")


def resolve(name: str, schedule_type: str | None = "automatic") -> Choice:
    """The sampler and schedule type for a name (A1111, combined, k_*, ComfyUI or diffusers class) and a schedule type
    (A1111 or ComfyUI spelling); refused or unknown names raise UserError with the reason or the valid names."""
    schedule = schedule_label(schedule_type)
    key = _key(name)
    sampler = _sampler(key)
    if sampler is None:
        _refuse_sampler(key, name)
        for suffix, label in _SUFFIXES:  # "DPM++ 2M Karras", "k_dpmpp_2m_sde_heun_exp", "dpmpp_2m_karras"
            if key.endswith(suffix) and (sampler := _sampler(key[: -len(suffix)])) is not None:
                if schedule not in ("Automatic", label):
                    raise UserError(f"sampler {name!r} names schedule type {label} but {schedule} was also given: give one")
                schedule = label
                break
        else:
            names = ", ".join(f'"{s.name}"' for s in SAMPLERS)
            raise UserError(f"unknown sampler {name!r}: use one of {names} (with --schedule-type; see `sdkit schedulers`)")
    options = SCHEDULES.get(schedule)
    if options is None:
        raise UserError(f"schedule type {schedule!r} cannot run in sdkit: {REFUSED[schedule]}; choose another (see `sdkit schedulers`)")
    missing = _needs(options) - CLASS_OPTIONS.get(sampler.cls, frozenset())
    if missing:
        raise UserError(
            f"sampler {sampler.name!r} cannot use schedule type {schedule}: diffusers' {sampler.cls} has no "
            f"{', '.join(sorted(missing))}; use one of {', '.join(types_for(sampler))}"
        )
    return Choice(sampler, schedule)


def _needs(options: Mapping[str, Any]) -> set[str]:
    """The options a class must take to run a schedule: its sigma flag, else its timestep spacing."""
    return {k for k in options if k in SIGMAS} or {k for k in options if k == "timestep_spacing"}


def types_for(sampler: Sampler) -> list[str]:
    """The schedule types a sampler runs with in diffusers."""
    have = CLASS_OPTIONS.get(sampler.cls, frozenset())
    return [s for s, o in SCHEDULES.items() if o is not None and _needs(o) <= have]


def build(name: str, base_config: Mapping[str, Any], schedule_type: str | None = "automatic"):
    """Build the named sampler with its schedule from the model's own scheduler config."""
    import diffusers

    choice = resolve(name, schedule_type)
    return getattr(diffusers, choice.cls).from_config(choice.config(base_config))


def written_schedule(choice: Choice, base_config: Mapping[str, Any]) -> str:
    """The A1111 schedule type label naming the schedule `choice` really runs on a model with `base_config`: the type
    asked for, Automatic's resolution, or for the model's own schedule the type of its timestep spacing (trailing =
    SGM Uniform, linspace = Uniform, leading from step 1 = DDIM; anything else stays "Automatic")."""
    schedule = choice.effective(base_config)
    if schedule != "Automatic" or "timestep_spacing" not in CLASS_OPTIONS.get(choice.cls, frozenset()):
        return schedule
    config = choice.config(base_config)
    spacing, offset = config.get("timestep_spacing"), config.get("steps_offset", 0)
    if spacing == "leading":
        return "DDIM" if offset == 1 else "Automatic"
    return {"trailing": "SGM Uniform", "linspace": "Uniform"}.get(spacing, "Automatic")
