"""Loaded pipelines, shared within a run: jobs that use the same model (and device/dtype) load it once.

A cache lives as long as the run that created it (no module-level state). Each entry keeps the model's original
scheduler config, so a job's sampler is always built from the model's own config, whatever the previous job chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdkit import device
from sdkit.errors import UserError
from sdkit.models import ModelRef, load_pipeline, resolve_component
from sdkit.schema.base import Speed
from sdkit.vae import VaeRef


@dataclass
class Loaded:
    pipe: Any
    scheduler_config: dict[str, Any]


@dataclass
class PipelineCache:
    entries: dict[tuple, Loaded] = field(default_factory=dict)
    controlnets: dict[str, Any] = field(default_factory=dict)
    converted: dict[tuple, Any] = field(default_factory=dict)  # compiled OpenVINO models (sdkit.backends.openvino)
    loads: int = 0

    @staticmethod
    def key(
        model: ModelRef, placement: device.Placement, *, allow_pickle: bool = False, speed: Speed | None = None,
        vae: VaeRef | None = None,
    ) -> tuple:  # fmt: skip
        """What a loaded pipeline depends on: the entry `get` returns for these arguments."""
        return (model.location, model.sha256, model.config, str(placement.device), str(placement.dtype), placement.offload,
                allow_pickle, speed.speed_key() if speed else None, (vae.location, vae.sha256) if vae else None)

    def get(
        self, model: ModelRef, placement: device.Placement, *, allow_pickle: bool = False, speed: Speed | None = None,
        vae: VaeRef | None = None,
    ) -> Loaded:  # fmt: skip
        key = self.key(model, placement, allow_pickle=allow_pickle, speed=speed, vae=vae)
        if key not in self.entries:
            pipe = load_pipeline(model, torch_dtype=placement.dtype, allow_pickle=allow_pickle, vae=vae)
            if speed is not None:
                apply_speed(pipe, speed, placement)
            device.place(pipe, placement)
            pipe.set_progress_bar_config(disable=True)
            self.entries[key] = Loaded(pipe, dict(pipe.scheduler.config))
            self.loads += 1
        return self.entries[key]


def apply_speed(pipe, speed: Speed, placement: device.Placement) -> None:
    """Switch on the memory/speed options of a recipe on a freshly loaded pipeline (`fast` is already resolved into
    the other fields by sdkit.fast.resolve)."""
    import torch

    if speed.tiny_vae:
        pipe.vae = load_tiny_vae(speed.tiny_vae, pipe, placement)
    if speed.fuse_qkv:
        fuse_qkv(pipe)
    if speed.attention_slicing:
        pipe.enable_attention_slicing()
    if speed.vae_slicing:
        pipe.vae.enable_slicing()
    if speed.vae_tiling:
        pipe.vae.enable_tiling()
    if speed.channels_last:  # bench/cpu_compute: bf16 VAE decode at 512 px 0.46x -> 0.20x of fp32 with it
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if speed.compile:
        compile_modules(pipe, placement)


# torch.compile mode per device type. Inductor's default mode everywhere: "max-autotune" benchmarks GEMM kernels
# for minutes, "reduce-overhead" uses CUDA graphs, which offload hooks break. Change it here when bench/gpu.py says so.
COMPILE_MODE: dict[str, str | None] = {"cuda": None, "cpu": None, "mps": None}


def compile_modules(pipe, placement: device.Placement) -> None:
    """torch.compile the UNet and the VAE decoder in place (`Module.compile`: the objects stay what diffusers
    expects, so from_pipe, LoRA loading and offload hooks keep working). Compilation happens at the first call."""
    mode = COMPILE_MODE.get(placement.device.type)
    pipe.unet.compile(mode=mode)
    decoder = getattr(pipe.vae, "decoder", None)
    if decoder is not None:
        decoder.compile(mode=mode)


def fuse_qkv(pipe) -> None:
    """One matmul for each attention's query/key/value (diffusers' fused projections, on torch SDPA)."""
    from diffusers import AutoencoderKL

    pipe.fuse_qkv_projections(unet=True, vae=isinstance(pipe.vae, AutoencoderKL))


def load_tiny_vae(ref: str, pipe, placement: device.Placement):
    """An AutoencoderTiny that fits the pipeline (same latent channels and downsampling factor)."""
    from diffusers import AutoencoderTiny

    location = resolve_component(ref, "tiny VAE")
    try:
        vae = AutoencoderTiny.from_pretrained(location, dtype=placement.dtype, use_safetensors=True)
    except OSError as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load tiny VAE {location!r} ({first}): check the id/network or pass a local folder") from None
    factor = 2 ** (len(vae.config.encoder_block_out_channels) - 1)
    if factor != pipe.vae_scale_factor or vae.config.latent_channels != pipe.vae.config.latent_channels:
        raise UserError(
            f"tiny VAE {location} works at {factor}x with {vae.config.latent_channels} latent channels, this model at "
            f"{pipe.vae_scale_factor}x with {pipe.vae.config.latent_channels}: use one made for this model family"
        )
    return vae
