"""`sdkit train textual-inversion`: learn the embedding of a new token; every other weight stays as it was.

Like diffusers' textual_inversion example; the lifecycle (`sdkit.training.trainer`: load, checkpoints, exact resume,
SIGINT save, validation grids, loss plot, staged save) is shared. What is textual inversion's own:

1. add `token` (and token_1 … for num_vectors > 1, diffusers' multi-vector convention) to the tokenizer, grow the text
   encoder's embedding table, start the new rows from `init_token`'s embedding; SDXL: in both tokenizers and text
   encoders, one embedding per encoder.
2. freeze everything but the embedding table; after every optimiser step the old rows are put back (weight decay and
   optimiser noise never touch them), so only the new rows learn; checkpoints hold the table only.
3. data: an imagefolder whose captions contain the token, or a plain image folder seen with every caption template.
4. the denoising loss through the frozen UNet.
5. save OUT/learned_embeds.safetensors (diffusers: {token: tensor[n, dim]}, `pipe.load_textual_inversion`) and
   OUT/NAME.safetensors (A1111: {"emb_params": tensor[n, dim]}, NAME = the token without <>; A1111 uses the file name
   as the prompt word), both with the metadata (base model, token, init token, recipe) in the header. SDXL: both
   files hold {"clip_l": [n, dim 1], "clip_g": [n, dim 2]} (A1111's SDXL format; diffusers loads each key into its
   encoder with `load_textual_inversion(state["clip_l"], token, text_encoder=..., tokenizer=...)`).

    sdkit train textual-inversion -m shapes --data DIR --token "<zig>" --init-token shape -o OUT
"""

from __future__ import annotations

import re
from pathlib import Path

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

        # 1. the token(s) in every tokenizer (SDXL: both), initialised from init_token; only the embedding tables train
        # and their old rows are put back after every step (checkpoints hold the tables only)
        self.encoders = encoders = {name: getattr(pipe, name) for name in s.text_encoders}
        tokenizers = {"text_encoder": pipe.tokenizer, "text_encoder_2": getattr(pipe, "tokenizer_2", None)}
        self.new_ids = {name: add_token(tokenizers[name], encoder, recipe.token, recipe.init_token, recipe.num_vectors)
                        for name, encoder in encoders.items()}  # fmt: skip
        frozen = s.stand_ins(list(encoders))
        self.tables, originals, keeps = {}, {}, {}
        for name, encoder in encoders.items():
            encoder.requires_grad_(False)
            table = self.tables[name] = encoder.get_input_embeddings().weight
            table.requires_grad_(True)
            encoder.to(s.device)
            originals[name] = table.detach().clone()
            keeps[name] = torch.ones(len(table), dtype=torch.bool, device=table.device)
            keeps[name][self.new_ids[name]] = False

        def restore_old_rows(step: int) -> None:
            with torch.no_grad():
                for name, table in self.tables.items():
                    table[keeps[name]] = originals[name][keeps[name]]

        checkpoint_trainable_only(s.accelerator)

        # 2. data: (image, caption) pairs; the token expands to its vectors as the pipeline expands prompts
        pictures = s.pictures(self.files)
        order = [i for i, _ in self.pairs]
        captions = [c for _, c in self.pairs]
        dataset = data.CaptionedImages(captions, ft.image_entries(recipe, frozen.vae, pictures, s.device, s.dtype), order)

        # 3. the loss, through the frozen UNet
        loss_fn = denoising_loss(recipe, frozen, ft.noise_scheduler_of(pipe), s.device, text=s.text(frozen))
        return TrainingSpec(
            modules=dict(encoders), dataset=dataset, loss_fn=loss_fn, params=list(self.tables.values()),
            after_step=restore_old_rows, validate=ft.validator(s), batch_sampler=s.batches(pictures, order),
            info={"task": recipe.task, "token": recipe.token},
        )  # fmt: skip

    def save(self, s: Session, stage: Path) -> None:
        save_embedding(self.recipe, self.learned(), [stage / name for name in self.outputs()])

    def saved_bytes(self, s: Session) -> int:
        from sdkit.training.results import tensor_bytes

        return tensor_bytes(*self.learned().values()) * len(self.outputs())

    def learned(self) -> dict:
        """The new rows of each embedding table, fp32 on the CPU: {"text_encoder": [n, d]} (SDXL: and
        "text_encoder_2")."""
        return {name: table.detach()[self.new_ids[name]].float().cpu() for name, table in self.tables.items()}


def _images_and_captions(recipe: TrainTextualInversionRecipe) -> tuple[list[Path], list[tuple[int, str]]]:
    """(image files, (image index, caption) pairs): each image with its caption (metadata.jsonl, kohya folders or .txt
    files; it must contain the token), each kohya image `repeats` times, or, for a folder of images without captions,
    every image with every caption template."""
    from sdkit.training.datasets import read_dataset, repeated

    rows = read_dataset(recipe.data_dir, recipe.caption_column, captions_required=False)
    files = [row["file_name"] for row in rows]
    if rows[0][recipe.caption_column] is None:
        return files, [(i, t.format(token=recipe.token)) for t in recipe.caption_templates for i in range(len(files))]
    for row in rows:
        if recipe.token not in row[recipe.caption_column]:
            raise UserError(
                f"caption of {row['file_name'].name} ({row[recipe.caption_column]!r}) does not contain the token "
                f"{recipe.token!r}: put it in every caption, or remove the captions to use caption_templates"
            )
    return files, [(i, rows[i][recipe.caption_column]) for i in repeated(rows)]


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


def save_embedding(recipe: TrainTextualInversionRecipe, learned: dict, paths: list[Path]) -> None:
    """SD 1.x/2.x: diffusers ({token: [n, dim]}) and A1111 ({"emb_params": [n, dim]}) files; SDXL: both files as
    {"clip_l": [n, dim 1], "clip_g": [n, dim 2]}, the format A1111 reads and diffusers documents (one
    `load_textual_inversion` per encoder). Metadata in the header."""
    import json

    from sdkit.atomic import write_safetensors
    from sdkit.version import __version__

    metadata = {
        "format": "pt", "sdkit.version": __version__, "sdkit.task": recipe.task, "sdkit.base_model": recipe.model,
        "sdkit.token": recipe.token, "sdkit.init_token": recipe.init_token, "sdkit.num_vectors": str(recipe.num_vectors),
        "sdkit.recipe": json.dumps(recipe.model_dump(mode="json"), sort_keys=True), "name": paths[1].stem,
    }  # fmt: skip
    if "text_encoder_2" in learned:
        both = {"clip_l": learned["text_encoder"], "clip_g": learned["text_encoder_2"]}
        for path in paths:
            write_safetensors(path, both, metadata)
        return
    write_safetensors(paths[0], {recipe.token: learned["text_encoder"]}, metadata)
    write_safetensors(paths[1], {"emb_params": learned["text_encoder"]}, metadata)
