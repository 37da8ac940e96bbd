"""LoRAs and textual-inversion embeddings applied at generation, through diffusers' own loaders.

diffusers converts kohya/A1111 LoRA files and reads A1111 embeddings itself; what it does not do is refuse a LoRA that
only partly fits the model (unmatched layers are dropped silently). `apply_loras` counts the layers the file names and
the layers that received the adapter, and fails unless they agree. A file whose UNet keys mix peft's and diffusers'
names (sdkit's own LoRAs on attention + convolutions, before it saved peft's names only) is renamed to one format
first, so it loads fully.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from sdkit.errors import UserError
from sdkit.models import check_pickle_allowed, check_safetensors
from sdkit.schema.adapters import EmbeddingRef, LoraRef

LORA_KEY_SUFFIX = re.compile(r"\.(lora_[AB]|lora\.(down|up)|lora_(down|up)|lora_linear_layer\.(down|up))(\.weight)?$")


def check_file(path: Path, flag: str, allow_pickle: bool) -> None:
    if not Path(path).is_file():
        raise UserError(f"{flag} {path}: no such file")
    check_pickle_allowed(Path(path), allow_pickle)
    if Path(path).suffix == ".safetensors":
        check_safetensors(Path(path))


def _tuned_modules(pipe, adapter: str) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    count = 0
    for name in ("unet", "transformer", "text_encoder", "text_encoder_2"):
        component = getattr(pipe, name, None)
        if component is None:
            continue
        count += sum(1 for m in component.modules() if isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {}))
    return count


def _load_lora(pipe, path: Path, adapter: str) -> None:
    """`pipe.load_lora_weights`; a file whose UNet keys mix two naming formats is first rewritten, with its header, to
    a temporary file in one format (diffusers would load only the layers named like the first key)."""
    import tempfile

    from sdkit.lora_io import mixed_unet_keys_renamed, read_metadata, write_safetensors

    renamed = mixed_unet_keys_renamed(path)
    if renamed is None:
        pipe.load_lora_weights(str(path), adapter_name=adapter)
        return
    with tempfile.TemporaryDirectory(prefix="sdkit-lora-") as tmp:
        fixed = write_safetensors(Path(tmp) / path.name, renamed, read_metadata(path))
        pipe.load_lora_weights(str(fixed), adapter_name=adapter)


def apply_loras(pipe, loras: list[LoraRef], *, fuse: bool = False) -> None:
    """Load every LoRA as a named adapter, check it fits fully, then set the weights (and optionally fuse)."""
    names = []
    for i, lora in enumerate(loras):
        adapter = f"lora{i}_{Path(lora.path).stem}"[:60]
        state_dict, _alphas = pipe.lora_state_dict(str(lora.path))
        expected = {LORA_KEY_SUFFIX.sub("", k) for k in state_dict if LORA_KEY_SUFFIX.search(k)}
        try:
            _load_lora(pipe, Path(lora.path), adapter)
        except (ValueError, RuntimeError, KeyError) as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(
                f"--lora {lora.path} does not fit this model ({first}): was it trained for another base (e.g. SDXL vs SD 1.x)?"
            ) from None
        loaded = _tuned_modules(pipe, adapter)
        if loaded == 0:
            raise UserError(f"--lora {lora.path} matches no layer of this model: it was trained for another architecture")
        if expected and loaded < len(expected):
            raise UserError(
                f"--lora {lora.path} fits only {loaded} of its {len(expected)} layers to this model: it was trained for "
                "another architecture (refusing a silent partial load)"
            )
        names.append(adapter)
    pipe.set_adapters(names, adapter_weights=[lora.weight for lora in loras])
    if fuse:
        pipe.fuse_lora(adapter_names=names)


def apply_embeddings(pipe, embeddings: list[EmbeddingRef]) -> None:
    """Load textual-inversion embeddings into the (first) text encoder, with one-line errors."""
    for emb in embeddings:
        vocab = pipe.tokenizer.get_vocab()
        if emb.token is not None and (emb.token in vocab or f"{emb.token}</w>" in vocab):
            raise UserError(f"--embedding {emb.path}: token {emb.token!r} is already in the vocabulary: choose another (PATH:TOKEN)")
        try:
            pipe.load_textual_inversion(str(emb.path), token=emb.token)
        except ValueError as err:
            first = str(err).strip().splitlines()[0][:200]
            if "already in tokenizer vocabulary" in first:
                raise UserError(f"--embedding {emb.path}: {first.split('.')[0]}: give another token as PATH:TOKEN") from None
            raise UserError(f"--embedding {emb.path} does not fit this text encoder ({first}): use one made for this model") from None


@contextlib.contextmanager
def adapters_applied(pipe, loras: list[LoraRef], embeddings: list[EmbeddingRef], *, fuse: bool = False):
    """LoRAs and embeddings on a (possibly shared) pipeline for one job, removed again afterwards."""
    try:
        apply_embeddings(pipe, embeddings)
        if loras:
            apply_loras(pipe, loras, fuse=fuse)
        yield pipe
    finally:
        if loras:
            if fuse:
                pipe.unfuse_lora()
            pipe.unload_lora_weights()
        if embeddings:
            pipe.unload_textual_inversion()
