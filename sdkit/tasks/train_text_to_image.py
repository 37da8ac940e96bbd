"""`sdkit train text-to-image`: train a Stable Diffusion (1.x/2.x-style) pipeline on an imagefolder dataset.

Like diffusers' train_text_to_image example, on sdkit's shared loop (`sdkit.training.loop`): noise from the model's
own scheduler (DDPM on its betas), epsilon or v-prediction targets, caption dropout for classifier-free guidance,
min-SNR weighting (`compute_snr`) and EMA (`EMAModel`) from `diffusers.training_utils`.

Two ways in:
  * `model:`  fine-tune an existing pipeline (stage unet: the UNet, optionally the text encoder; stage vae: the VAE).
  * `preset:` start from a named architecture with random weights (sdkit.architectures). A from-scratch model trains
    in two jobs: stage vae (its latent scaling factor is measured at the end), then stage unet with
    `model: <vae run>/model`. See recipes/train/shapes-base.yaml.

Writes OUT/model (a diffusers folder, safetensors), OUT/checkpoints/step-N, OUT/validation/step-N.png, OUT/loss.png,
OUT/loss.json, OUT/loss.csv, OUT/run.json and OUT/recipe.yaml.

    sdkit train text-to-image --preset shapes --stage vae -d DATA -o OUT     # or a YAML recipe with `sdkit run`
    accelerate launch --multi_gpu --num_processes 2 -m sdkit run FILE.yaml
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

from sdkit.errors import UserError
from sdkit.schema.train import TrainTextToImageRecipe
from sdkit.training.diffusion import denoising_loss

VALIDATION_IMAGES_VAE = 6  # reconstructions shown in the vae stage's validation grid


def run(recipe: TrainTextToImageRecipe) -> Path:
    """Train as the recipe says; return the saved pipeline folder (OUT/model)."""
    import torch
    from accelerate.utils import set_seed

    from sdkit.training import checkpoints as ckpt
    from sdkit.training import data
    from sdkit.training.finetune import write_recipe
    from sdkit.training.loop import TrainTask, accelerator_session, run_training, torch_threads
    from sdkit.training.results import finished

    # 0. cheap checks first: resume target, dataset rows (no model loaded yet)
    out = Path(recipe.output_dir)
    if recipe.resume == "latest" and finished(out, [out / "model" / "model_index.json"], recipe.max_steps):
        print(f"{out} already finished {recipe.max_steps} steps: nothing to do", file=sys.stderr)
        return out / "model"
    ckpt.resolve_resume(out, recipe.resume)
    rows = data.read_imagefolder(recipe.data_dir, recipe.caption_column, max_rows=recipe.max_train_samples)
    captions = [row[recipe.caption_column] for row in rows]

    with torch_threads(recipe.threads), accelerator_session(recipe) as accelerator:
        set_seed(recipe.seed)

        # 1. load: the pipeline to fine-tune, or a preset with random weights
        pipe = _load(recipe, captions)
        vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        resolution = recipe.resolution or unet.config.sample_size * scale
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
        device = accelerator.device
        for module in (vae, unet, text_encoder):
            module.requires_grad_(False)

        # 2. data: decode once, tokenise with the pipeline's tokenizer, optionally cache latents
        images = data.load_images([row["file_name"] for row in rows], resolution, recipe.center_crop)
        if accelerator.is_main_process:  # every input checked: only now does the run write anything
            write_recipe(recipe, out / "recipe.yaml")
        input_ids = data.tokenize(tokenizer, captions)
        empty_ids = data.tokenize(tokenizer, [""])[0]
        live = {"vae": vae, "text_encoder": text_encoder, "unet": unet}  # what the loss and validation run
        if recipe.stage == "vae":
            trainable = {"vae": _autoencoder_loss(vae)}
            vae.requires_grad_(True)
            if not recipe.train_vae_encoder:  # decoder-only: the encoder, and so the latent space, stay as they are
                for module in (vae.encoder, vae.quant_conv):
                    if module is not None:
                        module.requires_grad_(False)
        else:
            trainable = {"unet": unet}
            unet.requires_grad_(True)
            if recipe.train_text_encoder:
                trainable["text_encoder"] = text_encoder
                text_encoder.requires_grad_(True)
            else:
                live["text_encoder"] = _frozen(text_encoder, device, weight_dtype)
            live["vae"] = _frozen(vae, device, weight_dtype)
        if recipe.cache_latents:
            latent_dist = data.encode_latents(live["vae"], images, recipe.train_batch_size, device, weight_dtype)
            dataset = data.CaptionedImages(input_ids, latent_dist=latent_dist)
        else:
            dataset = data.CaptionedImages(input_ids, pixels=images)

        # 3. the loss
        noise_scheduler = _noise_scheduler(pipe, recipe)
        if recipe.stage == "vae":
            loss_fn = _vae_loss(recipe, resolution, device)
        else:
            loss_fn = denoising_loss(recipe, SimpleNamespace(**live), noise_scheduler, resolution, device,
                                     empty_ids=empty_ids, caption_dropout=recipe.caption_dropout)

        # 4. validation
        validate = _validator(recipe, pipe, live, noise_scheduler, images, captions, accelerator)

        # 5. train
        task = TrainTask(
            modules=trainable, dataset=dataset, loss_fn=loss_fn, validate=validate,
            info={"task": recipe.task, "stage": recipe.stage},
        )  # fmt: skip
        run_training(accelerator, recipe, task)

        # 6. save: a plain diffusers folder (`pipe` holds the trained modules and the untouched fp32 frozen ones)
        model_dir = out / "model"
        if accelerator.is_main_process:
            if recipe.stage == "vae" and recipe.preset is not None:
                factor = _measure_scaling_factor(vae, images, recipe.train_batch_size, device)
                vae.register_to_config(scaling_factor=factor)
                print(f"latent scaling factor measured: {factor:.4f}", file=sys.stderr)
            _save(pipe, noise_scheduler, out)
            print(f"model saved: {model_dir}", file=sys.stderr)
        accelerator.wait_for_everyone()
    return model_dir


def _autoencoder_loss(vae):
    import torch

    class AutoencoderLoss(torch.nn.Module):
        """Wraps the VAE so one forward call (what DDP synchronises) returns reconstruction and KL."""

        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, pixels, generator):
            posterior = self.vae.encode(pixels).latent_dist
            reconstruction = self.vae.decode(posterior.sample(generator=generator)).sample
            return reconstruction, posterior.kl().mean()

    return AutoencoderLoss(vae)


def _load(recipe: TrainTextToImageRecipe, captions: list[str]):
    """The StableDiffusionPipeline to train, in fp32 on the CPU."""
    import torch
    from diffusers import StableDiffusionPipeline

    if recipe.preset is not None:
        from sdkit.architectures import build_pipeline, get_preset
        from sdkit.tokenizer import default_words

        if get_preset(recipe.preset).family != "sd":
            raise UserError(f"preset {recipe.preset!r} is SDXL: text-to-image training supports SD 1.x/2.x presets")
        words = recipe.vocabulary
        if words is None:
            words = sorted(set(default_words()) | {w for c in captions for w in re.findall(r"[a-z]+", c.lower())})
        return build_pipeline(recipe.preset, words=words, seed=recipe.seed)
    from sdkit.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(recipe.model, hash_local=False), torch_dtype=torch.float32)
    if not isinstance(pipe, StableDiffusionPipeline):
        raise UserError(
            f"{recipe.model} is a {type(pipe).__name__}: text-to-image training supports SD 1.x/2.x pipelines "
            "(StableDiffusionPipeline) only"
        )
    if recipe.add_words:
        from sdkit.tokenizer import add_words

        add_words(pipe.tokenizer, pipe.text_encoder, recipe.add_words)
    return pipe


def _noise_scheduler(pipe, recipe: TrainTextToImageRecipe):
    """DDPM on the model's own betas, with the recipe's prediction type and terminal-SNR setting."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if recipe.prediction_type is not None:
        scheduler.register_to_config(prediction_type=recipe.prediction_type)
    if recipe.rescale_betas_zero_snr is not None:
        scheduler = DDPMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=recipe.rescale_betas_zero_snr)
    return scheduler


