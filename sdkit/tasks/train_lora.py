"""`sdkit train lora`: a LoRA on a Stable Diffusion (1.x/2.x or SDXL) pipeline's UNet, optionally its text encoder(s),
with peft.

Like diffusers' train_text_to_image_lora example; the lifecycle (`sdkit.training.trainer`: load, checkpoints, exact
resume, SIGINT save, validation grids, loss plot, run.json, recipe.yaml, staged save) is shared. What is LoRA's own:

1. freeze the pipeline; `unet.add_adapter(LoraConfig(r, alpha, target_modules, dropout))` (and the text encoders',
   with train_text_encoder: SDXL's both): only the LoRA weights train, and checkpoints hold only them
   (`training.partial`).
2. data: an imagefolder, kohya folders or captioned images (`training.datasets`), decoded once, squares or
   aspect-ratio buckets (`training.buckets`).
3. the shared denoising loss, with caption dropout (and SDXL's pooled embedding and micro-conditioning).
4. save OUT/pytorch_lora_weights.safetensors (diffusers/peft format, loads with `pipe.load_lora_weights`) and, with
   save_format kohya, OUT/NAME.safetensors in kohya/A1111 keys (SDXL: lora_unet_, lora_te1_, lora_te2_); both carry
   the metadata (`sdkit.lora_io`).

    sdkit train lora -m shapes --data DIR -o OUT --rank 4 --max-steps 500
    accelerate launch --multi_gpu --num_processes 2 -m sdkit train lora --recipe lora.yaml
"""

from __future__ import annotations

from pathlib import Path

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
        from sdkit.training.datasets import read_dataset

        recipe = self.recipe
        self.rows = read_dataset(recipe.data_dir, recipe.caption_column, caption_extension=recipe.caption_extension,
                                 max_rows=recipe.max_train_samples)  # fmt: skip

    def prepare(self, s: Session):
        from sdkit.training import data
        from sdkit.training.datasets import repeated
        from sdkit.training.diffusion import denoising_loss
        from sdkit.training.loop import TrainingSpec
        from sdkit.training.partial import checkpoint_trainable_only

        recipe, pipe = self.recipe, s.pipe

        # 1. adapters (their init draws from the seeded global RNG); the rest frozen
        ft.add_lora(pipe, recipe, recipe.train_text_encoder)
        encoders = s.text_encoders if recipe.train_text_encoder else []
        trainable = {"unet": pipe.unet, **{name: getattr(pipe, name) for name in encoders}}
        frozen = s.stand_ins(["unet", *encoders])
        checkpoint_trainable_only(s.accelerator)

        # 2. data: each image decoded once (a square or its bucket), each row `repeats` times (kohya's N)
        pictures = s.pictures([row["file_name"] for row in self.rows])
        order = repeated(self.rows)
        captions = [self.rows[i][recipe.caption_column] for i in order]
        dataset = data.CaptionedImages(captions, ft.image_entries(recipe, frozen.vae, pictures, s.device, s.dtype), order)

        # 3. the loss
        text = s.text(frozen, caption_dropout=recipe.caption_dropout, captions=captions)
        loss_fn = denoising_loss(recipe, frozen, ft.noise_scheduler_of(pipe), s.device, text=text)
        return TrainingSpec(modules=trainable, dataset=dataset, loss_fn=loss_fn, validate=ft.validator(s),
                            batch_sampler=s.batches(pictures, order), info={"task": recipe.task, "rank": recipe.rank})  # fmt: skip

    def save(self, s: Session, stage: Path) -> None:
        ft.save_lora_files(self.recipe, s.pipe, self.recipe.train_text_encoder, stage)

    def saved_bytes(self, s: Session) -> int:
        return ft.lora_bytes(self.recipe, s.pipe, self.recipe.train_text_encoder)
