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
from typing import Any

from sdkit.errors import UserError
from sdkit.schema.adapters import EmbeddingRef, LoraRef
from sdkit.weightfiles import check_weights, quiet_libraries, refusing_code

LORA_KEY_SUFFIX = re.compile(r"\.(lora_[AB]|lora\.(down|up)|lora_(down|up)|lora_linear_layer\.(down|up))(\.weight)?$")
SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+?): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)


def check_file(path: Path, flag: str, allow_pickle: bool) -> None:
    """A LoRA or embedding file that exists and is safetensors (or, with `allow_pickle`, a torch pickle), by content."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    check_weights(path, flag, allow_pickle)


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

    from sdkit.atomic import write_safetensors
    from sdkit.lora_io import mixed_unet_keys_renamed, read_metadata

    renamed = mixed_unet_keys_renamed(path)
    if renamed is None:
        pipe.load_lora_weights(str(path), adapter_name=adapter)
        return
    with tempfile.TemporaryDirectory(prefix="sdkit-lora-") as tmp:
        fixed = write_safetensors(Path(tmp) / path.name, renamed, read_metadata(path))
        pipe.load_lora_weights(str(fixed), adapter_name=adapter)


def apply_loras(pipe, loras: list[LoraRef], *, fuse: bool = False) -> None:
    """Load every LoRA as a named adapter, check it fits fully, then set the weights (and optionally fuse).

    diffusers, transformers and peft are kept quiet while a LoRA loads: a misfit logs one line per layer (over a
    hundred on SDXL) before the exception that sdkit reports in one line."""
    names = []
    for i, lora in enumerate(loras):
        adapter = f"lora{i}_{Path(lora.path).stem}"[:60]
        with quiet_libraries(), refusing_code([Path(lora.path)]):
            state_dict, _alphas = pipe.lora_state_dict(str(lora.path))
            expected = {LORA_KEY_SUFFIX.sub("", k) for k in state_dict if LORA_KEY_SUFFIX.search(k)}
            try:
                _load_lora(pipe, Path(lora.path), adapter)
            except (ValueError, RuntimeError, KeyError) as err:
                raise UserError(
                    f"--lora {lora.path} does not fit this model ({_misfit(err)}): was it trained for another base "
                    "(e.g. SDXL vs SD 1.x)?"
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
    pipe.set_adapters(names, adapter_weights=[_weights(pipe, name, lora) for name, lora in zip(names, loras, strict=True)])
    if fuse:
        pipe.fuse_lora(adapter_names=names)


def _weights(pipe, adapter: str, lora: LoraRef) -> float | dict[str, float]:
    """One adapter's weight, or per component when the UNet's differs (A1111's <lora:NAME:TE:UNET>): diffusers'
    `set_adapters` takes a dict of the components that hold the adapter."""
    if lora.unet_weight is None:
        return lora.weight
    parts = [part for part, names in pipe.get_list_adapters().items() if adapter in names]
    return {part: lora.unet_weight if part in ("unet", "transformer") else lora.weight for part in parts}


def _misfit(err: BaseException) -> str:
    """A short cause from diffusers'/peft's error (the first mismatched layer, not the whole list)."""
    text = str(err)
    found = SIZE_MISMATCH.search(text)
    if found:
        key, theirs, ours = found.groups()
        layer = re.sub(r"\.lora_[AB]\.[^.]+\.weight$", "", key)  # the model's layer, without peft's adapter name
        return f"layer {layer} is {theirs} in the file, {ours} in this model"
    if "ignore_mismatched_sizes" in text:  # transformers' text-encoder report (silenced) holds the details
        return "its text-encoder layers have other sizes than this model's"
    if "not found in the base model" in text:
        return "none of its layers exist in this model"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else type(err).__name__


def _embedding_vectors(state: Any, path: Path):
    """The vectors of a loaded embedding (diffusers: {token: tensor}; A1111: string_to_param["*"]; a bare tensor)."""
    import torch

    if isinstance(state, dict) and "string_to_param" in state and isinstance(state["string_to_param"], dict):
        vectors = state["string_to_param"].get("*")
    elif isinstance(state, dict) and len(state) == 1:
        vectors = next(iter(state.values()))
    else:
        vectors = state
    if not isinstance(vectors, torch.Tensor) or vectors.ndim not in (1, 2):
        what = f"keys {', '.join(map(str, list(state)[:4]))}" if isinstance(state, dict) else type(state).__name__
        raise UserError(
            f"--embedding {path} is not a textual-inversion embedding ({what}): give one token's vectors "
            "(diffusers {token: tensor}, or A1111's format)"
        )
    if vectors.numel() == 0:
        raise UserError(
            f"--embedding {path} has 0 vectors (shape {tuple(vectors.shape)}): the file is empty or damaged; "
            "train or download the embedding again"
        )
    return vectors


def apply_embeddings(pipe, embeddings: list[EmbeddingRef]) -> None:
    """Load textual-inversion embeddings into the (first) text encoder, with one-line errors.

    The file is read with diffusers' own `load_textual_inversion_state_dicts` (safetensors, else torch's weights_only
    loader) and checked before `load_textual_inversion` gets the loaded state."""
    from diffusers.loaders.textual_inversion import load_textual_inversion_state_dicts

    for emb in embeddings:
        vocab = pipe.tokenizer.get_vocab()
        if emb.token is not None and (emb.token in vocab or f"{emb.token}</w>" in vocab):
            raise UserError(f"--embedding {emb.path}: token {emb.token!r} is already in the vocabulary: choose another (PATH:TOKEN)")
        with quiet_libraries(), refusing_code([Path(emb.path)]):
            state = load_textual_inversion_state_dicts([str(emb.path)])[0]
        if isinstance(state, dict) and {"clip_l", "clip_g"} <= set(state):
            _load_sdxl_embedding(pipe, state, emb)
            continue
        _embedding_vectors(state, Path(emb.path))
        try:
            with quiet_libraries():
                pipe.load_textual_inversion(state, token=emb.token)
        except ValueError as err:
            first = str(err).strip().splitlines()[0][:200]
            if "already in tokenizer vocabulary" in first:
                raise UserError(f"--embedding {emb.path}: {first.split('.')[0]}: give another token as PATH:TOKEN") from None
            raise UserError(f"--embedding {emb.path} does not fit this text encoder ({first}): use one made for this model") from None


def _load_sdxl_embedding(pipe, state: dict, emb: EmbeddingRef) -> None:
    """An SDXL embedding ({"clip_l", "clip_g"}, A1111's format, sdkit's SDXL textual inversion): each key into its
    encoder, as diffusers documents; the token is the given one, else the file's `sdkit.token`, else its name."""
    from sdkit.lora_io import read_metadata

    if getattr(pipe, "text_encoder_2", None) is None:
        raise UserError(f"--embedding {emb.path} is an SDXL embedding (clip_l + clip_g): use it with an SDXL model")
    token = emb.token or read_metadata(Path(emb.path)).get("sdkit.token") or Path(emb.path).stem
    pairs = ((state["clip_l"], pipe.text_encoder, pipe.tokenizer), (state["clip_g"], pipe.text_encoder_2, pipe.tokenizer_2))
    for vectors, encoder, tokenizer in pairs:
        vectors = _embedding_vectors(vectors, Path(emb.path))
        try:
            with quiet_libraries():  # several vectors: token, token_1, ... (diffusers' multi-vector convention)
                pipe.load_textual_inversion(vectors, token=token, text_encoder=encoder, tokenizer=tokenizer)
        except ValueError as err:
            first = str(err).strip().splitlines()[0][:200]
            raise UserError(f"--embedding {emb.path} does not fit this model's text encoders ({first})") from None


def _unload_embeddings(pipe) -> None:
    """Remove the loaded embeddings from every tokenizer/text encoder pair (SDXL's second included)."""
    pipe.unload_textual_inversion()
    tokenizer_2 = getattr(pipe, "tokenizer_2", None)
    if tokenizer_2 is not None and any(not t.special for t in tokenizer_2.added_tokens_decoder.values()):
        pipe.unload_textual_inversion(tokenizer=tokenizer_2, text_encoder=pipe.text_encoder_2)


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
            _unload_embeddings(pipe)
