"""CLIP score and CLIP directional similarity, through transformers' CLIPModel.

CLIP score (Hessel et al. 2021, as torchmetrics' `CLIPScore` computes it): 100 x max(cos(E_I, E_C), 0), with E_I and
E_C the projected image and caption embeddings. torchmetrics 1.9 cannot run it on transformers 5 (its
`get_image_features` now returns an output object: "'BaseModelOutputWithPooling' object has no attribute 'norm'"), so
the embeddings come from `CLIPModel`'s forward (`image_embeds`, `text_embeds`, already normalised) and the formula is
applied here.

CLIP directional similarity (InstructPix2Pix, Brooks et al. 2023; the diffusers evaluation guide): how far an edit
moved the image in the direction its captions moved, cos(E_out - E_init, E_edit - E_source) on normalised embeddings.

    clip = load_clip("openai/clip-vit-large-patch14", torch.device("cpu"))
    scores = clip_scores(clip, images, prompts)               # one float per image
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdkit.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass(frozen=True)
class Clip:
    model: Any  # transformers.CLIPModel, in eval mode
    processor: Any  # transformers.CLIPProcessor
    device: torch.device
    name: str


def load_clip(ref: str, device: torch.device) -> Clip:
    """A CLIPModel and its CLIPProcessor from a hub id or a local folder, safetensors weights only."""
    from transformers import CLIPModel, CLIPProcessor

    from sdkit.weightfiles import quiet_libraries

    try:
        with quiet_libraries():
            model = CLIPModel.from_pretrained(ref, use_safetensors=True)
            processor = CLIPProcessor.from_pretrained(ref)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(
            f"could not load CLIP model {ref!r} ({first}): give --clip-model a local folder holding a CLIPModel and its "
            "processor (safetensors), or a hub id reachable now or already in the hub cache"
        ) from None
    return Clip(model.eval().to(device), processor, device, ref)


def embed_texts(clip: Clip, texts: Sequence[str]) -> torch.Tensor:
    """Normalised projected text embeddings (CLIP's 77-token limit: longer texts are truncated, as torchmetrics does)."""
    import torch

    tokens = clip.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(clip.device)
    with torch.inference_mode():
        out = clip.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        embeds = clip.model.text_projection(out.pooler_output)
    return torch.nn.functional.normalize(embeds.float(), dim=-1)


def embed_images(clip: Clip, images: Sequence[Image.Image]) -> torch.Tensor:
    """Normalised projected image embeddings, after the model's own preprocessing (resize, crop, normalise)."""
    import torch

    pixels = clip.processor.image_processor(images=list(images), return_tensors="pt").pixel_values.to(clip.device)
    with torch.inference_mode():
        out = clip.model.vision_model(pixel_values=pixels)
        embeds = clip.model.visual_projection(out.pooler_output)
    return torch.nn.functional.normalize(embeds.float(), dim=-1)


def embed_all(clip: Clip, images: Sequence[Image.Image] | Sequence[Any], batch_size: int,
              advance: Callable[[int], None] | None = None, load: Callable[[Any], Image.Image] | None = None) -> torch.Tensor:  # fmt: skip
    """Image embeddings in batches of `batch_size`; `load` turns each item into an image first (paths: read lazily)."""
    import torch

    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        parts.append(embed_images(clip, [load(item) for item in batch] if load else batch))
        if advance:
            advance(len(batch))
    return torch.cat(parts)


def scores_from_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> list[float]:
    """CLIP score of row i of each: 100 x max(cos, 0)."""
    cos = (image_embeds * text_embeds).sum(dim=-1)
    return (100 * cos.clamp(min=0)).tolist()


def clip_scores(clip: Clip, images: Sequence[Any], prompts: Sequence[str], batch_size: int = 32,
                advance: Callable[[int], None] | None = None, load: Callable[[Any], Image.Image] | None = None) -> list[float]:  # fmt: skip
    """The CLIP score of each image against its prompt (each distinct prompt is encoded once)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    distinct = list(dict.fromkeys(prompts))
    text = embed_texts(clip, distinct)
    rows = [distinct.index(p) for p in prompts]
    return scores_from_embeddings(embed_all(clip, images, batch_size, advance, load), text[rows])


def directional_similarity(init: torch.Tensor, output: torch.Tensor, source: torch.Tensor, edit: torch.Tensor) -> list[float]:
    """cos(output - init, edit - source), row by row, on normalised embeddings."""
    import torch

    return torch.nn.functional.cosine_similarity(output - init, edit - source, dim=-1).tolist()


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
