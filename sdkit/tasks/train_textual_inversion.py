"""`sdkit train textual-inversion`: learn the embedding of a new token; every other weight stays as it was.

Like diffusers' textual_inversion example; the lifecycle (`sdkit.training.trainer`: load, checkpoints, exact resume,
SIGINT save, validation grids, loss plot, staged save) is shared. What is textual inversion's own:

1. add `token` (and token_1 … for num_vectors > 1, diffusers' multi-vector convention) to the tokenizer, grow the text
   encoder's embedding table, start the new rows from `init_token`'s embedding.
2. freeze everything but the embedding table; after every optimiser step the old rows are put back (weight decay and
   optimiser noise never touch them), so only the new rows learn; checkpoints hold the table only.
3. data: an imagefolder whose captions contain the token, or a plain image folder seen with every caption template.
4. the denoising loss through the frozen UNet.
5. save OUT/learned_embeds.safetensors (diffusers: {token: tensor[n, dim]}, `pipe.load_textual_inversion`) and
   OUT/NAME.safetensors (A1111: {"emb_params": tensor[n, dim]}, NAME = the token without <>; A1111 uses the file name
   as the prompt word), both with the metadata (base model, token, init token, recipe) in the header.

    sdkit train textual-inversion -m shapes --data DIR --token "<zig>" --init-token shape -o OUT
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from sdkit.errors import UserError
from sdkit.schema.finetune import TrainTextualInversionRecipe
from sdkit.training import finetune as ft
from sdkit.training.trainer import Session, Trainer, TrainResult, train

DIFFUSERS_FILE = "learned_embeds.safetensors"


def output_files(recipe: TrainTextualInversionRecipe) -> list[Path]:
    """OUT/learned_embeds.safetensors (diffusers) and OUT/NAME.safetensors (A1111)."""
    out = Path(recipe.output_dir)
    name = re.sub(r"[^\w.-]", "", recipe.token) or "embedding"
    if name == Path(DIFFUSERS_FILE).stem:
        name += "-a1111"
    return [out / DIFFUSERS_FILE, out / f"{name}.safetensors"]


def run(recipe: TrainTextualInversionRecipe) -> TrainResult:
    """Train the new token's embedding; return the saved files and the trained pipeline (token added)."""
    return train(TextualInversionTrainer(recipe))


class TextualInversionTrainer(Trainer):
    def outputs(self) -> list[str]:
        return [path.name for path in output_files(self.recipe)]

    def check(self) -> None:
        self.files, self.pairs = _images_and_captions(self.recipe)

    def prepare(self, s: Session):
        import torch

        from sdkit.training import data
        from sdkit.training.diffusion import denoising_loss
        from sdkit.training.loop import TrainingSpec
        from sdkit.training.partial import checkpoint_trainable_only

        recipe, pipe = self.recipe, s.pipe

        # 1. the token(s), initialised from init_token; only the embedding table trains and its old rows are put
        # back after every step (checkpoints hold the table only)
        self.new_ids = add_token(pipe.tokenizer, pipe.text_encoder, recipe.token, recipe.init_token, recipe.num_vectors)
        frozen = SimpleNamespace(unet=s.frozen("unet"), vae=s.frozen("vae"), text_encoder=pipe.text_encoder)
        pipe.text_encoder.requires_grad_(False)
        self.table = table = pipe.text_encoder.get_input_embeddings().weight
        table.requires_grad_(True)
        pipe.text_encoder.to(s.device)
        original = table.detach().clone()
        keep = torch.ones(len(original), dtype=torch.bool, device=original.device)
        keep[self.new_ids] = False

        def restore_old_rows(step: int) -> None:
            with torch.no_grad():
                table[keep] = original[keep]

        checkpoint_trainable_only(s.accelerator)

        # 2. data: (image, caption) pairs; the token expands to its vectors as the pipeline expands prompts
        images = data.load_images(self.files, s.resolution, recipe.center_crop)
        key, values = ft.image_tensors(recipe, frozen.vae, images, s.device, s.dtype, recipe.train_batch_size)
        ids = data.tokenize(pipe.tokenizer, [pipe.maybe_convert_prompt(c, pipe.tokenizer) for _, c in self.pairs])
        dataset = data.CaptionedImages(ids, **{key: [values[i] for i, _ in self.pairs]})

        # 3. the loss, through the frozen UNet
        loss_fn = denoising_loss(recipe, frozen, ft.noise_scheduler_of(pipe), s.resolution, s.device)
        return TrainingSpec(
            modules={"text_encoder": pipe.text_encoder}, dataset=dataset, loss_fn=loss_fn, params=[table],
            after_step=restore_old_rows, validate=ft.validator(s), info={"task": recipe.task, "token": recipe.token},
        )  # fmt: skip

    def save(self, s: Session, stage: Path) -> None:
        save_embedding(self.recipe, self.learned(), [stage / name for name in self.outputs()])

    def saved_bytes(self, s: Session) -> int:
        from sdkit.training.results import tensor_bytes

        return tensor_bytes(self.learned()) * len(self.outputs())

    def learned(self):
        """The new rows of the embedding table: the learned vectors, fp32 on the CPU."""
        return self.table.detach()[self.new_ids].float().cpu()


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

    from sdkit.atomic import write_safetensors
    from sdkit.version import __version__

    metadata = {
        "format": "pt", "sdkit.version": __version__, "sdkit.task": recipe.task, "sdkit.base_model": recipe.model,
        "sdkit.token": recipe.token, "sdkit.init_token": recipe.init_token, "sdkit.num_vectors": str(recipe.num_vectors),
        "sdkit.recipe": json.dumps(recipe.model_dump(mode="json"), sort_keys=True), "name": paths[1].stem,
    }  # fmt: skip
    write_safetensors(paths[0], {recipe.token: learned}, metadata)
    write_safetensors(paths[1], {"emb_params": learned}, metadata)
