"""Named model architectures, built from real diffusers/transformers classes with seeded random weights.

* ``tiny-sd``    — SD 1.x-shaped and tiny, for tests (32 px by default, VAE factor 2).
* ``tiny-sdxl``  — SDXL-shaped and tiny (two text encoders, "text_time" added conditioning), for tests.
* ``shapes``     — the architecture of the shapes-world model trained from scratch: 64 px images, a factor-4 VAE
  (16×16×4 latents), a ≈2.8 M-parameter UNet with attention only at the two lowest resolutions, and a small CLIP text
  encoder over the word-level vocabulary of `sdkit.tokenizer`.
* ``shapes-sdxl`` — the same world in SDXL's architecture: two small text encoders (penultimate states concatenated,
  pooled embedding from the second) and SDXL's micro-conditioning (recipes/train/shapes-sdxl.yaml).

Every preset is a complete, saveable diffusers pipeline (StableDiffusionPipeline or StableDiffusionXLPipeline) that
reloads with plain ``from_pretrained``. Weights are random: the same preset, words and seed give identical weights.
A variant is `dataclasses.replace(PRESETS["shapes"], ...)` (checked again on creation); the builders take either.

    python -m sdkit.architectures PRESET OUT_DIR [--seed N]     # write a pipeline folder, print parameter counts
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from sdkit.errors import UserError

# Stable Diffusion 1.5's published scheduler configuration (its scheduler/scheduler_config.json), minus the class.
SD15_SCHEDULER: Mapping[str, Any] = MappingProxyType(
    {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "trained_betas": None,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
    }
)


@dataclass(frozen=True)
class TextEncoderSpec:
    """A CLIP text encoder; with `projection_dim` it is a CLIPTextModelWithProjection (SDXL's second encoder)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    projection_dim: int | None = None
    hidden_act: str = "quick_gelu"


@dataclass(frozen=True)
class ArchitectureSpec:
    """One named architecture: component configurations plus what ties them together."""

    name: str
    description: str
    family: Literal["sd", "sdxl"]
    image_size: int  # default output size in pixels (= UNet sample_size × VAE scale factor)
    model_max_length: int  # tokenizer limit = text encoder max_position_embeddings (start/end tokens included)
    unet: Mapping[str, Any]  # UNet2DConditionModel keyword arguments
    vae: Mapping[str, Any]  # AutoencoderKL keyword arguments
    text_encoder: TextEncoderSpec
    text_encoder_2: TextEncoderSpec | None
    scheduler_class: str  # a diffusers scheduler class name, built with from_config(scheduler)
    scheduler: Mapping[str, Any]
    vae_logvar_bias: float | None = None  # start the posterior log-variance bias here (None: default init)
    unet_param_range: tuple[int, int] | None = None  # the UNet size this preset is meant to have

    def __post_init__(self) -> None:
        te_dims = self.text_encoder.hidden_size + (self.text_encoder_2.hidden_size if self.text_encoder_2 else 0)
        if self.unet["cross_attention_dim"] != te_dims:
            raise ValueError(
                f"{self.name}: cross_attention_dim {self.unet['cross_attention_dim']} != text dims {te_dims}"
            )
        if (self.family == "sdxl") != (self.text_encoder_2 is not None):
            raise ValueError(f"{self.name}: an sdxl architecture has exactly two text encoders, sd has one")
        if self.text_encoder_2 is not None:
            pooled = self.text_encoder_2.projection_dim
            time_dims = 6 * self.unet["addition_time_embed_dim"]
            if pooled is None or self.unet["projection_class_embeddings_input_dim"] != pooled + time_dims:
                raise ValueError(f"{self.name}: projection_class_embeddings_input_dim must be {pooled} + {time_dims}")
        factor = 2 ** (len(self.vae["block_out_channels"]) - 1)
        if self.unet["sample_size"] * factor != self.image_size:
            raise ValueError(f"{self.name}: sample_size × VAE factor {factor} != image_size {self.image_size}")


def _frozen(**kwargs: Any) -> Mapping[str, Any]:
    return MappingProxyType(kwargs)


def _vae(block_out_channels: tuple[int, ...], **fields: Any) -> Mapping[str, Any]:
    """An RGB AutoencoderKL of 4 latent channels, one layer per block, downsampling 2^(blocks - 1)."""
    blocks = len(block_out_channels)
    return _frozen(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=block_out_channels,
                   down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks, **fields)  # fmt: skip


# Both tiny presets' UNet size (16x16 latents, 32/64 channels); their blocks differ.
_TINY_UNET = _frozen(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1)
# Both tiny presets' VAE: factor 2 (32 px images -> 16x16x4 latents).
_TINY_VAE = _vae(sample_size=32, block_out_channels=(32, 64), norm_num_groups=16)

# The shapes models' UNet: 16x16 latents, attention only at 8x8 and 4x4, 32 channels per head.
_SHAPES_UNET = _frozen(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 96),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=128,
    attention_head_dim=(1, 2, 3),  # heads per block (diffusers' legacy name): 32 channels per head
    norm_num_groups=32,
)
# The shapes models' VAE: factor 4 (64 px images -> 16x16x4 latents).
_SHAPES_VAE = _vae(
    sample_size=64,
    block_out_channels=(16, 32, 64),
    norm_num_groups=4,  # 1 channel per group barely learns flat colours (verified-facts)
    scaling_factor=1.0,  # placeholder: the VAE training stage measures 1/std of the latents
)
# Each text encoder of the SDXL shapes model: half the width of the SD one's, so both together feed the UNet's
# 128-wide cross-attention.
_SHAPES_SDXL_TEXT = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 256}


