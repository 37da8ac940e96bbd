"""Captions → the UNet's text conditioning, as the pipeline computes it at inference, for SD 1.x/2.x and SDXL.

    text = TextConditioning(pipe, frozen, caption_dropout=0.1)
    hidden, pooled = text.encode(batch["caption"], models, generators)

* SD 1.x/2.x: one tokenizer and text encoder; its last hidden state (StableDiffusionPipeline.encode_prompt).
* SDXL: both tokenizers and encoders; their penultimate hidden states concatenated, and the second encoder's
  projected, pooled embedding (StableDiffusionXLPipeline.encode_prompt with clip_skip None).
* Textual-inversion tokens are expanded per tokenizer (`maybe_convert_prompt`), as the pipelines do.
* Caption dropout trains the unconditional prediction classifier-free guidance uses, in the form the pipeline uses
  it: the empty prompt's encoding, or, for an SDXL pipeline with `force_zeros_for_empty_prompt` (SDXL's default),
  zeros for both the hidden states and the pooled embedding.
* kohya's shuffle_caption: the comma-separated pieces after the first `keep_tokens` are shuffled per sample, from the
  sample's own generator.
* `cache()` encodes every caption once with the frozen encoders (kohya's cache_text_encoder_outputs): for SDXL the
  encoders then never run in the training step.

The encoders come from `models` when they train, else from `frozen` (a namespace with text_encoder[, text_encoder_2]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

ENCODERS = ("text_encoder", "text_encoder_2")


def is_sdxl(pipe) -> bool:
    """Whether a pipeline has SDXL's two text encoders and added conditioning."""
    return getattr(pipe, "text_encoder_2", None) is not None and getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's model_max_length (what the pipeline's text encoder sees)."""
    return tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def shuffle_caption(caption: str, keep_tokens: int, generator: torch.Generator) -> str:
    """kohya's shuffle_caption: split at commas, keep the first `keep_tokens` pieces in place, shuffle the rest."""
    pieces = [p.strip() for p in caption.split(",")]
    fixed, rest = pieces[:keep_tokens], pieces[keep_tokens:]
    order = torch.randperm(len(rest), generator=generator).tolist()
    return ", ".join(fixed + [rest[i] for i in order])


class TextConditioning:
    """See the module docstring. `encode` returns (hidden states, pooled embedding or None)."""

    def __init__(self, pipe, frozen, *, caption_dropout: float = 0.0, shuffle: bool = False, keep_tokens: int = 0):
        self.pipe, self.frozen = pipe, frozen
        self.sdxl = is_sdxl(pipe)
        self.names = ENCODERS if self.sdxl else ENCODERS[:1]
        self.tokenizers = [pipe.tokenizer, pipe.tokenizer_2] if self.sdxl else [pipe.tokenizer]
        self.caption_dropout, self.shuffle, self.keep_tokens = caption_dropout, shuffle, keep_tokens
        self.zeros_for_empty = self.sdxl and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        self.cached: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def ids(self, captions: Sequence[str]) -> list[torch.Tensor]:
        """Token ids per tokenizer, textual-inversion tokens expanded as the pipeline expands them."""
        return [tokenize(tok, [self.pipe.maybe_convert_prompt(c, tok) for c in captions]) for tok in self.tokenizers]

    def run_encoders(self, captions: Sequence[str], models: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden, pooled = [], None
        for name, ids in zip(self.names, self.ids(captions), strict=True):
            encoder = models.get(name, getattr(self.frozen, name))
            device = next(encoder.parameters()).device
            if not self.sdxl:
                hidden.append(encoder(ids.to(device), return_dict=False)[0])
                continue
            out = encoder(ids.to(device), output_hidden_states=True)
            if out[0].ndim == 2:  # the projected, pooled embedding of CLIPTextModelWithProjection
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return torch.cat(hidden, dim=-1), pooled

    @torch.no_grad()
    def cache(self, captions: Sequence[str], batch_size: int = 64) -> None:
        """Encode every distinct caption (and the empty one) once with the frozen encoders; fp32 on the CPU."""
        distinct = sorted(set(captions) | {""})
        self.cached = {}
        for start in range(0, len(distinct), batch_size):
            chunk = distinct[start : start + batch_size]
            hidden, pooled = self.run_encoders(chunk, {})
            for i, caption in enumerate(chunk):
                self.cached[caption] = (hidden[i].float().cpu(), None if pooled is None else pooled[i].float().cpu())

    def encode(self, captions: Sequence[str], models: dict[str, Any], generators: Sequence[torch.Generator], device):
        """(hidden states, pooled or None) for one micro-batch; dropout and shuffling drawn from each sample's
        generator."""
        captions = list(captions)
        drop = [bool(torch.rand((), generator=g) < self.caption_dropout) if self.caption_dropout else False
                for g in generators]  # fmt: skip
        if self.shuffle:
            captions = [shuffle_caption(c, self.keep_tokens, g) for c, g in zip(captions, generators, strict=True)]
        if not self.zeros_for_empty:
            captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
        if self.cached is not None:
            hidden = torch.stack([self.cached[c][0] for c in captions]).to(device)
            pooled = torch.stack([self.cached[c][1] for c in captions]).to(device) if self.sdxl else None
        else:
            hidden, pooled = self.run_encoders(captions, models)
        if self.zeros_for_empty and any(drop):
            keep = torch.tensor([not d for d in drop], device=hidden.device, dtype=hidden.dtype)
            hidden = hidden * keep[:, None, None]
            pooled = pooled * keep[:, None]
        return hidden, pooled
