"""What a generate recipe asks for by name, resolved to files before anything loads: LoRAs (`--lora NAME`,
`<lora:NAME:W>` in the prompt), embeddings (`--embedding NAME`, library embeddings named in the prompt) and the VAE.

    refs = resolve(recipe)     # refs.prompt: the text the encoder reads; refs.loras: files and weights; ...

A value that is an existing file is used as it is; otherwise it is a name or short hash in the model library
(`sdkit.library`). Each file is checked as the `--lora` / `--embedding` paths always were (safetensors, or a pickle
with --allow-pickle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdkit.adapters import check_file
from sdkit.library import entries, find_or_fail, roots
from sdkit.prompt_names import names_in, spelled_as, split_lora_tags
from sdkit.schema.adapters import EmbeddingRef, LoraRef, token_problem
from sdkit.vae import VaeRef, resolve_vae


@dataclass(frozen=True)
class Refs:
    prompt: str  # the prompt the text encoder reads: tags removed, embedding names spelled as their tokens
    negative: str
    loras: tuple[LoraRef, ...]  # --lora first, then the prompt's tags; paths resolved
    embeddings: tuple[EmbeddingRef, ...]
    vae: VaeRef | None


def _file(ref: Path | str, kind: str, flag: str, dirs: Sequence[Path], allow_pickle: bool) -> Path:
    path = Path(ref).expanduser()
    if not path.is_file():
        path = find_or_fail(kind, str(ref), dirs)
    check_file(path, flag, allow_pickle)
    return path.resolve()


def _library_embeddings(text: str, dirs: Sequence[Path], taken: set[str]) -> list[EmbeddingRef]:
    """Library embeddings whose file name is a word of `text` (A1111's way), each bound to that name as its token."""
    if not roots(dirs):
        return []
    stems: dict[str, Path] = {}
    for entry in entries("embeddings", dirs):
        if entry.path.is_file() and token_problem(entry.stem) is None:
            stems.setdefault(entry.stem, entry.path)
    return [EmbeddingRef(path=stems[name], token=name) for name in names_in(text, stems) if name not in taken]


def resolve(recipe: Any) -> Refs:
    """The files a generate recipe's LoRAs, embeddings and VAE name (see the module docstring)."""
    dirs = list(recipe.models_dir)
    prompt, tags = split_lora_tags(recipe.prompt)
    loras = [lora.model_copy(update={"path": _file(lora.path, "loras", "--lora", dirs, recipe.allow_pickle)})
             for lora in recipe.lora]  # fmt: skip
    for tag in tags:
        path = _file(tag.name, "loras", f"<lora:{tag.name}>", dirs, recipe.allow_pickle)
        loras.append(LoraRef(path=path, weight=tag.weight, unet_weight=tag.unet))
    embeddings = [emb.model_copy(update={"path": _file(emb.path, "embeddings", "--embedding", dirs, recipe.allow_pickle)})
                  for emb in recipe.embedding]  # fmt: skip
    taken = {emb.token for emb in embeddings if emb.token} | {Path(emb.path).stem for emb in embeddings}
    found = _library_embeddings(f"{prompt}\n{recipe.negative}", dirs, taken)
    for emb in found:
        check_file(emb.path, "embedding", recipe.allow_pickle)
    names = [str(emb.token) for emb in found]
    vae = resolve_vae(recipe.vae, allow_pickle=recipe.allow_pickle, models_dirs=dirs) if recipe.vae else None
    return Refs(spelled_as(prompt, names), spelled_as(recipe.negative, names), tuple(loras), (*embeddings, *found), vae)