def _tiny(**fields: Any) -> ArchitectureSpec:
    """A tiny test preset: 32 px images, 77-token prompts, the tiny VAE."""
    return ArchitectureSpec(image_size=32, model_max_length=77, vae=_TINY_VAE, **fields)


PRESETS: Mapping[str, ArchitectureSpec] = MappingProxyType(
    {
        "tiny-sd": _tiny(
            name="tiny-sd",
            description="SD 1.x-shaped, tiny, random weights: for tests (32 px default, PNDM with SD 1.5's config).",
            family="sd",
            unet=_frozen(
                **_TINY_UNET,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=2,
                norm_num_groups=16,
            ),
            text_encoder=TextEncoderSpec(
                hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37
            ),
            text_encoder_2=None,
            scheduler_class="PNDMScheduler",
            scheduler=SD15_SCHEDULER,
        ),
        "tiny-sdxl": _tiny(
            name="tiny-sdxl",
            description="SDXL-shaped, tiny, random weights: for tests (two text encoders, 32 px default, Euler).",
            family="sdxl",
            unet=_frozen(  # as diffusers' own SDXL pipeline tests (get_dummy_components), at 32/64 channels
                **_TINY_UNET,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                transformer_layers_per_block=(1, 2),
                projection_class_embeddings_input_dim=80,  # pooled text_embeds (32) + 6 time ids × 8
                cross_attention_dim=64,  # 32 + 32: both encoders' hidden states, concatenated
                norm_num_groups=16,
            ),
            text_encoder=TextEncoderSpec(
                hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37, hidden_act="gelu"
            ),
            text_encoder_2=TextEncoderSpec(
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=37,
                projection_dim=32,
                hidden_act="gelu",
            ),
            scheduler_class="EulerDiscreteScheduler",
            scheduler=_frozen(**{**SD15_SCHEDULER, "interpolation_type": "linear", "use_karras_sigmas": False}),
        ),
        "shapes": ArchitectureSpec(
            name="shapes",
            description="The shapes-world model: 64 px, factor-4 VAE (16x16x4 latents), ~2.8 M-parameter UNet with "
            "attention at 8x8 and 4x4 only, 3-layer CLIP text encoder over a word-level vocabulary.",
            family="sd",
            image_size=64,
            model_max_length=32,  # "a small red striped circle in the top left corner on a blue background" is 16
            unet=_SHAPES_UNET,
            vae=_SHAPES_VAE,
            text_encoder=TextEncoderSpec(
                hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=512
            ),
            text_encoder_2=None,
            scheduler_class="DPMSolverMultistepScheduler",  # DPM++ 2M for sampling; train with DDPM on the same betas
            scheduler=SD15_SCHEDULER,
            vae_logvar_bias=-6.0,  # keeps posterior noise from swamping the decoder early (verified-facts)
            unet_param_range=(2_000_000, 4_000_000),
        ),
        "shapes-sdxl": ArchitectureSpec(
            name="shapes-sdxl",
            description="The shapes-world model in SDXL's architecture: the shapes UNet and VAE, two 64-wide CLIP "
            "text encoders (the second with a projected, pooled embedding) whose penultimate states feed the "
            "128-wide cross-attention, and SDXL's added conditioning (pooled text + original size, crop, target size).",
            family="sdxl",
            image_size=64,
            model_max_length=32,
            unet=_frozen(
                **_SHAPES_UNET,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=64 + 6 * 8,  # pooled text (64) + 6 time ids x 8
            ),
            vae=_SHAPES_VAE,
            text_encoder=TextEncoderSpec(**_SHAPES_SDXL_TEXT),
            text_encoder_2=TextEncoderSpec(**_SHAPES_SDXL_TEXT, projection_dim=64),
            scheduler_class="DPMSolverMultistepScheduler",
            scheduler=SD15_SCHEDULER,
            vae_logvar_bias=-6.0,
            unet_param_range=(2_000_000, 4_000_000),
        ),
    }
)


