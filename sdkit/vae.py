"""`--vae PATH|NAME`: replace a model's VAE with a diffusers folder, a single-file VAE (A1111's `models/VAE` layout,
keys as in the original checkpoints, or diffusers' names), a library name, an alias, or a hub id.

    vae = resolve_vae("vae-ft-mse-840000-ema-pruned", allow_pickle=False)   # checked without torch; hashed
    model = load_vae(vae, config=pipe.vae.config, dtype=torch.float32)       # an AutoencoderKL for that model

A single-file VAE is built with the model's own VAE config (so SDXL keeps its scaling factor, SD its 0.18215) and
converted with diffusers' `convert_ldm_vae_checkpoint`; a VAE whose tensors do not fit that config is refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sdkit.errors import UserError
from sdkit.models import ModelRef
from sdkit.weightfiles import check_weights, quiet_libraries, refusing_code

VAE_ALIASES = MappingProxyType(
    {
        "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse",
        "sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema",
        "sdxl-vae": "stabilityai/sdxl-vae",
        "sdxl-vae-fp16-fix": "madebyollin/sdxl-vae-fp16-fix",
    }
)


@dataclass(frozen=True)
class VaeRef(ModelRef):
    """A resolved VAE: kind folder, file or hub; `location` an absolute path or a hub id."""

    @property
    def name(self) -> str:
        """A1111's `VAE:` field: the file name (folders and hub ids: their last part)."""
        return Path(self.location).name if self.kind == "file" else self.location.rstrip("/").split("/")[-1]


def resolve_vae(ref: str, *, allow_pickle: bool = False, models_dirs: Sequence[Path] | None = None) -> VaeRef:
    """Check a --vae value and say what it is, without loading anything: an existing folder or file, an alias, a
    library name or short hash (`sdkit.library`), else a hub id."""
    from sdkit.library import find_or_fail
    from sdkit.models import HUB_ID, content_hash, resolve_component

    path = Path(ref).expanduser()
    if path.is_file():
        check_weights(path, "--vae", allow_pickle)
        return VaeRef(ref, "file", str(path.resolve()), content_hash(path))
    if path.is_dir():
        location = resolve_component(ref, "VAE")
        return VaeRef(ref, "folder", location, content_hash(Path(location)))
    if ref.strip().lower() in VAE_ALIASES:
        return VaeRef(ref, "hub", VAE_ALIASES[ref.strip().lower()])
    found = find_or_fail("vae", ref, models_dirs, required=not HUB_ID.match(ref))
    if found is not None:
        return resolve_vae(str(found), allow_pickle=allow_pickle)
    return VaeRef(ref, "hub", resolve_component(ref, "VAE"))


def _state_dict(path: Path) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    with quiet_libraries(), refusing_code([path]):
        return load_single_file_checkpoint(str(path), local_files_only=True)


def _from_file(path: Path, config: Mapping[str, Any]):
    """An AutoencoderKL with `config` and the weights of a single-file VAE (original or diffusers names)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = _state_dict(path)
    vae = AutoencoderKL.from_config(dict(config))
    own = vae.state_dict()
    if not set(own) <= set(state):  # original names (A1111's models/VAE): diffusers converts them
        state = convert_ldm_vae_checkpoint(state, dict(vae.config))
    missing = sorted(k for k in own if k not in state)
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        what = (f"{wrong[0]} is {list(state[wrong[0]].shape)} in the file, {list(own[wrong[0]].shape)} in this model"
                if wrong else f"{len(missing)} tensors missing, e.g. {missing[0]}")  # fmt: skip
        raise UserError(f"--vae {path} does not fit this model's VAE ({what}): use a VAE made for this model family")
    vae.load_state_dict({k: state[k] for k in own})
    return vae


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def load_vae(vae: VaeRef, config: Mapping[str, Any], dtype):
    """The AutoencoderKL for a resolved --vae, checked against the model's VAE `config`, in `dtype`."""
    from diffusers import AutoencoderKL

    if vae.kind == "file":
        model = _from_file(Path(vae.location), config)
    else:
        try:
            with quiet_libraries():
                model = AutoencoderKL.from_pretrained(vae.location, use_safetensors=True)
        except OSError as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise UserError(f"could not load VAE {vae.location!r} ({first}): check the id/network or pass a file") from None
        for key in ("latent_channels", "block_out_channels"):
            theirs, ours = _plain(model.config.get(key)), _plain(config.get(key))
            if key in config and theirs != ours:
                raise UserError(
                    f"--vae {vae.ref}: its {key} is {theirs}, this model's is {ours}: use a VAE made for this model family"
                )
    return model.to(dtype=dtype).eval()
