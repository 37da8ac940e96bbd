"""The sampler table: A1111 1.10 names and schedule types resolve as users write them (old combined names, k_* aliases,
ComfyUI pairs), Automatic is each sampler's A1111 default, what diffusers cannot run is refused with the reason, and
every sampler x schedule type builds and runs on the tiny SD 1.x and SDXL models."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from helpers import invoke

from sdkit import schedulers
from sdkit.errors import UserError

# A1111 1.10 modules/sd_samplers_kdiffusion.py: each sampler's 'scheduler' option (None: the model's uniform sigmas)
A1111_AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential",
                   "DPM++ 2M SDE Heun": "Exponential", "DPM++ 2S a": "Karras", "DPM++ 3M SDE": "Exponential",
                   "Euler a": "Uniform", "Euler": "Uniform", "LMS": "Uniform", "Heun": "Uniform", "DPM2": "Karras",
                   "DPM2 a": "Karras"}
SD15_LIKE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "timestep_spacing": "leading", "steps_offset": 1}


def test_names_as_users_write_them() -> None:
    def pair(name, schedule="automatic"):
        choice = schedulers.resolve(name, schedule)
        return choice.name, choice.schedule

    assert pair("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")  # A1111 before 1.9
    assert pair("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "Exponential")
    assert pair("DPM++ 2M SDE Heun Karras") == ("DPM++ 2M SDE Heun", "Karras")
    assert pair("k_dpmpp_2m_ka") == ("DPM++ 2M", "Karras")  # k_* aliases
    assert pair("k_dpmpp_3m_sde_exp") == ("DPM++ 3M SDE", "Exponential")
    assert pair("k_euler_a") == ("Euler a", "Automatic")
    assert pair("dpmpp_2m_sde_gpu", "karras") == ("DPM++ 2M SDE", "Karras")  # ComfyUI sampler_name + scheduler
    assert pair("euler", "sgm_uniform") == ("Euler", "SGM Uniform")
    assert pair("ddim", "ddim_uniform") == ("DDIM", "DDIM")
    assert pair("uni_pc_bh2", "normal") == ("UniPC bh2", "Normal")
    assert pair("Euler A", "Sgm-Uniform") == ("Euler a", "SGM Uniform")
    assert schedulers.resolve("UniPCMultistepScheduler").cls == "UniPCMultistepScheduler"  # diffusers class names
    with pytest.raises(UserError, match='unknown sampler .* "DPM\\+\\+ 2M", .*"LCM"'):
        schedulers.resolve("DPM 9000")
    with pytest.raises(UserError, match="names schedule type Karras but Exponential was also given"):
        schedulers.resolve("DPM++ 2M Karras", "exponential")
    with pytest.raises(UserError, match="unknown schedule type 'cosine'"):
        schedulers.resolve("Euler", "cosine")


@pytest.mark.parametrize(("name", "schedule", "reason"), [
    ("DPM fast", None, "k-diffusion's fixed-step DPM-Solver"),
    ("k_dpm_ad", None, "adaptive step size"),
    ("Restart", None, "re-noises"),
    ("DDIM CFG++", None, "CFG++ changes the guidance formula"),
    ("euler_cfg_pp", None, "ComfyUI sampler 'euler_cfg_pp' cannot run"),
    ("Euler", "Polyexponential", "no polyexponential sigmas"),
    ("Euler", "kl_optimal", "no KL-optimal sigmas"),
    ("Euler", "Align Your Steps", "no Align Your Steps sigmas"),
    ("euler", "linear_quadratic", "no linear-quadratic schedule"),
    ("Euler a", "Karras", "EulerAncestralDiscreteScheduler has no use_karras_sigmas"),
    ("DPM++ 2S a", "SGM Uniform", "DPMSolverSinglestepScheduler has no timestep_spacing"),
])  # fmt: skip
def test_what_diffusers_cannot_run_is_refused_with_the_reason(name: str, schedule: str | None, reason: str) -> None:
    with pytest.raises(UserError, match="cannot") as err:
        schedulers.resolve(name, schedule)
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_automatic_is_a1111s_default_schedule() -> None:
    for name, expected in A1111_AUTOMATIC.items():
        choice = schedulers.resolve(name)
        assert choice.effective(SD15_LIKE) == expected, name
        assert schedulers.written_schedule(choice, SD15_LIKE) == expected
    config = schedulers.resolve("DPM++ 2M").config(SD15_LIKE)
    assert config["use_karras_sigmas"] and config["timestep_spacing"] == "linspace"
    for name in ("DDIM", "PLMS", "UniPC", "LCM"):  # A1111's timestep samplers follow the model's own schedule
        assert schedulers.resolve(name).config(SD15_LIKE)["timestep_spacing"] == "leading"
        assert schedulers.written_schedule(schedulers.resolve(name), SD15_LIKE) == "DDIM"


def test_zero_terminal_snr_models_keep_their_own_schedule() -> None:
    """The shapes model (v-prediction, zero terminal SNR, trailing): Karras sigmas would start at its infinite top."""
    import json

    from sdkit.models import ALIASES

    shapes = json.loads((__import__("pathlib").Path(ALIASES["shapes"]) / "scheduler" / "scheduler_config.json").read_text())
    choice = schedulers.resolve("DPM++ 2M")
    assert choice.effective(shapes) == "Automatic" and not choice.config(shapes).get("use_karras_sigmas")
    assert schedulers.written_schedule(choice, shapes) == "SGM Uniform"  # trailing, which A1111 replays as SGM Uniform
    assert schedulers.resolve("DPM++ 2M", "karras").config(shapes)["use_karras_sigmas"]  # asked for: given


def test_class_options_match_diffusers_signatures() -> None:
    import diffusers

    for cls, options in schedulers.CLASS_OPTIONS.items():
        params = inspect.signature(getattr(diffusers, cls).__init__).parameters
        known = {*schedulers.SIGMAS, "timestep_spacing"}
        assert options == {k for k in known if k in params}, cls
    assert {s.cls for s in schedulers.SAMPLERS} <= set(schedulers.CLASS_OPTIONS)


def test_karras_is_k_diffusions_karras_on_the_models_sigma_range() -> None:
    import diffusers
    import torch

    for cls in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler"):
        built = getattr(diffusers, cls).from_config(schedulers.resolve("Euler" if "Euler" in cls else "DPM++ 2M", "karras").config(SD15_LIKE))
        built.set_timesteps(12)
        alphas = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
        sigmas = ((1 - alphas) / alphas) ** 0.5
        ramp = torch.linspace(0, 1, 12, dtype=torch.float64)
        lo, hi = sigmas[0] ** (1 / 7), sigmas[-1] ** (1 / 7)
        karras = (hi + ramp * (lo - hi)) ** 7  # k-diffusion's get_sigmas_karras(12, sigma_min, sigma_max, rho=7)
        assert torch.allclose(torch.as_tensor(built.sigmas[:12], dtype=torch.float64), karras, rtol=1e-4), cls


def every_pair() -> list[tuple[str, str]]:
    return [(s.name, t) for s in schedulers.SAMPLERS for t in schedulers.types_for(s)]


@pytest.fixture(scope="module")
def pipes(tiny_sd_dir, tiny_sdxl_dir):
    import torch

    from sdkit.models import load_pipeline, resolve_model

    loaded = {}
    for name, folder in (("sd", tiny_sd_dir), ("sdxl", tiny_sdxl_dir)):
        loaded[name] = load_pipeline(resolve_model(str(folder)), torch_dtype=torch.float32)
        loaded[name].set_progress_bar_config(disable=True)
        loaded[name].base_config = dict(loaded[name].scheduler.config)
    return loaded


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize(("name", "schedule"), every_pair())
def test_every_sampler_and_schedule_type_runs_two_steps(name: str, schedule: str, family: str, pipes) -> None:
    import torch

    pipe = pipes[family]
    pipe.scheduler = schedulers.build(name, pipe.base_config, schedule)
    choice = schedulers.resolve(name, schedule)
    assert type(pipe.scheduler).__name__ == choice.cls
    for key, value in choice.config(pipe.base_config).items():
        if key in schedulers._SAMPLER_KEYS or key in ("timestep_spacing", "steps_offset"):
            assert pipe.scheduler.config.get(key, value) == value, key
    out = pipe("a cat", num_inference_steps=2, width=32, height=32, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(out).all()


def test_schedulers_command_lists_the_table_and_the_refused() -> None:
    result = invoke("schedulers")
    assert result.exit_code == 0
    rows = {line.split("  ")[0].strip(): line for line in result.stdout.splitlines()}
    assert "Karras" in rows["DPM++ 2M"] and "DPMSolverMultistepScheduler" in rows["DPM++ 2M"] and "k_dpmpp_2m" in rows["DPM++ 2M"]
    assert "Restart: the Restart sampler re-noises" in result.stdout and "DDIM CFG++" in result.stdout
