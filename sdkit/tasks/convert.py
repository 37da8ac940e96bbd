"""`sdkit convert SOURCE -o OUTPUT`: models between the formats diffusers and A1111/ComfyUI/civitai use.

    sdkit convert shapes -o shapes.safetensors                 # diffusers folder -> single-file checkpoint
    sdkit convert model.safetensors -o model-folder            # single file -> diffusers folder (--config, --vae)
    sdkit convert my-model/vae -o my-vae.safetensors           # VAE folder -> A1111 models/VAE file (and back)
    sdkit convert pytorch_lora_weights.safetensors -o x.safetensors    # LoRA: diffusers/peft -> kohya (and back)

What SOURCE is (read from its files, not its name) and whether OUTPUT ends in .safetensors decide the direction.
Checkpoints are written in the original key layout (`sdkit.convert_keys`) with an SAI model-spec header (architecture,
prediction type), and read back through the same loader as `sdkit generate -m FILE` (`sdkit.single_file`). Outputs
are new files or folders, written atomically; nothing existing is replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdkit import atomic
from sdkit.errors import UserError
from sdkit.schema.convert import ConvertRecipe

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
STORED = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
LORA_KEY = ("lora_", ".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", "lora_linear_layer", ".alpha")
ARCHITECTURES = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base"}


def source_kind(path: Path, allow_pickle: bool) -> str:
    """pipeline | vae (folders), checkpoint | vae-file | lora (files), from what is inside."""
    from sdkit.families import read_header, read_json

    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "pipeline"
        if (path / "config.json").is_file() and read_json(path / "config.json").get("_class_name") == "AutoencoderKL":
            return "vae"
        raise UserError(f"{path} is neither a diffusers pipeline folder (model_index.json) nor a VAE folder")
    keys = list(read_header(path, allow_pickle=allow_pickle).shapes)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "checkpoint"
    if keys and all(any(part in k for part in LORA_KEY) for k in keys):
        return "lora"
    if keys and all(k.startswith(("encoder.", "decoder.", "quant_conv", "post_quant_conv", "first_stage_model.")) for k in keys
                    if not k.startswith(("model_ema.", "loss."))):  # fmt: skip
        return "vae-file"
    raise UserError(f"{path} is not a checkpoint, VAE or LoRA sdkit can convert (keys such as {keys[:2]})")


def _source(recipe: ConvertRecipe) -> Path:
    from sdkit.library import find, where_looked

    path = Path(recipe.source).expanduser()
    if path.exists():
        return path
    from sdkit.models import ALIASES

    alias = ALIASES.get(recipe.source.strip().lower())
    if alias and Path(alias).exists():
        return Path(alias)
    for kind in ("checkpoints", "loras", "vae"):
        found = find(kind, recipe.source, explicit=recipe.models_dir)
        if found is not None:
            return found
    raise UserError(f"convert {recipe.source!r}: no such file or folder, {where_looked('checkpoints', recipe.models_dir)}")


def _check_output(output: Path, to_file: bool) -> None:
    from sdkit.outputs import check_output_dir

    if output.exists():
        raise UserError(f"--output {output} exists: give a new path (convert never replaces a file or folder)")
    check_output_dir(output.parent)  # a writable folder (or one that can be made), inside --output-root if set
    if to_file and output.suffix.lower() != ".safetensors":
        raise UserError(f"--output {output}: single files are written as safetensors: give a path ending in .safetensors")


def _dtype(recipe: ConvertRecipe, source: Path):
    """The torch dtype to write: the recipe's, or the source's own (its UNet's, else its first tensor's)."""
    import torch

    from sdkit.families import read_header

    if recipe.dtype != "keep":
        return getattr(torch, DTYPES[recipe.dtype])
    files = sorted(source.glob("unet/*.safetensors")) or sorted(source.glob("*.safetensors")) if source.is_dir() else [source]
    if not files:
        return torch.float32
    dtypes = read_header(files[0], allow_pickle=recipe.allow_pickle).dtypes
    unet = [v for k, v in dtypes.items() if k.startswith("model.diffusion_model.")] or list(dtypes.values())
    return getattr(torch, STORED.get(unet[0] if unet else "F32", "float32"))


def checkpoint_header(pipe: Any, layout: str, output: Path, source: Path) -> dict[str, str]:
    """The SAI model-spec entries A1111/ComfyUI/civitai read, and sdkit's: what the file is and how it predicts."""
    from sdkit.version import __version__

    v = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    arch = "stable-diffusion-v2-768-v" if layout == "sd2" and v else ARCHITECTURES[layout]
    if pipe.unet.config.in_channels == 9:
        arch += "/inpaint"
    return {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": arch, "modelspec.title": output.stem,
            "modelspec.prediction_type": "v" if v else "epsilon", "sdkit.version": __version__,
            "sdkit.source": source.name, "format": "pt"}  # fmt: skip


