"""What the fine-tuning techniques (LoRA, DreamBooth, textual inversion, text-to-image) share beyond the lifecycle
(`sdkit.training.trainer`): image folders, the dataset's image entries, the model's own noise schedule, the default
validation grid, and LoRA adapters and files.

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


def image_tensors(recipe, vae, images, device, dtype, batch_size: int):
    """Dataset image entries: uint8 images, or (cache_latents) their latent distributions from the frozen VAE."""
    from sdkit.training.data import encode_latents

    if recipe.cache_latents:
        return "latent_dist", list(encode_latents(vae, images, batch_size, device, dtype))
    return "pixels", images


def validator(s, **modules):
    """The validation grid of a fine-tune: every validation prompt at `validation_images` seeds, drawn by a
    StableDiffusionPipeline over the training modules (`modules` replace the pipeline's own, e.g. frozen copies)
    with the model's own sampler; None without validation prompts."""
    from sdkit.training.trainer import GridRow, prompt_grid, sd_pipeline

    rows = [GridRow(prompt) for prompt in s.recipe.validation_prompts]
    return prompt_grid(s, lambda: sd_pipeline(s.pipe, **modules), rows)


def add_lora(pipe, recipe, train_text_encoder: bool) -> None:
    """peft LoRA adapters ("default") on the UNet (and text encoder); only their weights require grad."""
    from peft import LoraConfig

    alpha = recipe.alpha or recipe.rank
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    try:
        pipe.unet.add_adapter(LoraConfig(r=recipe.rank, lora_alpha=alpha, lora_dropout=recipe.lora_dropout,
                                         init_lora_weights="gaussian", target_modules=list(recipe.target_modules)))  # fmt: skip
    except ValueError as err:
        raise UserError(f"target_modules {recipe.target_modules}: {_first_line(err)}: name UNet layers such as to_q, to_k, to_v, to_out.0") from None
    if train_text_encoder:
        try:
            pipe.text_encoder.add_adapter(LoraConfig(r=recipe.rank, lora_alpha=alpha, lora_dropout=recipe.lora_dropout,
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
    text_encoder = pipe.text_encoder if train_text_encoder else None
    save_lora(stage, unet=pipe.unet, text_encoder=text_encoder, metadata=metadata, kohya_name=kohya_name)


def lora_bytes(recipe, pipe, train_text_encoder: bool) -> int:
    """About the size of the LoRA files: the adapters' tensors, once per file."""
    from peft.utils import get_peft_model_state_dict

    from sdkit.training.results import tensor_bytes

    modules = (pipe.unet, pipe.text_encoder) if train_text_encoder else (pipe.unet,)
    trained = [get_peft_model_state_dict(m) for m in modules]
    return tensor_bytes(*trained) * len(lora_outputs(recipe))
