"""A1111's prompt language on the embedded shapes model: long prompts in chunks against truncation, and weights.

    python -m bench a1111_prompts          (n = 200 prompts per condition; about 11 minutes of one CPU thread)

The shapes model's tokenizer allows 32 tokens (word-level vocabulary), so its chunk is 30 tokens where CLIP's is 75.
Two fillers of one full chunk each, saying nothing about colour, shape or background: KNOWN, words of the captions the
model was trained on ("a shape on a background ..."), and GENERIC, words its tokenizer has but its training captions
never used ("a simple flat picture ...").

* Long prompts: "FILLER BREAK a red circle on a blue background". Chunked (sdkit.prompts) the caption is the second
  chunk; encoded by diffusers' own `encode_prompt` the prompt is truncated to the filler. Both are scored with the
  `sdkit eval` scorer against the caption alone; "chance" is the uniform rate 1/7 x 1/4 x 1/6.
* Weights: "a C1 C2 circle on a B background" with two colours, unweighted and with (C1:1.6), (C2:1.6) or (C2:2): the
  share of images drawn in C1 and in C2. (The model draws C1 in 86 % of the unweighted images: it learned that the
  first colour word is the colour.)
* Exactness on this model: the largest difference between sdkit's and diffusers' embeddings of the plain captions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import HERE, Figure

FILLERS = {  # 30 tokens each: one chunk of the shapes model
    "known": " ".join(["a shape on a background"] * 6),
    "generic": "a simple flat picture of a thing in a plain style with high quality and sharp detailed art in the new "
               "drawing illustration render image view for the photo art",
}
STEPS, CFG, SEED, BATCH = 20, 5.0, 4321, 50


def run(n: int = 200, out: Path = HERE / "results") -> list[Figure]:
    import diffusers
    import numpy as np
    import torch
    import transformers

    from sdkit import prompts, schedulers
    from sdkit.data.shapes import COLOR_NAMES, sample_world
    from sdkit.models import load_pipeline, resolve_model

    diffusers.utils.logging.set_verbosity_error()  # the truncation warning of each "truncated" batch
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    started = time.perf_counter()
    pipe = load_pipeline(resolve_model("shapes"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = schedulers.build("DPM++ 2M", pipe.scheduler.config)
    for filler in FILLERS.values():
        assert len(pipe.tokenizer(filler, add_special_tokens=False).input_ids) == pipe.tokenizer.model_max_length - 2
    world = sample_world(np.random.default_rng(SEED), n, split="all")
    rng = np.random.default_rng(SEED + 1)
    second = [str(rng.choice([c for c in COLOR_NAMES if c not in (s.color, s.background)])) for s in world]

    pairs = list(zip(world, second, strict=True))
    conditions = {
        "caption": [s.text for s in world],
        **{f"{k} chunked": [f"{filler} BREAK {s.text}" for s in world] for k, filler in FILLERS.items()},
        **{f"{k} truncated": [f"{filler} {s.text}" for s in world] for k, filler in FILLERS.items()},
        "two colours": [f"a {s.color} {c2} {s.shape} on a {s.background} background" for s, c2 in pairs],
        "first at 1.6": [f"a ({s.color}:1.6) {c2} {s.shape} on a {s.background} background" for s, c2 in pairs],
        "second at 1.6": [f"a {s.color} ({c2}:1.6) {s.shape} on a {s.background} background" for s, c2 in pairs],
        "second at 2": [f"a {s.color} ({c2}:2) {s.shape} on a {s.background} background" for s, c2 in pairs],
    }
    detections = {name: generate(pipe, texts, truncate=name.endswith("truncated")) for name, texts in conditions.items()}
    seconds = time.perf_counter() - started

    from sdkit.eval.scorer import score_against

    def rate(name: str, key: str = "all") -> float:
        return 100 * float(np.mean([score_against(s.fields(), d)[key] for s, d in zip(world, detections[name], strict=True)]))

    def colour_share(name: str, colours: list[str]) -> float:
        return 100 * float(np.mean([d.color == c for d, c in zip(detections[name], colours, strict=True)]))

    first = [s.color for s in world]
    with torch.inference_mode():
        diff = max(float((prompts.encode(pipe, s.text, "")["prompt_embeds"] - pipe.encode_prompt(s.text, "cpu", 1, False)[0])
                         .abs().max()) for s in world[:50])  # fmt: skip
    caption, chance = rate("caption"), 100 / (7 * 4 * 6)
    shares = {name: (colour_share(name, first), colour_share(name, second)) for name in conditions if "colour" in name or " at " in name}
    detail = f"n={n}, {STEPS} steps, cfg {CFG}, DPM++ 2M, 1 CPU thread, {seconds:.0f} s"
    figures = [Figure("a1111_prompts", "caption alone (all)", caption, "%", "reference", None, detail)]
    for k in FILLERS:
        chunked, truncated = rate(f"{k} chunked"), rate(f"{k} truncated")
        figures += [
            Figure("a1111_prompts", f"{k} filler BREAK caption, chunked (all)", chunked, "%", "within 10 points of the caption",
                   chunked >= caption - 10, "colour {:.1f} %, shape {:.1f} %, background {:.1f} %".format(
                       *(rate(f"{k} chunked", a) for a in ("color", "shape", "background")))),
            Figure("a1111_prompts", f"{k} filler + caption, truncated (all)", truncated, "%", f"near chance ({chance:.1f} %)",
                   truncated <= 5 * chance, "colour {:.1f} %, shape {:.1f} %, background {:.1f} %".format(
                       *(rate(f"{k} truncated", a) for a in ("color", "shape", "background")))),
        ]
    figures.append(Figure("a1111_prompts", "max abs difference, sdkit vs diffusers embeddings", diff, "", "0 (bit-identical)",
                          diff == 0.0, f"{min(n, 50)} captions"))
    base_first, base_second = shares["two colours"]
    for name, (c1, c2) in shares.items():
        moved = None if name == "two colours" else c1 - base_first
        figures.append(Figure("a1111_prompts", f"'{name}': first colour", c1, "%",
                              "reference" if moved is None else "colour rate moves >= 10 points from unweighted",
                              None if moved is None else abs(moved) >= 10,
                              f"second colour {c2:.1f} % ({c2 - base_second:+.1f})" + ("" if moved is None else f", first {moved:+.1f}")))
    out = Path(out) / "a1111_prompts.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": n, "seconds": round(seconds), "rates": {k: rate(k) for k in conditions},
                               "colour_shares": shares, "max_embedding_diff": diff}, indent=2) + "\n")
    return figures


def generate(pipe, texts: list[str], *, truncate: bool) -> list:
    """Scorer detections of one image per prompt (seed SEED + i): embeddings from sdkit.prompts, or with `truncate`
    the prompt text given to diffusers, which cuts it at the tokenizer's limit."""
    import torch

    from sdkit import prompts
    from sdkit.eval.scorer import score_image

    found = []
    for start in range(0, len(texts), BATCH):
        batch = texts[start : start + BATCH]
        generators = [torch.Generator().manual_seed(SEED + start + i) for i in range(len(batch))]
        if truncate:
            args = {"prompt": batch}
        else:
            embeds = [prompts.encode(pipe, text, "") for text in batch]
            args = {k: torch.cat([e[k] for e in embeds]) for k in embeds[0]}
        with torch.inference_mode():
            images = pipe(**args, num_inference_steps=STEPS, guidance_scale=CFG, width=64, height=64, generator=generators).images
        found += [score_image(image) for image in images]
    return found
