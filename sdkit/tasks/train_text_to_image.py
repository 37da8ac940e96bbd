"""`sdkit train text-to-image`: train a Stable Diffusion (1.x/2.x-style or SDXL) pipeline on captioned images.

Like diffusers' train_text_to_image example, on the shared lifecycle (`sdkit.training.trainer`): noise from the
model's own scheduler (DDPM on its betas), epsilon or v-prediction targets, caption dropout for classifier-free guidance,
min-SNR weighting (`compute_snr`) and EMA (`EMAModel`) from `diffusers.training_utils`.

Two ways in:
  * `model:`  fine-tune an existing pipeline (stage unet: the UNet, optionally the text encoder; stage vae: the VAE).
  * `preset:` start from a named architecture with random weights (sdkit.architectures), or with `init_from` another
    model's weights where they fit. A from-scratch model trains in two jobs: stage vae (its latent scaling factor is
    measured at the end), then stage unet with `model: <vae run>/model`. See recipes/train/shapes-base.yaml and, for
    an SDXL architecture, recipes/train/shapes-sdxl.yaml.

Writes OUT/model (a diffusers folder, safetensors), OUT/checkpoints/step-N, OUT/validation/step-N.png, OUT/loss.png,
OUT/loss.json, OUT/loss.csv, OUT/run.json and OUT/recipe.yaml.

    sdkit train text-to-image --preset shapes --stage vae -d DATA -o OUT     # or a YAML recipe with `sdkit run`
    accelerate launch --multi_gpu --num_processes 2 -m sdkit run FILE.yaml
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

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
        from sdkit.training.datasets import read_dataset, repeated

        recipe = self.recipe
        self.rows = read_dataset(recipe.data_dir, recipe.caption_column, caption_extension=recipe.caption_extension,
                                 max_rows=recipe.max_train_samples)  # fmt: skip
        self.order = repeated(self.rows)
        self.captions = [self.rows[i][recipe.caption_column] for i in self.order]
        if recipe.init_from is not None:
            from sdkit.models import resolve_model

            resolve_model(recipe.init_from, hash_local=False)

    def load(self, s: Session):
        return _load(self.recipe, self.captions)

    def prepare(self, s: Session):
        from sdkit.training import data
        from sdkit.training.loop import TrainingSpec
        from sdkit.training.pictures import encode_pictures

        recipe, pipe = self.recipe, s.pipe
        for name in ("vae", "unet", *s.text_encoders):
            getattr(pipe, name).requires_grad_(False)

        # 1. data: decode once (squares or aspect-ratio buckets)
        self.pictures = pictures = s.pictures([row["file_name"] for row in self.rows])

        # 2. what trains: the VAE (stage vae), or the UNet and optionally the text encoder(s); frozen modules as cast
        # copies, so the fp32 originals are what gets saved
        if recipe.stage == "vae":
            live = s.stand_ins(["vae", "unet", *s.text_encoders])  # what the loss and validation run
            trainable = {"vae": _autoencoder_loss(pipe.vae)}
            pipe.vae.requires_grad_(True)
            if not recipe.train_vae_encoder:  # decoder-only: the encoder, and so the latent space, stay as they are
                for module in (pipe.vae.encoder, pipe.vae.quant_conv):
                    if module is not None:
                        module.requires_grad_(False)
        else:
            encoders = s.text_encoders if recipe.train_text_encoder else []
            trainable = {name: getattr(pipe, name) for name in ("unet", *encoders)}
            for module in trainable.values():
                module.requires_grad_(True)
            live = s.stand_ins(["unet", *encoders], saved=True)
        latents = encode_pictures(live.vae, pictures, recipe.train_batch_size, s.device, s.dtype) if recipe.cache_latents else None
        dataset = data.CaptionedImages(self.captions, pictures.entries(latents), self.order)

        # 3. the loss
        self.noise_scheduler = _noise_scheduler(pipe, recipe)
        if recipe.stage == "vae":
            loss_fn = _vae_loss(recipe, s.device)
        else:
            text = s.text(live, caption_dropout=recipe.caption_dropout, captions=self.captions)
            loss_fn = denoising_loss(recipe, live, self.noise_scheduler, s.device, text=text)

        # 4. validation
        validate = _validator(s, vars(live), self.noise_scheduler, pictures, [row[recipe.caption_column] for row in self.rows])
        return TrainingSpec(modules=trainable, dataset=dataset, loss_fn=loss_fn, validate=validate,
                            batch_sampler=s.batches(pictures, self.order), info={"task": recipe.task, "stage": recipe.stage})  # fmt: skip

    def save(self, s: Session, stage: Path) -> None:
        """A plain diffusers folder: the trained modules and the untouched fp32 frozen ones, with the inference
        scheduler told the trained prediction type; a from-scratch VAE gets its latent scaling factor measured."""
        import torch

        from sdkit.architectures import save_pipeline

        recipe, pipe = self.recipe, s.pipe
        if recipe.stage == "vae" and recipe.preset is not None:
            factor = _measure_scaling_factor(pipe.vae, self.pictures, recipe.train_batch_size, s.device)
            pipe.vae.register_to_config(scaling_factor=factor)
            print(f"latent scaling factor measured: {factor:.4f}", file=sys.stderr)
        modules = {name: getattr(pipe, name) for name in ("vae", "unet", *s.text_encoders)}
        for module in modules.values():
            place(module, "cpu", torch.float32)
        save_pipeline(sd_pipeline(pipe, _inference_scheduler(pipe, self.noise_scheduler), **modules), stage / "model")

    def saved_bytes(self, s: Session) -> int:
        from sdkit.training.results import tensor_bytes

        return tensor_bytes(*(getattr(s.pipe, name) for name in ("vae", "unet", *s.text_encoders)))


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
    """The SD or SDXL pipeline to train, in fp32 on the CPU: a preset with random weights (or, with init_from, another
    model's where they fit), or `recipe.model`."""
    if recipe.preset is not None:
        from sdkit.architectures import build_pipeline
        from sdkit.tokenizer import default_words
        from sdkit.training.warmstart import init_from

        words = recipe.vocabulary
        if words is None:
            words = sorted(set(default_words()) | {w for c in captions for w in re.findall(r"[a-z]+", c.lower())})
        pipe = build_pipeline(recipe.preset, words=words, seed=recipe.seed)
        if recipe.init_from is not None:
            init_from(pipe, recipe.init_from)
        return pipe
    pipe = load_sd_pipeline(recipe)
    if recipe.add_words:
        from sdkit.tokenizer import add_words

        for tokenizer, encoder in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
            if getattr(pipe, encoder, None) is not None:
                add_words(getattr(pipe, tokenizer), getattr(pipe, encoder), recipe.add_words)
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
    # without `_use_default_values`: a freshly built preset's config lists rescale_betas_zero_snr there, and
    # from_config would then drop the change
    config = {k: v for k, v in {**pipe.scheduler.config, **changes}.items() if k != "_use_default_values"}
    return type(pipe.scheduler).from_config(config)


def _vae_loss(recipe: TrainTextToImageRecipe, device):
    import torch.nn.functional as F

    from sdkit.training.pictures import to_pixels
    from sdkit.training.randomness import sample_generators

    def loss_fn(batch, models, generator):
        generators = sample_generators(generator, [0] * len(batch["index"]))
        pixels, _ = to_pixels(batch["pixels"], batch["target_size"], batch["crop"], recipe.random_flip, generators, device)
        reconstruction, kl = models["vae"](pixels, generator)
        return F.mse_loss(reconstruction.float(), pixels) + recipe.kl_weight * kl

    return loss_fn


def _validator(s: Session, live, noise_scheduler, pictures, captions):
    """step -> grid rows: prompts × seeds (unet stage) or originals beside reconstructions with PSNR (vae stage)."""
    import torch

    recipe = s.recipe
    if recipe.stage == "unet":
        rows = [GridRow(prompt) for prompt in recipe.validation_prompts]
        return prompt_grid(s, lambda: sd_pipeline(s.pipe, _inference_scheduler(s.pipe, noise_scheduler), **live), rows)
    shown = [i for i, p in enumerate(pictures.pixels) if p.shape == pictures.pixels[0].shape][:VALIDATION_IMAGES_VAE]
    images, captions, count = [pictures.pixels[i] for i in shown], [captions[i] for i in shown], len(shown)

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


def _measure_scaling_factor(vae, pictures, batch_size, device) -> float:
    """1 / std of the latents (posterior samples) over the training images, as SD's 0.18215 was chosen."""
    import torch

    from sdkit.training.pictures import encode_pictures, sample_latents

    first = type(pictures)(pictures.pixels[:4096], pictures.targets[:4096], pictures.originals[:4096], pictures.crops[:4096])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        dists = encode_pictures(vae, first, batch_size, device, torch.float32)
        latents = torch.cat([sample_latents(d[None], generator).flatten() for d in dists])
    return float(1.0 / latents.std().clamp_min(1e-6))
