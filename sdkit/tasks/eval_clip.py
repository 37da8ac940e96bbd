"""CLIP score of a folder of images, and CLIP directional similarity of edits (sdkit.eval.clip has the definitions).

    sdkit eval clip-score outputs/run1                       # prompts from each PNG's recipe or A1111 infotext
    sdkit eval clip-score data/images --prompts data/metadata.jsonl --clip-model ./clip --json
    sdkit eval clip-directional edits.jsonl                  # {"init", "output", "source", "edit"} per line

Reports go beside the images (`clip-score.json` in the folder, `clip-directional.json` beside the pairs file) and on
stdout (a table, or the JSON with --json).
"""

from __future__ import annotations

from pathlib import Path

from sdkit import device
from sdkit.errors import UserError
from sdkit.eval.clip import clip_scores, directional_similarity, embed_all, embed_texts, load_clip, mean
from sdkit.eval.inputs import list_images, load_rgb, prompts_for, read_pairs
from sdkit.eval.report import Report, show, write_json
from sdkit.outputs import confine
from sdkit.progress import bar
from sdkit.schema.eval import ClipDirectionalRecipe, ClipScoreRecipe

DEFINITION = "100 x max(cos(E_image, E_text), 0) (Hessel et al. 2021; torchmetrics CLIPScore)"
DIRECTIONAL = "cos(E_output - E_init, E_edit - E_source) on normalised CLIP embeddings (InstructPix2Pix; diffusers' guide)"
SHOWN_PROMPTS = 20


def run_score(recipe: ClipScoreRecipe) -> Report:
    # 1. the images and their prompts, checked before any model loads
    images = list_images(recipe.images, "IMAGES")
    prompts = prompts_for(images, recipe.prompts)
    target = Path(recipe.images) / "clip-score.json"
    confine(target, "report")
    placement = device.resolve(recipe.device, "fp32")

    # 2. the CLIP model once, then every image in batches
    clip = load_clip(recipe.clip_model, placement.device)
    with bar("clip score", len(images)) as advance:
        scores = clip_scores(clip, images, prompts, recipe.batch_size, advance, load=load_rgb)

    # 3. the report: the mean, every image, every prompt's mean
    by_prompt: dict[str, list[float]] = {}
    for prompt, score in zip(prompts, scores, strict=True):
        by_prompt.setdefault(prompt, []).append(score)
    data = {
        "metric": "clip_score", "definition": DEFINITION, "clip_model": recipe.clip_model, "folder": str(recipe.images),
        "n": len(images), "mean": mean(scores),
        "images": [{"file": p.name, "prompt": q, "score": s} for p, q, s in zip(images, prompts, scores, strict=True)],
        "prompts": [{"prompt": q, "n": len(v), "mean": mean(v)} for q, v in by_prompt.items()],
    }  # fmt: skip
    path = write_json(target, data)
    rows = [(row["prompt"], row["n"], row["mean"]) for row in data["prompts"][:SHOWN_PROMPTS]]
    more = len(data["prompts"]) - SHOWN_PROMPTS
    footer = f"mean CLIP score {data['mean']:.2f} over {len(images)} images ({recipe.clip_model}); report: {path}"
    footer += f"; {more} more prompts there" if more > 0 else ""
    show(data, recipe.as_json, "CLIP score", ("prompt", "images", "mean"), rows, footer)
    return Report(data, [path])


def run_directional(recipe: ClipDirectionalRecipe) -> Report:
    # 1. the pairs, every image's file checked before any model loads
    pairs = read_pairs(recipe.pairs)
    missing = [path for pair in pairs for path in (pair.init, pair.output) if not path.is_file()]
    if missing:
        raise UserError(f"PAIRS {recipe.pairs} names {missing[0]}, which does not exist ({len(missing)} missing): fix the paths")
    target = Path(recipe.pairs).parent / "clip-directional.json"
    confine(target, "report")
    placement = device.resolve(recipe.device, "fp32")

    # 2. embeddings of both images and both captions of every pair
    clip = load_clip(recipe.clip_model, placement.device)
    with bar("clip directional", 2 * len(pairs)) as advance:
        init = embed_all(clip, [p.init for p in pairs], recipe.batch_size, advance, load=load_rgb)
        output = embed_all(clip, [p.output for p in pairs], recipe.batch_size, advance, load=load_rgb)
    source = embed_texts(clip, [p.source for p in pairs])
    edit = embed_texts(clip, [p.edit for p in pairs])
    similarity = directional_similarity(init, output, source, edit)

    # 3. the report
    data = {
        "metric": "clip_directional_similarity", "definition": DIRECTIONAL, "clip_model": recipe.clip_model,
        "pairs_file": str(recipe.pairs), "n": len(pairs), "mean": mean(similarity),
        "pairs": [{"init": str(p.init), "output": str(p.output), "source": p.source, "edit": p.edit, "similarity": s}
                  for p, s in zip(pairs, similarity, strict=True)],
    }  # fmt: skip
    path = write_json(target, data)
    rows = [(p.output.name, p.edit, s) for p, s in zip(pairs, similarity, strict=True)][:SHOWN_PROMPTS]
    footer = f"mean directional similarity {data['mean']:.4f} over {len(pairs)} edits ({recipe.clip_model}); report: {path}"
    show(data, recipe.as_json, "CLIP directional similarity", ("output", "edit caption", "similarity"), rows, footer)
    return Report(data, [path])
