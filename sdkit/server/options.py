"""A1111's `/sdapi/v1/options`: the settings clients read and set, kept in the queue's database so they survive a
restart. `sd_model_checkpoint` picks the model of requests that name none (a library name or A1111 title),
`sd_vae` their VAE (Automatic, None, or a library VAE), `CLIP_stop_at_last_layers` their clip skip (1..12). The
other options are the ones A1111 clients read; setting one to a value sdkit cannot run with is an error naming it,
and an option A1111 does not have is an error too (A1111 fails on it as well).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.server import catalog

# option -> (default, the values sdkit runs with: None means any)
OPTIONS: dict[str, tuple[Any, tuple[Any, ...] | None]] = {
    "sd_vae": ("Automatic", None),  # Automatic / None (the model's own) or a VAE of the library, by file name
    "CLIP_stop_at_last_layers": (1, tuple(range(1, 13))),
    "samples_format": ("png", ("png",)),
    "samples_save": (True, None),
    "grid_save": (False, (False,)),
    "return_grid": (False, (False,)),
    "enable_pnginfo": (True, (True,)),
    "eta_noise_seed_delta": (0, (0,)),
    "randn_source": ("CPU", ("CPU",)),
    "face_restoration": (False, (False,)),
    "show_progress_every_n_steps": (1, None),
    "live_previews_enable": (True, None),
    "sd_lora": ("None", ("None", "")),
    "outdir_txt2img_samples": ("txt2img-images", ("txt2img-images",)),
    "outdir_img2img_samples": ("img2img-images", ("img2img-images",)),
}
DEFAULT_MODEL = "shapes"


def current(stored: dict[str, Any], models_dir: Path | None) -> dict[str, Any]:
    """Every option's value: what was set, else the default; the checkpoint as its A1111 title."""
    values = {key: stored.get(key, default) for key, (default, _) in OPTIONS.items()}
    name = stored.get("sd_model_checkpoint", DEFAULT_MODEL)
    try:
        entry = catalog.find("checkpoints", name, models_dir)
        values.update(sd_model_checkpoint=entry.title, sd_checkpoint_hash=entry.sha256)
    except UserError:  # the model left the library since it was chosen
        values.update(sd_model_checkpoint=name, sd_checkpoint_hash=None)
    return values


def check_option(key: str, value: Any, models_dir: Path | None) -> Any:
    """The value to store for `key` (a checkpoint becomes its library name); UserError when sdkit cannot take it."""
    if key == "sd_model_checkpoint":
        return catalog.find("checkpoints", str(value), models_dir).name
    if key == "sd_vae" and value not in ("Automatic", "None"):
        return catalog.find("vae", str(value), models_dir).filename
    if key == "CLIP_stop_at_last_layers" and (isinstance(value, bool) or value not in OPTIONS[key][1]):
        raise UserError(f"clip skip {value!r}: give a whole number from 1 to 12")
    if key == "sd_checkpoint_hash":
        return value  # A1111 reports it; setting it does nothing there either
    if key not in OPTIONS:
        raise UserError(f"unknown option {key!r}: the options are {', '.join(['sd_model_checkpoint', *OPTIONS])}")
    allowed = OPTIONS[key][1]
    if allowed is not None and value not in allowed:
        raise UserError(f"{value!r} is not supported by sdkit: use {allowed[0]!r}")
    return value