def _inference_scheduler(pipe, noise_scheduler):
    """The pipeline's own sampler class, told how the model was trained (prediction type, terminal SNR)."""
    changes = {"prediction_type": noise_scheduler.config.prediction_type}
    if noise_scheduler.config.get("rescale_betas_zero_snr"):
        changes.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return type(pipe.scheduler).from_config({**pipe.scheduler.config, **changes})


def _vae_loss(recipe: TrainTextToImageRecipe, resolution: int, device):
    import torch.nn.functional as F

    from sdkit.training.data import to_pixels

    def loss_fn(batch, models, generator):
        pixels = to_pixels(batch["pixels"], resolution, recipe.center_crop, recipe.random_flip, generator, device)
        reconstruction, kl = models["vae"](pixels, generator)
        return F.mse_loss(reconstruction.float(), pixels) + recipe.kl_weight * kl

    return loss_fn


def _validator(recipe, pipe, live, noise_scheduler, images, captions, accelerator):
    """step -> grid rows: prompts × seeds (unet stage) or originals beside reconstructions with PSNR (vae stage)."""
    import torch

    if recipe.stage == "vae":
        count = min(VALIDATION_IMAGES_VAE, len(images))

        def validate_vae(step):
            originals = torch.stack(images[:count]).to(accelerator.device, torch.float32).div(127.5).sub(1)
            with torch.no_grad(), accelerator.autocast():
                posterior = live["vae"].encode(originals).latent_dist
                reconstruction = live["vae"].decode(posterior.mode()).sample.float().clamp(-1, 1)
            mse = ((reconstruction - originals) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
            psnr = (10 * torch.log10(1 / mse)).tolist()
            return [
                [(captions[i], _to_pil(originals[i])) for i in range(count)],
                [(f"reconstruction {psnr[i]:.1f} dB", _to_pil(reconstruction[i])) for i in range(count)],
            ]

        return validate_vae
    if not recipe.validation_prompts:
        return None
    from diffusers import StableDiffusionPipeline

    def validate_unet(step):
        scheduler = _inference_scheduler(pipe, noise_scheduler)
        val = StableDiffusionPipeline(
            vae=live["vae"], text_encoder=live["text_encoder"], tokenizer=pipe.tokenizer, unet=live["unet"], scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
        val.set_progress_bar_config(disable=True)
        rows = []
        for prompt in recipe.validation_prompts:
            gens = [torch.Generator().manual_seed(recipe.seed + i) for i in range(recipe.validation_images)]
            with torch.no_grad(), accelerator.autocast():
                result = val(
                    prompt, num_inference_steps=recipe.validation_inference_steps, guidance_scale=recipe.validation_guidance_scale,
                    num_images_per_prompt=recipe.validation_images, generator=gens,
                )  # fmt: skip
            rows.append([(f"{prompt} (seed {recipe.seed + i})", image) for i, image in enumerate(result.images)])
        return rows

    return validate_unet


def _frozen(module, device, dtype):
    """The module on `device` in `dtype` for a frozen role; a cast COPY when the dtype changes, so the fp32
    original (what gets saved) never goes through a lossy round trip."""
    import copy

    if next(module.parameters()).dtype == dtype:
        module.to(device)
        return module
    twin = copy.deepcopy(module)
    _place(twin, device, dtype)
    return twin


def _place(module, device, dtype) -> None:
    """Move a module, then cast its floating-point weights (nn.Module's casts: diffusers' `to` warns about any dtype)."""
    import torch

    module.to(device)
    if next(module.parameters()).dtype != dtype:
        {torch.float16: module.half, torch.bfloat16: module.bfloat16, torch.float32: module.float}[dtype]()


def _to_pil(pixels):
    from PIL import Image

    array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def _measure_scaling_factor(vae, images, batch_size, device) -> float:
    """1 / std of the latents (posterior samples) over the training images, as SD's 0.18215 was chosen."""
    import torch

    from sdkit.training.data import encode_latents, sample_latents

    with torch.no_grad():
        dist = encode_latents(vae, images[:4096], batch_size, device, torch.float32)
        latents = sample_latents(dist, torch.Generator().manual_seed(0))
    return float(1.0 / latents.std().clamp_min(1e-6))


def _save(pipe, noise_scheduler, out: Path) -> None:
    """Save the trained pipeline as the diffusers folder OUT/model (`finetune.save_model_folder`: staged, a full disk
    is a UserError naming the last checkpoint); the inference scheduler keeps the trained prediction type."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdkit.training.finetune import save_model_folder

    scheduler = _inference_scheduler(pipe, noise_scheduler)
    modules = {"vae": pipe.vae, "unet": pipe.unet, "text_encoder": pipe.text_encoder}
    for module in modules.values():
        _place(module, "cpu", torch.float32)
    final = StableDiffusionPipeline(
        **modules, tokenizer=pipe.tokenizer, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    save_model_folder(final, out)

