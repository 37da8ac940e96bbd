"""Fine-tuning schemas: `TrainLoraRecipe`, `TrainDreamBoothRecipe`, `TrainTextualInversionRecipe`.

All three extend `TrainCommon` (the shared loop: optimiser, checkpoints, resume, validation) with `FinetuneCommon`
(the base model and the image/noise settings of the denoising loss). LoRA settings (`LoraFields`) are shared by
`train lora` and `train dreambooth --lora`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdkit.schema.adapters import token_problem
from sdkit.schema.base import Schema, cli
from sdkit.schema.train import CaptionedImages, DenoisingLoss, TextEmbeddings, TrainCommon, TrainingImages

UNET_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]
TI_TEMPLATES = ["a photo of {token}", "a picture of {token}", "an image of {token}", "a rendering of {token}"]


class FinetuneCommon(TrainingImages, DenoisingLoss, TrainCommon):
    """The model to start from, and the image and loss settings every fine-tuning task shares."""

    model: str = Field(
        "shapes",
        description="Pipeline to fine-tune (SD 1.x/2.x or SDXL): a diffusers folder, .safetensors checkpoint, hub id or alias.",
        json_schema_extra=cli("-m"),
    )


class LoraFields(Schema):
    """LoRA adapter settings (peft LoraConfig) and how the result is saved."""

    rank: int = Field(4, ge=1, le=1024, description="LoRA rank r (size of the low-rank update).")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha: the update is scaled by alpha / rank (None: alpha = rank).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(UNET_ATTENTION),
        min_length=1,
        description="UNet module names (or name suffixes) that get a LoRA, e.g. to_q to_k to_v to_out.0 proj_in ff.net.2.",
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch during training.")
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: list(TEXT_ENCODER_ATTENTION),
        min_length=1,
        description="Text-encoder modules that get a LoRA when the text encoder is trained.",
    )
    save_format: Literal["diffusers", "kohya"] = Field(
        "diffusers",
        description="diffusers: pytorch_lora_weights.safetensors (pipe.load_lora_weights); kohya: also NAME.safetensors "
        "with kohya/A1111 keys (A1111, ComfyUI).",
    )
    output_name: str | None = Field(
        None, description="Stem of the kohya file (A1111 shows it as the LoRA's name); None: the output folder's name."
    )
    trigger_word: str | None = Field(None, description="Word that calls up the trained concept; recorded in the file's metadata.")

    @field_validator("output_name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.-]+", value):
            raise ValueError(f"output_name must be a plain file stem (letters, digits, _ . -), got {value!r}")
        return value


class TrainLoraRecipe(CaptionedImages, LoraFields, FinetuneCommon):
    """`sdkit train lora`: a LoRA on the UNet (optionally the text encoder) of a pipeline, from captioned images."""

    task: Literal["train-lora"] = Field(
        "train-lora", description="Task name in YAML job lists.", json_schema_extra=cli(hidden=True)
    )
    caption_dropout: float = Field(
        0.0, ge=0, le=1, description="Probability of training on the empty caption, so the adapter also learns the "
        "unconditional prediction that classifier-free guidance subtracts.",
    )
    train_text_encoder: bool = Field(False, description="Also train a LoRA on the text encoder (SDXL: on both).")


class TrainDreamBoothRecipe(TextEmbeddings, LoraFields, FinetuneCommon):
    """`sdkit train dreambooth`: teach a subject from a few images (full fine-tune, or a LoRA with lora: true)."""

    task: Literal["train-dreambooth"] = Field(
        "train-dreambooth", description="Task name in YAML job lists.", json_schema_extra=cli(hidden=True)
    )
    instance_data_dir: Path = Field(
        description="Images of the subject: a plain folder, or an imagefolder (metadata.jsonl) whose columns "
        "instance_prompt may name.",
        json_schema_extra=cli(name="--instance-data"),
    )
    instance_prompt: str = Field(
        min_length=1,
        description='Prompt naming the subject with a rare word, e.g. "a photo of sks dog". With metadata.jsonl it may '
        'name its columns: "a {color} sks shape on a {background} background".',
    )
    class_prompt: str | None = Field(None, description='Prompt of the subject\'s class without the rare word, e.g. "a photo of dog".')
    with_prior_preservation: bool = Field(
        False, description="Also train on class images (prior-preservation loss), so the class keeps its look."
    )
    class_data_dir: Path | None = Field(
        None,
        description="Folder of class images; the missing ones (up to num_class_images) are generated there with the "
        "base model and kept for later runs. An imagefolder (metadata.jsonl) is used as it is, each image with its "
        "caption ('text'). None: OUT/class_images.",
        json_schema_extra=cli(name="--class-data"),
    )
    num_class_images: int = Field(100, ge=1, description="Class images to train with (generated when the folder has fewer).")
    prior_loss_weight: float = Field(1.0, ge=0, description="Weight of the class images' loss beside the instance loss.")
    caption_dropout: float = Field(
        0.0, ge=0, le=1, description="Probability of training an image (instance or class) on the empty caption, so a "
        "full fine-tune keeps classifier-free guidance's unconditional prediction in step with the conditional one.",
    )
    class_inference_steps: int = Field(20, ge=1, le=1000, description="Denoising steps when generating class images.")
    class_guidance_scale: float = Field(5.0, ge=0, description="CFG scale when generating class images.")
    class_batch_size: int = Field(4, ge=1, description="Class images generated per forward pass.")
    lora: bool = Field(False, description="Train a LoRA (saved as LoRA files) instead of fine-tuning the whole UNet (saved as a pipeline).")
    train_text_encoder: bool = Field(
        False, description="Also train the text encoder(s) (SDXL: both; fully, or with lora a text-encoder LoRA)."
    )
    max_steps: int = Field(400, ge=1, description="Optimiser steps to train (each uses batch × accumulation × processes images).")
    train_batch_size: int = Field(1, ge=1, description="Instance images per process per micro-batch (as many class images join them).")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak AdamW learning rate. None: 5e-6 for a full fine-tune, 1e-4 with lora."
    )

    @model_validator(mode="after")
    def _check_dreambooth(self) -> TrainDreamBoothRecipe:
        if self.with_prior_preservation and not self.class_prompt:
            raise ValueError("with_prior_preservation needs class_prompt (e.g. 'a photo of dog')")
        lora_only = sorted(  # set to something else than their default (a saved recipe lists every field)
            name for name in set(LoraFields.model_fields) - {"trigger_word"}
            if getattr(self, name) != LoraFields.model_fields[name].get_default(call_default_factory=True)
        )  # fmt: skip
        if lora_only and not self.lora:
            verb = "applies" if len(lora_only) == 1 else "apply"
            raise ValueError(f"{', '.join(lora_only)} {verb} only with lora: true (a full fine-tune saves a pipeline)")
        if self.learning_rate is None:
            self.learning_rate = 1e-4 if self.lora else 5e-6
        return self


class TrainTextualInversionRecipe(FinetuneCommon):
    """`sdkit train textual-inversion`: learn the embedding of one new token; nothing else changes."""

    task: Literal["train-textual-inversion"] = Field(
        "train-textual-inversion", description="Task name in YAML job lists.", json_schema_extra=cli(hidden=True)
    )
    data_dir: Path = Field(
        description="Images of the concept: captioned images whose captions contain the token (an imagefolder, kohya "
        "folders or .txt captions), or a plain folder of images (captioned from caption_templates).",
        json_schema_extra=cli("-d", "--data"),
    )
    token: str = Field(description='The new token, e.g. "<my-thing>" (must not be in the vocabulary yet).', min_length=1)
    init_token: str = Field(description="An existing single-token word whose embedding the new one starts from, e.g. dog.", min_length=1)
    num_vectors: int = Field(1, ge=1, le=64, description="Embedding vectors behind the token (token, token_1, ...).")
    caption_column: str = Field("text", description="metadata.jsonl column holding the caption.")
    caption_templates: list[str] = Field(
        default_factory=lambda: list(TI_TEMPLATES),
        min_length=1,
        description="Captions with {token}, used when data_dir has no metadata.jsonl (each image is seen with each).",
    )
    max_steps: int = Field(2000, ge=1, description="Optimiser steps to train (each uses batch × accumulation × processes images).")
    train_batch_size: int = Field(4, ge=1, description="Images per process per micro-batch.")
    learning_rate: float = Field(5e-3, gt=0, description="Peak AdamW learning rate of the new embedding rows.")
    adam_weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay (on the new rows only).")

    @field_validator("token")
    @classmethod
    def _one_word(cls, value: str) -> str:
        problem = token_problem(value)  # the rule `--embedding PATH:TOKEN` applies when the result is used
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("caption_templates")
    @classmethod
    def _templates(cls, values: list[str]) -> list[str]:
        bad = [t for t in values if "{token}" not in t]
        if bad:
            raise ValueError(f"every caption template needs {{token}} (got {bad[0]!r})")
        return values
