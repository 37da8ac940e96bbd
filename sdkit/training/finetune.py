"""What the fine-tuning techniques (LoRA, DreamBooth, textual inversion, text-to-image) share beyond the lifecycle
(`sdkit.training.trainer`): image folders, the dataset's image entries, the model's own noise schedule, the default
validation grid, and LoRA adapters (SDXL: on both text encoders) and files.

The loss is the shared denoising loss (`sdkit.training.diffusion`), diffusers' own: latents from the frozen VAE,
noise and timesteps from the step's own generator, the model's own noise schedule (DDPM on its betas, with its
prediction type and terminal-SNR setting), epsilon or v-prediction target, optional min-SNR weighting.
"""

from __future__ import annotations

from pathlib import Path

from sdkit.errors import UserError
from sdkit.training.data import IMAGE_SUFFIXES


def image_files(folder: Path, what: str, flag: str) -> list[Path]:
    """The images in `folder` (sorted by name); a UserError when the folder is missing or holds none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist: pass a folder of images with {flag}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add some or fix {flag}")
    return files


def noise_scheduler_of(pipe):
    """DDPM on the model's own betas, prediction type and terminal-SNR setting (how the model was trained)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def image_entries(recipe, vae, pictures, device, dtype) -> list[dict]:
    """Dataset entries of decoded pictures: uint8 pixels, or (cache_latents) their latent distributions from the
    frozen VAE; with the sizes micro-conditioning records."""
    from sdkit.training.pictures import encode_pictures

    if recipe.cache_latents:
        return pictures.entries(encode_pictures(vae, pictures, recipe.train_batch_size, device, dtype))
    return pictures.entries()


def validator(s, **modules):
    """The validation grid of a fine-tune: every validation prompt at `validation_images` seeds, drawn by the
    family's pipeline over the training modules (`modules` replace the pipeline's own, e.g. frozen copies) with the
    model's own sampler; None without validation prompts."""
    from sdkit.training.trainer import GridRow, prompt_grid, sd_pipeline

    rows = [GridRow(prompt) for prompt in s.recipe.validation_prompts]
    return prompt_grid(s, lambda: sd_pipeline(s.pipe, **modules), rows)


def text_encoders(pipe) -> list:
    """The pipeline's text encoders (SDXL: both)."""
    from sdkit.training.text import is_sdxl

    return [pipe.text_encoder, pipe.text_encoder_2] if is_sdxl(pipe) else [pipe.text_encoder]


def add_lora(pipe, recipe, train_text_encoder: bool) -> None:
    """peft LoRA adapters ("default") on the UNet (and the text encoders: SDXL's both); only their weights require
    grad."""
    from peft import LoraConfig

    alpha = recipe.alpha or recipe.rank
    pipe.unet.requires_grad_(False)
    for encoder in text_encoders(pipe):
        encoder.requires_grad_(False)
    try:
        pipe.unet.add_adapter(LoraConfig(r=recipe.rank, lora_alpha=alpha, lora_dropout=recipe.lora_dropout,
                                         init_lora_weights="gaussian", target_modules=list(recipe.target_modules)))  # fmt: skip
    except ValueError as err:
        raise UserError(f"target_modules {recipe.target_modules}: {_first_line(err)}: name UNet layers such as to_q, to_k, to_v, to_out.0") from None
    if train_text_encoder:
        try:
            for encoder in text_encoders(pipe):
                encoder.add_adapter(LoraConfig(r=recipe.rank, lora_alpha=alpha, lora_dropout=recipe.lora_dropout,
                                               init_lora_weights="gaussian",
                                               target_modules=list(recipe.text_encoder_target_modules)))  # fmt: skip
        except ValueError as err:
            raise UserError(
                f"text_encoder_target_modules {recipe.text_encoder_target_modules}: {_first_line(err)}: name CLIP layers "
                "such as q_proj, k_proj, v_proj, out_proj"
            ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


def lora_outputs(recipe) -> list[str]:
    """pytorch_lora_weights.safetensors, and NAME.safetensors in kohya/A1111 keys with save_format kohya."""
    from sdkit.lora_io import LORA_FILE

    files = [LORA_FILE]
    if recipe.save_format == "kohya":
        files.append(f"{recipe.output_name or Path(recipe.output_dir).resolve().name}.safetensors")
    return files


def save_lora_files(recipe, pipe, train_text_encoder: bool, stage: Path) -> None:
    """The LoRA file(s) of `lora_outputs` into `stage`, with the recipe, base model, rank and trigger word in the
    safetensors header (`sdkit.lora_io`)."""
    from sdkit.lora_io import lora_metadata, save_lora

    metadata = lora_metadata(
        task=recipe.task, base_model=recipe.model, rank=recipe.rank, alpha=recipe.alpha or recipe.rank,
        trigger_word=recipe.trigger_word, recipe=recipe.model_dump(mode="json"),
    )  # fmt: skip
    files = lora_outputs(recipe)
    kohya_name = Path(files[1]).stem if len(files) > 1 else None
    encoders = text_encoders(pipe) if train_text_encoder else []
    save_lora(stage, unet=pipe.unet, text_encoder=encoders[0] if encoders else None, metadata=metadata,
              kohya_name=kohya_name, sdxl=len(text_encoders(pipe)) == 2, text_encoder_2=encoders[1] if len(encoders) > 1 else None)  # fmt: skip


def lora_bytes(recipe, pipe, train_text_encoder: bool) -> int:
    """About the size of the LoRA files: the adapters' tensors, once per file."""
    from peft.utils import get_peft_model_state_dict

    from sdkit.training.results import tensor_bytes

    modules = (pipe.unet, *text_encoders(pipe)) if train_text_encoder else (pipe.unet,)
    trained = [get_peft_model_state_dict(m) for m in modules]
    return tensor_bytes(*trained) * len(lora_outputs(recipe))
