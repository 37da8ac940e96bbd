"""ControlNets at generation: resolve and load the models, check they fit the base model, prepare control maps.

The base pipeline is reused: `from_pipe(base, controlnet=...)` gives the ControlNet variant of txt2img, img2img or
inpaint with the same UNet/VAE/text encoder objects. Several conditions become a MultiControlNetModel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sdkit.errors import UserError
from sdkit.images import load_image
from sdkit.models import ASSETS, ModelRef, resolve_component

if TYPE_CHECKING:
    from PIL import Image

    from sdkit.schema.generate import GenerateRecipe

CONTROLNET_ALIASES = MappingProxyType({"shapes-canny": str(ASSETS / "shapes-canny")})


@dataclass(frozen=True)
class Control:
    """A prepared condition: the loaded ControlNet, its control map, and the schedule/scale to apply it with."""

    model: Any
    location: str
    image: Image.Image
    scale: float
    start: float
    end: float


def family(pipe, model: ModelRef) -> str:
    """sd15 | sdxl | shapes: which ControlNets fit the base model by default."""
    if Path(model.location) == Path(ASSETS / "shapes"):
        return "shapes"
    return "sdxl" if "XL" in type(pipe).__name__ else "sd15"


def resolve_controlnet(ref: str) -> str:
    """A ControlNet reference → local folder path (checked) or hub id."""
    return resolve_component(ref, "ControlNet", dict(CONTROLNET_ALIASES))


def load_controlnet(location: str, dtype):
    from diffusers import ControlNetModel

    try:
        return ControlNetModel.from_pretrained(location, dtype=dtype, use_safetensors=True)
    except OSError as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load ControlNet {location!r} ({first}): check the id/network or pass a local folder") from None


def check_fits(controlnet, location: str, pipe) -> None:
    """Refuse a ControlNet made for another model family (e.g. SD 1.5 ControlNet on SDXL)."""
    cn, unet = controlnet.config, pipe.unet.config
    if cn.cross_attention_dim != unet.cross_attention_dim or cn.get("addition_embed_type") != unet.get("addition_embed_type"):
        raise UserError(
            f"ControlNet {location} is for another model family (cross-attention {cn.cross_attention_dim}, "
            f"{cn.get('addition_embed_type') or 'no added embeddings'}) than this model ({unet.cross_attention_dim}, "
            f"{unet.get('addition_embed_type') or 'no added embeddings'}): use one trained for this base model"
        )
    factor = 2 ** (len(cn.conditioning_embedding_out_channels) - 1)
    if factor != pipe.vae_scale_factor:
        raise UserError(
            f"ControlNet {location} downsamples its control image {factor}x but this model's VAE works at "
            f"{pipe.vae_scale_factor}x: use a ControlNet trained for this base model"
        )
    if list(cn.block_out_channels) != list(unet.block_out_channels):
        raise UserError(f"ControlNet {location} has blocks {list(cn.block_out_channels)}, this UNet {list(unet.block_out_channels)}: use one made for this model")


def check_control_inputs(recipe: GenerateRecipe) -> None:
    """Before loading anything: known types and readable images."""
    if not recipe.control:
        return
    from sdkit.control import CONTROL_TYPES

    for control in recipe.control:
        if control.type not in CONTROL_TYPES:
            raise UserError(f"--control {control.type}=...: unknown type {control.type!r}: use one of {', '.join(CONTROL_TYPES)}")
        if control.start >= control.end:
            raise UserError(f"--control {control.type}: start {control.start} must be below end {control.end}")
        load_image(control.image, "control")
        ref = recipe.controlnet_for(control)
        if ref is not None:
            resolve_controlnet(ref)


def prepare(recipe: GenerateRecipe, pipe, model: ModelRef, placement, size: tuple[int, int], loaded: dict[str, Any]) -> list[Control]:
    """Load each condition's ControlNet (once per run via `loaded`) and make its control map at the output size."""
    from sdkit.control import default_controlnet, preprocess

    kind_of_model = family(pipe, model)
    controls = []
    for control in recipe.control:
        ref = recipe.controlnet_for(control) or default_controlnet(control.type, kind_of_model)
        location = resolve_controlnet(ref)
        key = f"{location}|{placement.device}|{placement.dtype}"
        if key not in loaded:
            net = load_controlnet(location, placement.dtype)
            check_fits(net, location, pipe)
            loaded[key] = net.to(placement.device)
        source = load_image(control.image, "control")
        if recipe.control_preprocessed or control.preprocessed:
            image = source
        else:
            image = preprocess(control.type, source, annotators_dir=recipe.annotators_dir, device=str(placement.device))
        controls.append(Control(loaded[key], location, image.convert("RGB").resize(size), control.scale, control.start, control.end))
    return controls


def combined(controls: list[Control]):
    """One ControlNet, or a MultiControlNetModel for several conditions."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    nets = [c.model for c in controls]
    return nets[0] if len(nets) == 1 else MultiControlNetModel(nets)


def call_kwargs(controls: list[Control], mode: str) -> dict[str, Any]:
    single = len(controls) == 1
    images = [c.image for c in controls]
    pick = (lambda xs: xs[0]) if single else (lambda xs: xs)
    key = "image" if mode == "txt2img" else "control_image"
    return {
        key: pick(images),
        "controlnet_conditioning_scale": pick([c.scale for c in controls]),
        "control_guidance_start": pick([c.start for c in controls]),
        "control_guidance_end": pick([c.end for c in controls]),
    }
