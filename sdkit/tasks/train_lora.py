"""`sdkit train lora`: a LoRA on a Stable Diffusion (1.x/2.x) pipeline's UNet, optionally its text encoder, with peft.

Like diffusers' train_text_to_image_lora example; the lifecycle (`sdkit.training.trainer`: load, checkpoints, exact
resume, SIGINT save, validation grids, loss plot, run.json, recipe.yaml, staged save) is shared. What is LoRA's own:

1. freeze the pipeline; `unet.add_adapter(LoraConfig(r, alpha, target_modules, dropout))` (and the text encoder's,
   with train_text_encoder): only the LoRA weights train, and checkpoints hold only them (`training.partial`).
2. data: an imagefolder (images + metadata.jsonl captions), decoded once, tokenised with the pipeline's tokenizer.
3. the shared denoising loss, with caption dropout.
4. save OUT/pytorch_lora_weights.safetensors (diffusers/peft format, loads with `pipe.load_lora_weights`) and, with
   save_format kohya, OUT/NAME.safetensors in kohya/A1111 keys; both carry the metadata (`sdkit.lora_io`).

    sdkit train lora -m shapes --data DIR -o OUT --rank 4 --max-steps 500
    accelerate launch --multi_gpu --num_processes 2 -m sdkit train lora --recipe lora.yaml
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from sdkit.schema.finetune import TrainLoraRecipe
from sdkit.training import finetune as ft
from sdkit.training.trainer import Session, Trainer, TrainResult, train


def run(recipe: TrainLoraRecipe) -> TrainResult:
    """Train the LoRA as the recipe says; return the saved files and the trained pipeline (adapter attached)."""
    return train(LoraTrainer(recipe))


class LoraTrainer(Trainer):
    def outputs(self) -> list[str]:
        return ft.lora_outputs(self.recipe)

    def check(self) -> None:
        from sdkit.training.data import read_imagefolder

        recipe = self.recipe
        self.rows = read_imagefolder(recipe.data_dir, recipe.caption_column, max_rows=recipe.max_train_samples)

    def prepare(self, s: Session):
        from sdkit.training import data
        from sdkit.training.diffusion import denoising_loss
        from sdkit.training.loop import TrainingSpec
        from sdkit.training.partial import checkpoint_trainable_only

        recipe, pipe = self.recipe, s.pipe

        # 1. adapters (their init draws from the seeded global RNG); the rest frozen
        ft.add_lora(pipe, recipe, recipe.train_text_encoder)
        trainable = {"unet": pipe.unet}
        if recipe.train_text_encoder:
            trainable["text_encoder"] = pipe.text_encoder
        frozen = SimpleNamespace(vae=s.frozen("vae"), unet=pipe.unet,
                                 text_encoder=pipe.text_encoder if recipe.train_text_encoder else s.frozen("text_encoder"))  # fmt: skip
        checkpoint_trainable_only(s.accelerator)

        # 2. data
        captions = [row[recipe.caption_column] for row in self.rows]
        images = data.load_images([row["file_name"] for row in self.rows], s.resolution, recipe.center_crop)
        key, values = ft.image_tensors(recipe, frozen.vae, images, s.device, s.dtype, recipe.train_batch_size)
        dataset = data.CaptionedImages(data.tokenize(pipe.tokenizer, captions), **{key: values})

        # 3. the loss
        loss_fn = denoising_loss(
            recipe, frozen, ft.noise_scheduler_of(pipe), s.resolution, s.device,
            empty_ids=data.tokenize(pipe.tokenizer, [""])[0], caption_dropout=recipe.caption_dropout,
        )  # fmt: skip
        return TrainingSpec(modules=trainable, dataset=dataset, loss_fn=loss_fn, validate=ft.validator(s),
                            info={"task": recipe.task, "rank": recipe.rank})  # fmt: skip

    def save(self, s: Session, stage: Path) -> None:
        ft.save_lora_files(self.recipe, s.pipe, self.recipe.train_text_encoder, stage)

    def saved_bytes(self, s: Session) -> int:
        return ft.lora_bytes(self.recipe, s.pipe, self.recipe.train_text_encoder)
