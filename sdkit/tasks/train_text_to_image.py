"""`sdkit train text-to-image`: train a Stable Diffusion (1.x/2.x-style) pipeline on an imagefolder dataset.

Like diffusers' train_text_to_image example, on the shared lifecycle (`sdkit.training.trainer`): noise from the
model's own scheduler (DDPM on its betas), epsilon or v-prediction targets, caption dropout for classifier-free guidance,
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
from sdkit.training.trainer import (
    GridRow,
    Session,
    Trainer,
    TrainResult,
    load_sd_pipeline,
    place,
    prompt_grid,
    sd_pipeline,
    train,
)  # fmt: skip

VALIDATION_IMAGES_VAE = 6  # reconstructions shown in the vae stage's validation grid


def run(recipe: TrainTextToImageRecipe) -> TrainResult:
    """Train as the recipe says; return the saved pipeline folder (OUT/model) and the trained pipeline."""
    return train(TextToImageTrainer(recipe))


class TextToImageTrainer(Trainer):
    def outputs(self) -> list[str]:
        return ["model"]

    def check(self) -> None:
        from sdkit.training.data import read_imagefolder

        recipe = self.recipe
        self.rows = read_imagefolder(recipe.data_dir, recipe.caption_column, max_rows=recipe.max_train_samples)
        self.captions = [row[recipe.caption_column] for row in self.rows]

    def load(self, s: Session):
        return _load(self.recipe, self.captions)

    def prepare(self, s: Session):
        from sdkit.training import data
        from sdkit.training.loop import TrainingSpec

        recipe, pipe = self.recipe, s.pipe
        for module in (pipe.vae, pipe.unet, pipe.text_encoder):
            module.requires_grad_(False)

        # 1. data: decode once, tokenise with the pipeline's tokenizer
        self.images = images = data.load_images([row["file_name"] for row in self.rows], s.resolution, recipe.center_crop)
        input_ids = data.tokenize(pipe.tokenizer, self.captions)

        # 2. what trains: the VAE (stage vae), or the UNet and optionally the text encoder; frozen modules as cast
        # copies, so the fp32 originals are what gets saved
        live = {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "unet": pipe.unet}  # what the loss and validation run
        if recipe.stage == "vae":
            trainable = {"vae": _autoencoder_loss(pipe.vae)}
            pipe.vae.requires_grad_(True)
            if not recipe.train_vae_encoder:  # decoder-only: the encoder, and so the latent space, stay as they are
                for module in (pipe.vae.encoder, pipe.vae.quant_conv):
                    if module is not None:
                        module.requires_grad_(False)
        else:
            trainable = {"unet": pipe.unet}
            pipe.unet.requires_grad_(True)
            if recipe.train_text_encoder:
                trainable["text_encoder"] = pipe.text_encoder
                pipe.text_encoder.requires_grad_(True)
            else:
                live["text_encoder"] = s.frozen("text_encoder", saved=True)
            live["vae"] = s.frozen("vae", saved=True)
        if recipe.cache_latents:
            latent_dist = data.encode_latents(live["vae"], images, recipe.train_batch_size, s.device, s.dtype)
            dataset = data.CaptionedImages(input_ids, latent_dist=latent_dist)
        else:
            dataset = data.CaptionedImages(input_ids, pixels=images)

        # 3. the loss
        self.noise_scheduler = _noise_scheduler(pipe, recipe)
        if recipe.stage == "vae":
            loss_fn = _vae_loss(recipe, s.resolution, s.device)
        else:
            loss_fn = denoising_loss(recipe, SimpleNamespace(**live), self.noise_scheduler, s.resolution, s.device,
                                     empty_ids=data.tokenize(pipe.tokenizer, [""])[0], caption_dropout=recipe.caption_dropout)  # fmt: skip

        # 4. validation
        validate = _validator(s, live, self.noise_scheduler, images, self.captions)
        return TrainingSpec(modules=trainable, dataset=dataset, loss_fn=loss_fn, validate=validate,
                            info={"task": recipe.task, "stage": recipe.stage})  # fmt: skip

    def save(self, s: Session, stage: Path) -> None:
        """A plain diffusers folder: the trained modules and the untouched fp32 frozen ones, with the inference
        scheduler told the trained prediction type; a from-scratch VAE gets its latent scaling factor measured."""
        import torch
        from diffusers import StableDiffusionPipeline

        from sdkit.architectures import save_pipeline

        recipe, pipe = self.recipe, s.pipe
        if recipe.stage == "vae" and recipe.preset is not None:
            factor = _measure_scaling_factor(pipe.vae, self.images, recipe.train_batch_size, s.device)
            pipe.vae.register_to_config(scaling_factor=factor)
            print(f"latent scaling factor measured: {factor:.4f}", file=sys.stderr)
        modules = {"vae": pipe.vae, "unet": pipe.unet, "text_encoder": pipe.text_encoder}
        for module in modules.values():
            place(module, "cpu", torch.float32)
        final = StableDiffusionPipeline(
            **modules, tokenizer=pipe.tokenizer, scheduler=_inference_scheduler(pipe, self.noise_scheduler),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
        save_pipeline(final, stage / "model")

    def saved_bytes(self, s: Session) -> int:
        from sdkit.training.results import tensor_bytes

        return tensor_bytes(s.pipe.vae, s.pipe.unet, s.pipe.text_encoder)


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
    """The StableDiffusionPipeline to train, in fp32 on the CPU: a preset with random weights, or `recipe.model`."""
    if recipe.preset is not None:
        from sdkit.architectures import build_pipeline, get_preset
        from sdkit.tokenizer import default_words

        if get_preset(recipe.preset).family != "sd":
            raise UserError(f"preset {recipe.preset!r} is SDXL: text-to-image training supports SD 1.x/2.x presets")
        words = recipe.vocabulary
        if words is None:
            words = sorted(set(default_words()) | {w for c in captions for w in re.findall(r"[a-z]+", c.lower())})
        return build_pipeline(recipe.preset, words=words, seed=recipe.seed)
    pipe = load_sd_pipeline(recipe)
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


def _validator(s: Session, live, noise_scheduler, images, captions):
    """step -> grid rows: prompts × seeds (unet stage) or originals beside reconstructions with PSNR (vae stage)."""
    import torch

    recipe = s.recipe
    if recipe.stage == "unet":
        rows = [GridRow(prompt) for prompt in recipe.validation_prompts]
        return prompt_grid(s, lambda: sd_pipeline(s.pipe, _inference_scheduler(s.pipe, noise_scheduler), **live), rows)
    count = min(VALIDATION_IMAGES_VAE, len(images))

    def validate_vae(step):
        originals = torch.stack(images[:count]).to(s.device, torch.float32).div(127.5).sub(1)
        with torch.no_grad(), s.accelerator.autocast():
            posterior = live["vae"].encode(originals).latent_dist
            reconstruction = live["vae"].decode(posterior.mode()).sample.float().clamp(-1, 1)
        mse = ((reconstruction - originals) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        psnr = (10 * torch.log10(1 / mse)).tolist()
        return [
            [(captions[i], _to_pil(originals[i])) for i in range(count)],
            [(f"reconstruction {psnr[i]:.1f} dB", _to_pil(reconstruction[i])) for i in range(count)],
        ]

    return validate_vae


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
