"""`sdkit train lora`: a LoRA on a Stable Diffusion (1.x/2.x) pipeline's UNet, optionally its text encoder, with peft.

Like diffusers' train_text_to_image_lora example, on sdkit's shared loop (`sdkit.training.loop`):

1. load the base pipeline; freeze it; `unet.add_adapter(LoraConfig(r, alpha, target_modules, dropout))` (and the
   text encoder's, with train_text_encoder): only the LoRA weights train.
2. data: an imagefolder (images + metadata.jsonl captions), decoded once, tokenised with the pipeline's tokenizer.
3. the denoising loss (`finetune.denoising_loss`); checkpoints hold only the LoRA weights (`training.partial`).
4. train: checkpoints, exact resume, SIGINT save, validation grids, loss plot, run.json, recipe.yaml.
5. save OUT/pytorch_lora_weights.safetensors (diffusers/peft format, loads with `pipe.load_lora_weights`) and, with
   save_format kohya, OUT/NAME.safetensors in kohya/A1111 keys; both carry the metadata (`sdkit.lora_io`).

    sdkit train lora -m shapes --data DIR -o OUT --rank 4 --max-steps 500
    accelerate launch --multi_gpu --num_processes 2 -m sdkit train lora --recipe lora.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from sdkit.schema.finetune import TrainLoraRecipe
from sdkit.training.finetune import FinetuneResult


def run(recipe: TrainLoraRecipe) -> FinetuneResult:
    """Train the LoRA as the recipe says; return the saved files and the trained pipeline (adapter attached)."""
    from accelerate.utils import set_seed

    from sdkit.training import data
    from sdkit.training import finetune as ft
    from sdkit.training.loop import TrainTask, accelerator_session, run_training, torch_threads
    from sdkit.training.partial import checkpoint_trainable_only

    # 0. cheap checks first: outputs/resume target, dataset rows (no model loaded yet)
    out = Path(recipe.output_dir)
    outputs = ft.lora_outputs(recipe)
    if ft.start_or_finish(recipe, outputs):
        return FinetuneResult(out, outputs)
    rows = data.read_imagefolder(recipe.data_dir, recipe.caption_column, max_rows=recipe.max_train_samples)
    captions = [row[recipe.caption_column] for row in rows]

    with torch_threads(recipe.threads), accelerator_session(recipe) as accelerator:
        set_seed(recipe.seed)
        device, dtype = accelerator.device, ft.weight_dtype(accelerator)

        # 1. load and add the adapters (LoRA init draws from the seeded global RNG)
        pipe = ft.load_base(recipe)
        pipe.vae.requires_grad_(False)
        ft.add_lora(pipe, recipe, recipe.train_text_encoder)
        resolution = ft.resolution_of(recipe, pipe)
        ft.place(pipe.vae, device, dtype)
        trainable = {"unet": pipe.unet}
        if recipe.train_text_encoder:
            trainable["text_encoder"] = pipe.text_encoder
        else:
            ft.place(pipe.text_encoder, device, dtype)

        # 2. data (decoded before anything is written: a broken image leaves no output folder)
        images = data.load_images([row["file_name"] for row in rows], resolution, recipe.center_crop)
        key, values = ft.image_tensors(recipe, pipe.vae, images, device, dtype, recipe.train_batch_size)
        dataset = data.CaptionedImages(data.tokenize(pipe.tokenizer, captions), **{key: values})

        # 3. loss; LoRA-only checkpoints
        loss_fn = ft.denoising_loss(
            recipe, pipe, ft.noise_scheduler_of(pipe), resolution, device,
            empty_ids=data.tokenize(pipe.tokenizer, [""])[0], caption_dropout=recipe.caption_dropout,
        )  # fmt: skip
        checkpoint_trainable_only(accelerator)

        # 4. train
        if accelerator.is_main_process:
            ft.write_recipe(recipe, out / "recipe.yaml")
        task = TrainTask(modules=trainable, dataset=dataset, loss_fn=loss_fn, validate=ft.validator(recipe, pipe, accelerator),
                         info={"task": recipe.task, "rank": recipe.rank})  # fmt: skip
        result = run_training(accelerator, recipe, task)

        # 5. save (staged; a full disk keeps the last checkpoint and says so)
        files = outputs
        if accelerator.is_main_process:
            files = ft.save_lora_outputs(recipe, pipe, recipe.train_text_encoder)
            for path in files:
                print(f"LoRA saved: {path}", file=sys.stderr)
        accelerator.wait_for_everyone()
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return FinetuneResult(out, files, pipe, result.global_step, result.seconds)