def get_preset(preset: str | ArchitectureSpec) -> ArchitectureSpec:
    """The spec for a preset name (or the spec itself); unknown names raise UserError listing the valid ones."""
    if isinstance(preset, ArchitectureSpec):
        return preset
    if preset not in PRESETS:
        raise UserError(f"unknown architecture preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def _seeded(seed: int, build: Any) -> Any:
    """Run `build()` with torch's global RNG seeded (module init draws from it), leaving the caller's RNG as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _text_encoder(spec: TextEncoderSpec, tokenizer: Any, max_positions: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        max_position_embeddings=max_positions,
        hidden_act=spec.hidden_act,
        projection_dim=spec.projection_dim or spec.hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_class = CLIPTextModelWithProjection if spec.projection_dim else CLIPTextModel
    return model_class(config).eval()


def _tokenizers(spec: ArchitectureSpec, words: Sequence[str] | None, tokenizer_dir: Path | None) -> list[Any]:
    """One freshly loaded tokenizer per text encoder (separate objects: textual inversion edits each)."""
    from sdkit.tokenizer import default_words, load_tokenizer, write_word_tokenizer

    count = 2 if spec.text_encoder_2 else 1
    if tokenizer_dir is not None:
        if words is not None:
            raise UserError(
                "give either words or tokenizer_dir, not both: the tokenizer folder already fixes the words"
            )
        toks = [load_tokenizer(Path(tokenizer_dir)) for _ in range(count)]
    else:
        with tempfile.TemporaryDirectory(prefix="sdkit-tokenizer-") as tmp:
            folder = write_word_tokenizer(default_words() if words is None else words, Path(tmp), spec.model_max_length)
            toks = [load_tokenizer(folder) for _ in range(count)]
    if toks[0].model_max_length != spec.model_max_length:
        raise UserError(
            f"tokenizer in {tokenizer_dir} allows {toks[0].model_max_length} tokens but preset {spec.name!r} needs "
            f"{spec.model_max_length}: write it with model_max_length={spec.model_max_length}"
        )
    return toks


def build_components(
    preset: str | ArchitectureSpec,
    *,
    words: Sequence[str] | None = None,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
) -> dict[str, Any]:
    """The pipeline's components (unet, vae, text_encoder[, text_encoder_2], tokenizer[, tokenizer_2], scheduler),
    with random weights fixed by `seed` (each component seeded on its own, so building order does not matter).

    The tokenizer is the word-level one of `sdkit.tokenizer`: from `tokenizer_dir` if given, else written for `words`
    (default: `sdkit.tokenizer.default_words()`).
    """
    spec = get_preset(preset)
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    toks = _tokenizers(spec, words, tokenizer_dir)
    components: dict[str, Any] = {
        "unet": _seeded(seed, lambda: UNet2DConditionModel(**spec.unet).eval()),
        "vae": _seeded(seed + 1, lambda: AutoencoderKL(**spec.vae).eval()),
        "text_encoder": _seeded(seed + 2, lambda: _text_encoder(spec.text_encoder, toks[0], spec.model_max_length)),
        "tokenizer": toks[0],
        "scheduler": getattr(diffusers, spec.scheduler_class).from_config(dict(spec.scheduler)),
    }
    if spec.text_encoder_2 is not None:
        te2 = spec.text_encoder_2
        components["text_encoder_2"] = _seeded(seed + 3, lambda: _text_encoder(te2, toks[1], spec.model_max_length))
        components["tokenizer_2"] = toks[1]
    if spec.vae_logvar_bias is not None:
        _set_logvar_bias(components["vae"], spec.vae_logvar_bias)
    return components


def _set_logvar_bias(vae: Any, value: float) -> None:
    """Set the bias of the posterior's log-variance half (the last layer before DiagonalGaussianDistribution)."""
    import torch

    layer = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out
    latent = vae.config.latent_channels
    with torch.no_grad():
        layer.bias[latent:].fill_(value)


def build_pipeline(
    preset: str | ArchitectureSpec,
    *,
    words: Sequence[str] | None = None,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
) -> Any:
    """An in-memory StableDiffusionPipeline (family "sd") or StableDiffusionXLPipeline ("sdxl"), random weights."""
    spec = get_preset(preset)
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    components = build_components(spec, words=words, seed=seed, tokenizer_dir=tokenizer_dir)
    if spec.family == "sdxl":
        return StableDiffusionXLPipeline(**components, add_watermarker=False)
    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def save_pipeline(pipe: Any, out_dir: Path) -> Path:
    """Write `pipe` as a diffusers folder (safetensors), plus vocab.json + merges.txt beside each tokenizer.

    Written into a temporary sibling folder and renamed at the end (`sdkit.atomic.staged_dir`: ordinary permissions),
    so `out_dir` never holds half a pipeline. An existing non-empty `out_dir` is an error (nothing is overwritten).
    """
    from sdkit import atomic
    from sdkit.tokenizer import save_vocab_files

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} already exists and is not an empty folder: choose a new output folder")
    with atomic.staged_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name in ("tokenizer", "tokenizer_2"):
            if getattr(pipe, name, None) is not None:
                save_vocab_files(getattr(pipe, name), tmp / name)
    return out_dir


def parameter_counts(model: Any) -> dict[str, int]:
    """Parameters per torch module of a pipeline (or components dict), plus "total"."""
    import torch

    items = model.items() if isinstance(model, Mapping) else model.components.items()
    counts = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in items
        if isinstance(module, torch.nn.Module)
    }
    counts["total"] = sum(counts.values())
    return counts


def format_parameter_counts(counts: Mapping[str, int]) -> str:
    """One line: `unet 4.22 M · vae 0.68 M · … · total 5.3 M`."""
    return " · ".join(f"{name} {n / 1e6:.2f} M" for name, n in counts.items())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sdkit.architectures PRESET OUT_DIR [--seed N]`: write a random-weight pipeline folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sdkit.architectures", description=main.__doc__)
    parser.add_argument("preset", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("out_dir", type=Path, help="new (or empty) folder to write the pipeline to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    try:
        pipe = build_pipeline(args.preset, seed=args.seed)
        save_pipeline(pipe, args.out_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.preset}: {format_parameter_counts(parameter_counts(pipe))}", file=sys.stderr)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
