"""Training schemas: `TrainCommon` (every training task: loop, optimiser, checkpoints, validation) and
`TrainTextToImageRecipe` (`sdkit train text-to-image`). Other training tasks subclass `TrainCommon`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from sdkit.schema.base import Schema, cli


class TrainCommon(Schema):
    """Fields shared by every training task: the accelerate loop, optimiser, checkpoints, resume and validation."""

    output_dir: Path = Field(
        description="Run folder: model/, checkpoints/step-N, validation/step-N.png, loss.png, loss.json, recipe.yaml.",
        json_schema_extra=cli("-o"),
    )
    max_steps: int = Field(1000, ge=1, description="Optimiser steps to train (each uses batch × accumulation × processes images).")
    train_batch_size: int = Field(8, ge=1, description="Images per process per micro-batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches accumulated into one optimiser step.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak AdamW learning rate (after warmup).")
    scale_lr: bool = Field(
        False, description="Multiply learning_rate by batch × accumulation × processes (diffusers' --scale_lr)."
    )
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"] = (
        Field("constant", description="Learning-rate schedule (diffusers.optimization.get_scheduler).")
    )
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warmup steps at the start of the schedule.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_weight_decay: float = Field(1e-2, ge=0, description="AdamW decoupled weight decay.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the gradient norm to this value before each step.")
    use_ema: bool = Field(
        False, description="Keep an exponential moving average of the trained weights (diffusers EMAModel); it is what gets saved."
    )
    ema_decay: float = Field(0.9999, gt=0, lt=1, description="EMA decay cap; EMAModel warms up as (1+t)/(10+t) below it.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed of initialisation, data order, noise and validation images.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="accelerate mixed precision: no | fp16 (CUDA) | bf16. Trained weights stay fp32."
    )
    device: Literal["auto", "cpu"] = Field(
        "auto", description="auto: accelerate's choice (one GPU per process under `accelerate launch`); cpu forces CPU."
    )
    checkpointing_steps: int | None = Field(
        500, ge=1, description="Save a resumable checkpoint to checkpoints/step-N every N steps (None: only on interrupt)."
    )
    checkpoints_total_limit: int | None = Field(
        3, ge=1, description="Keep only the newest N complete checkpoints (older ones are pruned after a save). None: keep all."
    )
    resume: str | None = Field(
        None,
        description='Resume from a checkpoint: "latest" (newest complete one in output_dir/checkpoints, or a fresh start '
        "if none) or a checkpoint folder path (must exist and be complete).",
    )
    validation_prompts: list[str] = Field(
        default_factory=list, description="Prompts rendered into validation/step-N.png every validation_steps and at the end."
    )
    validation_steps: int | None = Field(
        None, ge=1, description="Render the validation grid every N steps (None: only at the end)."
    )
    validation_images: int = Field(2, ge=1, le=16, description="Validation images per prompt (seeds seed, seed+1, …).")
    validation_inference_steps: int = Field(20, ge=1, le=1000, description="Denoising steps of validation images.")
    validation_guidance_scale: float = Field(5.0, ge=0, description="CFG scale of validation images.")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass instead of keeping them (diffusers' "
        "enable_gradient_checkpointing): less memory, slower steps; same weights.",
    )
    use_8bit_adam: bool = Field(
        False,
        description="bitsandbytes' AdamW8bit: optimiser state in 8 bits (about a quarter of AdamW's state memory; "
        "needs pip install bitsandbytes).",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the training process).")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads for this run (None: torch's default). 1 is often fastest on a shared CPU."
    )
    log_every: int = Field(
        25, ge=1, description="When stderr is not a terminal (logs), print a progress line every N steps."
    )


class TimestepBias(Schema):
    """Biased timestep sampling of the denoising loss (diffusers' timestep_bias_strategy)."""

    timestep_bias: Literal["none", "earlier", "later"] = Field(
        "none",
        description="Sample some timesteps more often (diffusers' timestep_bias_strategy): earlier = the low-noise end, "
        "where fine detail such as texture is drawn; later = the high-noise end, where layout is decided.",
    )
    timestep_bias_multiplier: float = Field(
        2.0, gt=0, description="How much more often the biased timesteps are sampled (1: uniform)."
    )
    timestep_bias_portion: float = Field(
        0.25, gt=0, le=1, description="Share of the timesteps the bias covers (from the chosen end)."
    )


class DenoisingLoss(TimestepBias):
    """The switches of the denoising loss every diffusion trainer shares (`sdkit.training.diffusion`)."""

    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting gamma (diffusers compute_snr); None: plain MSE.")
    noise_offset: float = Field(0.0, ge=0, description="Offset noise strength (0: off).")


class TrainingImages(Schema):
    """How training images become tensors: size, aspect-ratio buckets, crop, flip, and latents cached once."""

    resolution: int | None = Field(
        None, ge=8, description="Training size in px, a multiple of 8 (None: the model's native size); with buckets, "
        "the pixel budget is resolution².",
    )
    buckets: bool | None = Field(
        None,
        description="Aspect-ratio buckets (kohya's): each image trains in the bucket nearest its shape within "
        "resolution² px, cropped as little as possible, every batch from one bucket. None: on when any image is not "
        "square; false: a resolution² square (centre or random crop).",
    )
    bucket_step: int | None = Field(
        None, ge=4, description="Bucket sides are multiples of this (None: 64 px for models made at 512 px or more, as "
        "kohya; else the VAE factor x the UNet's downsampling, e.g. 16 for the shapes models).",
    )
    center_crop: bool = Field(
        True, description="Resize the shorter side to the resolution and crop the centre (False: a random crop per step)."
    )
    random_flip: bool = Field(False, description="Flip images horizontally at random (off: captions that name left/right would lie).")
    cache_latents: bool = Field(
        False, description="Encode every image once with the frozen VAE and keep its latent distribution (needs center_crop, no random_flip)."
    )

    @model_validator(mode="after")
    def _check_images(self) -> TrainingImages:
        if self.resolution is not None and self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (got {self.resolution})")
        if self.cache_latents and (self.random_flip or not self.center_crop):
            raise ValueError("cache_latents needs center_crop true and random_flip false")
        if self.bucket_step is not None and self.buckets is False:
            raise ValueError("bucket_step applies only with buckets")
        return self


class TextEmbeddings(Schema):
    """Caching the frozen text encoders' output (SDXL's encoders are large)."""

    cache_text_embeddings: bool = Field(
        False,
        description="Encode every caption once with the frozen text encoder(s) and keep the result (kohya's "
        "cache_text_encoder_outputs); needs frozen text encoders and no shuffle_caption.",
    )

    @model_validator(mode="after")
    def _check_text_cache(self) -> TextEmbeddings:
        if self.cache_text_embeddings and getattr(self, "train_text_encoder", False):
            raise ValueError("cache_text_embeddings needs frozen text encoders: drop train_text_encoder")
        if self.cache_text_embeddings and getattr(self, "shuffle_caption", False):
            raise ValueError("cache_text_embeddings cannot keep shuffled captions: drop shuffle_caption")
        return self


class CaptionedImages(TextEmbeddings):
    """A dataset of captioned images: a Hugging Face imagefolder, kohya's N_name/ folders or a plain folder of images
    with .txt captions (`sdkit.training.datasets`), with kohya's caption options."""

    data_dir: Path = Field(
        description="Images with captions: a Hugging Face imagefolder (metadata.jsonl), kohya folders (N_name/, N = "
        "repeats, captions in image.txt / image.caption) or a folder of images with .txt captions.",
        json_schema_extra=cli("-d", "--data"),
    )
    caption_column: str = Field("text", description="metadata.jsonl column holding the caption.")
    caption_extension: str | None = Field(
        None, pattern=r"^\.[\w.-]+$", description="Caption files' extension (None: .txt, else .caption)."
    )
    shuffle_caption: bool = Field(
        False, description="kohya's shuffle_caption: shuffle the comma-separated pieces of each caption at every step."
    )
    keep_tokens: int = Field(0, ge=0, description="With shuffle_caption: keep the first N comma-separated pieces in place.")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N rows of the dataset.")


class TrainTextToImageRecipe(CaptionedImages, TrainingImages, DenoisingLoss, TrainCommon):
    """`sdkit train text-to-image`: fine-tune a pipeline, or train one from a named preset (VAE stage, then UNet stage)."""

    task: Literal["train-text-to-image"] = Field("train-text-to-image", description="Task name in YAML job lists.")
    model: str | None = Field(
        None,
        description="Pipeline to fine-tune: a diffusers folder, hub id or alias. Leave unset to start from `preset`.",
        json_schema_extra=cli("-m"),
    )
    preset: str | None = Field(
        None, description="Train from scratch: a named architecture (sdkit.architectures, e.g. shapes, tiny-sd)."
    )
    stage: Literal["unet", "vae"] = Field(
        "unet",
        description="What to train: unet (the denoiser, optionally with the text encoder; VAE frozen) or vae "
        "(the autoencoder alone; a from-scratch model trains its VAE first, then the UNet on the result).",
    )
    vocabulary: list[str] | None = Field(
        None,
        description="preset only: words of the word-level tokenizer (None: sdkit's default words plus the training "
        "captions' words).",
    )
    add_words: list[str] | None = Field(
        None,
        description="model only: new words for the loaded tokenizer, one token each (e.g. new class names in the "
        "captions); the text encoder's table grows by their rows (transformers' mean resizing). Words that already "
        "are one token are kept as trained. Needs train_text_encoder.",
    )
    cache_latents: bool = Field(
        False,
        description="unet stage: encode every image once with the frozen VAE and keep the latent distributions in "
        "memory (fast; needs center_crop and no random_flip).",
    )
    caption_dropout: float = Field(
        0.1, ge=0, le=1, description="Probability of training on the empty caption (teaches classifier-free guidance)."
    )
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="Target of the UNet (None: keep the model's scheduler setting). Saved into the scheduler config."
    )
    init_from: str | None = Field(
        None,
        description="preset only: start from this model's weights wherever a module's tensor names and shapes match "
        "(the VAE whole, with its scaling factor); the rest keeps the preset's random initialisation, and added "
        "SDXL conditioning (add_embedding) starts at zero output.",
    )
    rescale_betas_zero_snr: bool | None = Field(
        None,
        description="Rescale the noise schedule to zero terminal SNR (needs v_prediction; sampling then uses trailing "
        "timesteps), so flat colours such as backgrounds are not leaked by the last timestep. None: the model's setting.",
    )
    snr_gamma: float | None = Field(
        5.0, gt=0, description="Min-SNR loss weighting gamma (diffusers compute_snr); None: plain MSE."
    )
    train_text_encoder: bool = Field(False, description="unet stage: also train the text encoder (SDXL: both).")
    kl_weight: float = Field(1e-6, ge=0, description="vae stage: weight of the KL term beside the reconstruction MSE.")
    train_vae_encoder: bool = Field(
        True,
        description="vae stage: also train the encoder. false = decoder-only fine-tune (as Stability's sd-vae-ft-mse): "
        "the latent space stays the same, so UNets, LoRAs and ControlNets trained on it keep working.",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainTextToImageRecipe:
        if (self.model is None) == (self.preset is None):
            raise ValueError("give exactly one of model (a pipeline to fine-tune) or preset (train from scratch)")
        if self.init_from is not None and self.preset is None:
            raise ValueError("init_from only applies with preset (a fine-tuned model starts from its own weights)")
        if self.vocabulary is not None and self.preset is None:
            raise ValueError("vocabulary only applies with preset (a fine-tuned model keeps its tokenizer)")
        if self.add_words is not None:
            if self.model is None or self.stage != "unet" or not self.train_text_encoder:
                raise ValueError("add_words needs a model to fine-tune, stage unet and train_text_encoder (the new rows must learn)")
            bad = [w for w in self.add_words if not re.fullmatch(r"[a-z]+", w)]
            if bad or not self.add_words or len(set(self.add_words)) != len(self.add_words):
                raise ValueError(f"add_words must list distinct lower-case words of letters a-z (got {self.add_words})")
        if self.rescale_betas_zero_snr and self.prediction_type != "v_prediction":
            raise ValueError("rescale_betas_zero_snr needs prediction_type v_prediction (epsilon is undefined at zero SNR)")
        if not self.train_vae_encoder and (self.stage != "vae" or self.model is None):
            raise ValueError("train_vae_encoder false (decoder-only) needs stage vae and a model to fine-tune")
        if self.cache_latents and self.stage == "vae":
            raise ValueError("cache_latents needs stage unet (the vae stage trains the encoder it would cache)")
        return self
