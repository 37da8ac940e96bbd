"""Models named inside prompts, as A1111 writes them: `<lora:NAME:WEIGHT>` tags and textual-inversion embeddings used
by their file name. Pure text functions; `sdkit.adapter_refs` looks the names up in the model library.

    text, tags = split_lora_tags("a castle <lora:ink:0.8>, night")   # ("a castle , night", [LoraTag("ink", 0.8, None)])

A tag is removed from the text the text encoder reads (A1111 leaves the rest of the prompt as it is; so does sdkit)
and is kept in the prompt recorded in the image. Forms: `<lora:NAME>` (weight 1), `<lora:NAME:W>`, `<lora:NAME:TE:UNET>`
(text-encoder and UNet weights, applied with diffusers' per-component adapter weights), and A1111's named forms
`te=W` / `unet=W`; `<lyco:...>` is the same. A1111's `dyn=` (dynamic rank) has no diffusers equivalent and is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sdkit.errors import UserError

LORA_TAG = re.compile(r"<(?:lora|lyco):([^<>]*)>", re.IGNORECASE)


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float  # the text encoders' weight (and the UNet's when `unet` is None)
    unet: float | None = None


def _number(text: str, tag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{tag}: {text!r} is not a number: write <lora:NAME:WEIGHT> or <lora:NAME:TE:UNET>") from None


def parse_tag(body: str) -> LoraTag:
    tag = f"<lora:{body}>"
    name, *params = [part.strip() for part in body.split(":")]
    if not name:
        raise UserError(f"{tag}: the tag names no LoRA: write <lora:NAME:WEIGHT>")
    positional: list[float] = []
    named: dict[str, float] = {}
    for param in params:
        key, sep, value = param.partition("=")
        if not sep:
            positional.append(_number(param, tag))
        elif key.strip() in ("te", "unet"):
            named[key.strip()] = _number(value, tag)
        else:
            raise UserError(f"{tag}: {key.strip()}= is not supported (only te= and unet=; diffusers has no dynamic rank)")
    if len(positional) > 2:
        raise UserError(f"{tag}: at most two weights (text encoder, UNet): write <lora:NAME:TE:UNET>")
    te = named.get("te", positional[0] if positional else 1.0)
    unet = named.get("unet", positional[1] if len(positional) > 1 else None)
    return LoraTag(name, te, None if unet is None or unet == te else unet)


def split_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """The prompt without its `<lora:...>` tags (the text sent to the encoder), and the tags in order."""
    tags = [parse_tag(match.group(1)) for match in LORA_TAG.finditer(prompt)]
    return LORA_TAG.sub("", prompt), tags


def _word(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def names_in(text: str, names: Iterable[str]) -> list[str]:
    """The names that occur in `text` as whole words (case-insensitive, as A1111's lower-casing tokenizer sees them)."""
    return [name for name in names if _word(name).search(text)]


def spelled_as(text: str, names: Iterable[str]) -> str:
    """`text` with each occurrence of a name written exactly as the name (its embedding token is case-sensitive)."""
    for name in names:
        text = _word(name).sub(name.replace("\\", "\\\\"), text)
    return text
