"""`sdkit train textual-inversion`: learn the embedding of a new token; every other weight stays as it was.

Like diffusers' textual_inversion example, on sdkit's shared loop (`sdkit.training.loop`):

1. load the base pipeline; add `token` (and token_1 … for num_vectors > 1, diffusers' multi-vector convention) to the
   tokenizer, grow the text encoder's embedding table, start the new rows from `init_token`'s embedding.
2. freeze everything but the embedding table; after every optimiser step the old rows are put back (weight decay and
   optimiser noise never touch them), so only the new rows learn.
3. data: an imagefolder whose captions contain the token, or a plain image folder seen with every caption template.
4. train with the denoising loss through the frozen UNet: checkpoints (the embedding table only), exact resume,
   SIGINT save, validation grids, loss plot.
5. save OUT/learned_embeds.safetensors (diffusers: {token: tensor[n, dim]}, `pipe.load_textual_inversion`) and
   OUT/NAME.safetensors (A1111: {"emb_params": tensor[n, dim]}, NAME = the token without <>; A1111 uses the file name
   as the prompt word), both with the metadata (base model, token, init token, recipe) in the header.

    sdkit train textual-inversion -m shapes --data DIR --token "<zig>" --init-token shape -o OUT
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from sdkit.errors import UserError
from sdkit.schema.finetune import TrainTextualInversionRecipe
from sdkit.training.finetune import FinetuneResult

DIFFUSERS_FILE = "learned_embeds.safetensors"


def output_files(recipe: TrainTextualInversionRecipe) -> list[Path]:
    """OUT/learned_embeds.safetensors (diffusers) and OUT/NAME.safetensors (A1111)."""
    out = Path(recipe.output_dir)
    name = re.sub(r"[^\w.-]", "", recipe.token) or "embedding"
    if name == Path(DIFFUSERS_FILE).stem:
        name += "-a1111"
    return [out / DIFFUSERS_FILE, out / f"{name}.safetensors"]


def run(recipe: TrainTextualInversionRecipe) -> FinetuneResult:
    """Train the new token's embedding; return the saved files and the trained pipeline (token added)."""
    import torch
    from accelerate.utils import set_seed

    from sdkit.training import data
    from sdkit.training import finetune as ft
    from sdkit.training.loop import TrainTask, accelerator_session, run_training, torch_threads
    from sdkit.training.partial import checkpoint_trainable_only
    from sdkit.training.results import save_result, tensor_bytes

    # 0. cheap checks first: outputs/resume target, the images and captions (no model loaded yet)
    out = Path(recipe.output_dir)
    outputs = output_files(recipe)
    if ft.start_or_finish(recipe, outputs):
        return FinetuneResult(out, outputs)
    files, pairs = _images_and_captions(recipe)

    with torch_threads(recipe.threads), accelerator_session(recipe) as accelerator:
        set_seed(recipe.seed)
        device, dtype = accelerator.device, ft.weight_dtype(accelerator)

        # 1. load; add the token(s), initialised from init_token
        pipe = ft.load_base(recipe)
        new_ids = add_token(pipe.tokenizer, pipe.text_encoder, recipe.token, recipe.init_token, recipe.num_vectors)
        resolution = ft.resolution_of(recipe, pipe)

        # 2. only the embedding table trains; the old rows are restored after every step
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
        table = pipe.text_encoder.get_input_embeddings().weight
        table.requires_grad_(True)
        ft.place(pipe.unet, device, dtype)
        ft.place(pipe.vae, device, dtype)
        pipe.text_encoder.to(device)
        original = table.detach().clone()
        keep = torch.ones(len(original), dtype=torch.bool, device=original.device)
        keep[new_ids] = False

        def restore_old_rows(step: int) -> None:
            with torch.no_grad():
                table[keep] = original[keep]

        # 3. data: (image, caption) pairs; the token expands to its vectors as the pipeline expands prompts
        images = data.load_images(files, resolution, recipe.center_crop)
        key, values = ft.image_tensors(recipe, pipe.vae, images, device, dtype, recipe.train_batch_size)
        ids = data.tokenize(pipe.tokenizer, [pipe.maybe_convert_prompt(c, pipe.tokenizer) for _, c in pairs])
        dataset = data.CaptionedImages(ids, **{key: [values[i] for i, _ in pairs]})

        # 4. train (recipe.yaml only now: every input is checked and decoded)
        if accelerator.is_main_process:
            ft.write_recipe(recipe, out / "recipe.yaml")
        loss_fn = ft.denoising_loss(recipe, pipe, ft.noise_scheduler_of(pipe), resolution, device)
        checkpoint_trainable_only(accelerator)
        task = TrainTask(
            modules={"text_encoder": pipe.text_encoder}, dataset=dataset, loss_fn=loss_fn, params=[table],
            after_step=restore_old_rows, validate=ft.validator(recipe, pipe, accelerator),
            info={"task": recipe.task, "token": recipe.token},
        )  # fmt: skip
        result = run_training(accelerator, recipe, task)

        # 5. save
        if accelerator.is_main_process:
            learned = table.detach()[new_ids].float().cpu()
            save_result(out, [p.name for p in outputs], lambda stage: save_embedding(recipe, learned, [stage / p.name for p in outputs]),
                        tensor_bytes(learned) * len(outputs))  # fmt: skip
            for path in outputs:
                print(f"embedding saved: {path}", file=sys.stderr)
        accelerator.wait_for_everyone()
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return FinetuneResult(out, outputs, pipe, result.global_step, result.seconds)