def folder_to_file(recipe: ConvertRecipe, source: Path) -> Path:
    from sdkit.convert_keys import layout_of, to_original
    from sdkit.models import load_pipeline, resolve_model

    model = resolve_model(str(source), allow_pickle=recipe.allow_pickle, hash_local=False)
    pipe = load_pipeline(model, torch_dtype=_dtype(recipe, source), allow_pickle=recipe.allow_pickle)
    names = [n for n in ("unet", "vae", "text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    layout = layout_of(type(pipe).__name__, pipe.text_encoder.config.hidden_act)
    tensors = to_original({n: getattr(pipe, n).state_dict() for n in names}, {n: pipe.unet.config if n == "unet" else
                          pipe.vae.config for n in ("unet", "vae")}, layout)  # fmt: skip
    header = checkpoint_header(pipe, layout, recipe.output, source)
    tensors |= markers(pipe.scheduler.config)
    return atomic.write_safetensors(recipe.output, {k: v.contiguous() for k, v in tensors.items()}, header)


def markers(scheduler_config) -> dict[str, Any]:
    """ComfyUI's marker keys (empty tensors) for a v-prediction model (`v_pred`) trained with zero terminal SNR
    (`ztsnr`), which A1111-layout files cannot say otherwise; sdkit reads them back (sdkit.single_file)."""
    import torch

    out = {}
    if scheduler_config.get("prediction_type") == "v_prediction":
        out["v_pred"] = torch.tensor([])
    if scheduler_config.get("rescale_betas_zero_snr"):
        out["ztsnr"] = torch.tensor([])
    return out


def file_to_folder(recipe: ConvertRecipe, source: Path) -> Path:
    from sdkit.architectures import save_pipeline
    from sdkit.models import load_pipeline, resolve_model
    from sdkit.vae import resolve_vae

    model = resolve_model(str(source), allow_pickle=recipe.allow_pickle, hash_local=False, config=recipe.config)
    vae = resolve_vae(recipe.vae, allow_pickle=recipe.allow_pickle, models_dirs=recipe.models_dir) if recipe.vae else None
    pipe = load_pipeline(model, torch_dtype=_dtype(recipe, source), allow_pickle=recipe.allow_pickle, vae=vae)
    return save_pipeline(pipe, recipe.output)


def vae_config(config: str | None) -> dict[str, Any]:
    """The VAE config a single-file VAE is read with: `--config` (a family, a diffusers folder or a VAE folder), else SD 1.x's."""
    from sdkit.families import FAMILIES, read_json

    if config is None or config in FAMILIES:
        return read_json(FAMILIES[config or "sd1"].config_dir / "vae" / "config.json")
    folder = Path(config).expanduser()
    for candidate in (folder / "vae" / "config.json", folder / "config.json"):
        if candidate.is_file():
            return read_json(candidate)
    raise UserError(f"--config {config}: no VAE config there: give a family, a diffusers folder or a VAE folder")


def vae_to_file(recipe: ConvertRecipe, source: Path) -> Path:
    from diffusers import AutoencoderKL

    from sdkit.convert_keys import vae_to_original

    vae = AutoencoderKL.from_pretrained(str(source), dtype=_dtype(recipe, source), use_safetensors=not recipe.allow_pickle)
    tensors = vae_to_original(vae.state_dict(), vae.config)
    return atomic.write_safetensors(recipe.output, {k: v.contiguous() for k, v in tensors.items()}, {"format": "pt"})


def vae_file_to_folder(recipe: ConvertRecipe, source: Path) -> Path:
    from sdkit.vae import _from_file

    vae = _from_file(source, vae_config(recipe.config)).to(_dtype(recipe, source))
    with atomic.staged_dir(recipe.output) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    return recipe.output


def lora(recipe: ConvertRecipe, source: Path) -> Path:
    from sdkit.families import read_header
    from sdkit.lora_convert import is_kohya, to_diffusers, to_kohya

    to = recipe.to
    if to == "auto":
        to = "diffusers" if is_kohya(read_header(source).shapes) else "kohya"
    tensors, header = (to_kohya if to == "kohya" else to_diffusers)(source)
    if recipe.dtype != "keep":
        tensors = {k: v.to(_dtype(recipe, source)) if v.is_floating_point() else v for k, v in tensors.items()}
    return atomic.write_safetensors(recipe.output, tensors, header)


ROUTES = {("pipeline", True): folder_to_file, ("checkpoint", False): file_to_folder, ("vae", True): vae_to_file,
          ("vae-file", False): vae_file_to_folder, ("lora", True): lora}  # fmt: skip


def run(recipe: ConvertRecipe) -> Path:
    """Convert SOURCE into OUTPUT (see the module docstring); returns OUTPUT."""
    import diffusers
    import transformers

    source = _source(recipe)
    kind = source_kind(source, recipe.allow_pickle)
    to_file = recipe.output.suffix.lower() == ".safetensors" or kind == "lora"
    _check_output(recipe.output, to_file)
    route = ROUTES.get((kind, to_file))
    if route is None:
        wants = "a .safetensors path" if not to_file else "a new folder path (no .safetensors suffix)"
        raise UserError(f"{source} is a {kind.replace('-file', ' file')}: give --output as {wants}")
    if recipe.config is not None and kind not in ("checkpoint", "vae-file"):
        raise UserError(f"--config is for single-file sources; {source} is a {kind}")
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    return route(recipe, source)
