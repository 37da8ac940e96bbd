"""What the fine-tuning recipes (train_lora, train_dreambooth, train_textual_inversion) share, on top of the training
core in `sdkit.training`: the start-of-run checks, loading the base pipeline, the denoising loss (with an optional
prior-preservation term), validation grids, LoRA adapters and the result.

The loss is diffusers' (train_text_to_image / train_dreambooth / textual_inversion examples): latents from the frozen
VAE, noise and timesteps from the step's own generator, the model's own noise schedule (DDPM on its betas, with its
prediction type and terminal-SNR setting), epsilon or v-prediction target, optional min-SNR weighting.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.training import checkpoints as ckpt
from sdkit.training.data import IMAGE_SUFFIXES
from sdkit.training.diffusion import denoising_loss  # noqa: F401 - the fine-tune recipes call ft.denoising_loss


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced. `pipeline` is the trained pipeline in memory (None when the run had already
    finished and nothing was trained); `files` are the saved outputs (LoRA files, embeddings, or the model folder)."""

    output_dir: Path
    files: list[Path]
    pipeline: Any = None
    steps: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def print_files(self) -> None:
        """Print the saved files on stdout, one per line, once (by the main process of a distributed run)."""
        from accelerate import PartialState

        if PartialState().is_main_process:
            for path in self.files:
                print(path)


def start_or_finish(recipe, outputs: Sequence[Path]) -> bool:
    """Checks before any work. True when `--resume latest` finds the run already finished (nothing to do).

    A fresh start (`resume` unset) into a folder that already holds this task's outputs is refused, like one that holds
    checkpoints (see `checkpoints.resolve_resume`): nothing is overwritten by accident.
    """
    from sdkit.training.results import finished

    out = Path(recipe.output_dir)
    if recipe.resume == "latest" and finished(out, outputs, recipe.max_steps):
        print(f"{out} already finished {recipe.max_steps} steps: nothing to do", file=sys.stderr)
        return True
    ckpt.resolve_resume(out, recipe.resume)
    if recipe.resume is None:
        existing = [p for p in outputs if Path(p).exists()]
        if existing:
            raise UserError(
                f"{out} already holds a trained result ({Path(existing[0]).name}): continue it with --resume latest, "
                "or choose another output folder"
            )
    return False


def image_files(folder: Path, what: str, flag: str) -> list[Path]:
    """The images in `folder` (sorted by name); a UserError when the folder is missing or holds none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist: pass a folder of images with {flag}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add some or fix {flag}")
    return files


def load_base(recipe):
    """The StableDiffusionPipeline to fine-tune, fp32 on the CPU (SD 1.x/2.x only)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdkit.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(recipe.model, hash_local=False), torch_dtype=torch.float32)
    if not isinstance(pipe, StableDiffusionPipeline):
        raise UserError(
            f"{recipe.model} is a {type(pipe).__name__}: {recipe.task} supports SD 1.x/2.x pipelines (StableDiffusionPipeline) only"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resolution_of(recipe, pipe) -> int:
    return recipe.resolution or pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def weight_dtype(accelerator):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def place(module, device, dtype) -> None:
    """Move a module; cast only when its dtype differs (diffusers warns about any dtype argument)."""
    module.to(device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)


def write_recipe(recipe, path: Path) -> None:
    """OUT/recipe.yaml: the resolved recipe. Every trainer writes it only once its inputs are checked and its data
    decoded, just before training starts: a user error leaves no output folder behind."""
    import yaml

    from sdkit.atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


def save_model_folder(pipe, output_dir: Path) -> Path:
    """Save `pipe` as OUT/model (a diffusers folder, safetensors) through `results.save_result`: staged, then moved
    into place, replacing an older one only once complete; a full disk is a UserError naming the last checkpoint."""
    from sdkit.architectures import save_pipeline
    from sdkit.training.results import save_result, tensor_bytes

    modules = [getattr(pipe, name, None) for name in ("unet", "vae", "text_encoder", "text_encoder_2")]
    return save_result(output_dir, ["model"], lambda stage: save_pipeline(pipe, stage / "model"), tensor_bytes(*modules))[0]


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


def validation_pipeline(pipe):
    """A StableDiffusionPipeline over the (training) modules with the base model's own sampler."""
    from diffusers import StableDiffusionPipeline

    val = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    val.set_progress_bar_config(disable=True)
    return val


def validator(recipe, pipe, accelerator):
    """step -> grid rows (one per validation prompt, one image per seed), or None without validation prompts."""
    import torch

    if not recipe.validation_prompts:
        return None

    def validate(step):
        val = validation_pipeline(pipe)
        rows = []
        for prompt in recipe.validation_prompts:
            gens = [torch.Generator().manual_seed(recipe.seed + i) for i in range(recipe.validation_images)]
            with torch.no_grad(), accelerator.autocast():
                images = val(
                    prompt, num_inference_steps=recipe.validation_inference_steps, guidance_scale=recipe.validation_guidance_scale,
                    num_images_per_prompt=recipe.validation_images, generator=gens,
                ).images  # fmt: skip
            rows.append([(f"{prompt} (seed {recipe.seed + i})", image) for i, image in enumerate(images)])
        return rows

    return validate


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


def lora_outputs(recipe) -> list[Path]:
    out = Path(recipe.output_dir)
    from sdkit.lora_io import LORA_FILE

    files = [out / LORA_FILE]
    if recipe.save_format == "kohya":
        files.append(out / f"{recipe.output_name or out.resolve().name}.safetensors")
    return files


def save_lora_outputs(recipe, pipe, train_text_encoder: bool) -> list[Path]:
    """The LoRA file(s) of `lora_outputs`, saved through `results.save_result` (see `save_model_folder`)."""
    from peft.utils import get_peft_model_state_dict

    from sdkit.lora_io import lora_metadata, save_lora
    from sdkit.training.results import save_result, tensor_bytes

    metadata = lora_metadata(
        task=recipe.task, base_model=recipe.model, rank=recipe.rank, alpha=recipe.alpha or recipe.rank,
        trigger_word=recipe.trigger_word, recipe=recipe.model_dump(mode="json"),
    )  # fmt: skip
    files = lora_outputs(recipe)
    kohya_name = files[1].stem if len(files) > 1 else None
    text_encoder = pipe.text_encoder if train_text_encoder else None
    trained = [get_peft_model_state_dict(m) for m in (pipe.unet, text_encoder) if m is not None]
    return save_result(
        recipe.output_dir, [f.name for f in files],
        lambda stage: save_lora(stage, unet=pipe.unet, text_encoder=text_encoder, metadata=metadata, kohya_name=kohya_name),
        tensor_bytes(*trained) * len(files),
    )  # fmt: skip