def _images_and_captions(recipe: TrainTextualInversionRecipe) -> tuple[list[Path], list[tuple[int, str]]]:
    """(image files, (image index, caption) pairs): each image with its caption from metadata.jsonl (which must contain
    the token), or, for a plain folder, every image with every caption template."""
    from sdkit.training.data import read_imagefolder
    from sdkit.training.finetune import image_files

    if (Path(recipe.data_dir) / "metadata.jsonl").is_file():
        rows = read_imagefolder(recipe.data_dir, recipe.caption_column)
        for row in rows:
            if recipe.token not in row[recipe.caption_column]:
                raise UserError(
                    f"caption of {row['file_name'].name} ({row[recipe.caption_column]!r}) does not contain the token "
                    f"{recipe.token!r}: put it in every caption, or remove metadata.jsonl to use caption_templates"
                )
        return [row["file_name"] for row in rows], [(i, row[recipe.caption_column]) for i, row in enumerate(rows)]
    files = image_files(recipe.data_dir, "data", "--data-dir")
    return files, [(i, t.format(token=recipe.token)) for t in recipe.caption_templates for i in range(len(files))]


def add_token(tokenizer, text_encoder, token: str, init_token: str, num_vectors: int) -> list[int]:
    """Add `token` (token_1 … for more vectors) and grow the embedding table; new rows copy `init_token`'s embedding."""
    import torch

    names = [token] + [f"{token}_{i}" for i in range(1, num_vectors)]
    vocab = tokenizer.get_vocab()
    taken = [n for n in names if n in vocab or f"{n}</w>" in vocab]
    if taken:
        raise UserError(f"token {taken[0]!r} is already in the tokenizer's vocabulary: choose a new word, e.g. <{token.strip('<>')}-x>")
    init_ids = tokenizer.encode(init_token, add_special_tokens=False)
    if len(init_ids) != 1:
        pieces = " ".join(tokenizer.convert_ids_to_tokens(init_ids))
        raise UserError(f"init token {init_token!r} is {len(init_ids)} tokens ({pieces}), not one: choose a single-token word")
    added = tokenizer.add_tokens(names)
    if added != len(names):
        raise UserError(f"the tokenizer refused token {token!r}: choose another word")
    new_ids = tokenizer.convert_tokens_to_ids(names)
    if tokenizer.encode(" ".join(names), add_special_tokens=False) != new_ids:
        raise UserError(f"token {token!r} does not tokenize to itself: choose a word without special characters")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new rows are set just below
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[new_ids] = table[init_ids[0]].clone()
    return new_ids


def save_embedding(recipe: TrainTextualInversionRecipe, learned, paths: list[Path]) -> None:
    """diffusers ({token: [n, dim]}) and A1111 ({"emb_params": [n, dim]}) files, metadata in the header."""
    import json

    from sdkit.lora_io import write_safetensors
    from sdkit.version import __version__

    metadata = {
        "format": "pt", "sdkit.version": __version__, "sdkit.task": recipe.task, "sdkit.base_model": recipe.model,
        "sdkit.token": recipe.token, "sdkit.init_token": recipe.init_token, "sdkit.num_vectors": str(recipe.num_vectors),
        "sdkit.recipe": json.dumps(recipe.model_dump(mode="json"), sort_keys=True), "name": paths[1].stem,
    }  # fmt: skip
    write_safetensors(paths[0], {recipe.token: learned}, metadata)
    write_safetensors(paths[1], {"emb_params": learned}, metadata)
