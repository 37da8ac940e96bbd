"""A1111's prompt language on diffusers' text encoders: attention weights, BREAK, prompts of any length, clip skip.

    embeds = encode(pipe, "a (red:1.3) circle, [blurry] BREAK on a blue background", "ugly", clip_skip=1)
    pipe(**embeds, ...)    # prompt_embeds, negative_prompt_embeds (+ the pooled pair on SDXL)

The rules are A1111 1.10's (modules/prompt_parser.py and sd_hijack_clip.py, emphasis "Original"), re-implemented
here because no maintained library has A1111's maths (compel weights relative to the empty prompt, lerps
down-weighted words away and restores no mean; see README "Coming from A1111 / ComfyUI"):

* `(text)` x1.1, `((text))` x1.21, `[text]` /1.1, `(text:1.3)`, escapes `\\(` `\\)` `\\[` `\\]` `\\\\`, unbalanced brackets
  closed at the end; runs of equal weight merged (`parse_attention`).
* The prompt is tokenized fragment by fragment and cut into chunks of `model_max_length - 2` tokens (75 on CLIP; 30
  on the shapes model, whose tokenizer allows 32), each encoded alone between its start and end tokens and padded
  (end token, then the pad token after the first end token, as OpenCLIP pads), then concatenated. `BREAK` starts a
  new chunk; a chunk that fills up moves the words after its last comma to the next one when that comma is within
  the last 20 tokens (A1111's "Prompt word wrap length limit"); a multi-vector embedding is never split.
* Each chunk's encoder output is multiplied by its tokens' weights and rescaled to its original mean.
* The prompt and the negative prompt are padded to the same number of chunks with encoded empty chunks (A1111's
  "Pad prompt/negative prompt": diffusers batches both through the UNet, which needs equal lengths).
* SD 1.x: clip skip N reads the N-th layer from the end, through the final layer norm. SD 2.x and SDXL ignore clip
  skip, as A1111 does. SDXL: both encoders' penultimate layers, concatenated; the pooled embedding of the second
  encoder from the first chunk; an empty negative prompt is all zeros (A1111's and diffusers' rule).

Syntax = "plain" reads the prompt as literal text (A1111's emphasis "None"): no weights and no BREAK, still chunked.
Prompt editing `[from:to:when]`, alternation `[a|b]` and composable `AND` are refused with one line (`check`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sdkit.errors import UserError

BREAK = "BREAK"
COMMA_BACKTRACK = 20  # A1111's default "Prompt word wrap length limit" (opts.comma_padding_backtrack)
ROUND, SQUARE = 1.1, 1 / 1.1

_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
_EDIT_WHEN = re.compile(r":\s*[+-]?(\d+\.?\d*|\.\d+)\s*$")
_AND = re.compile(r"\bAND\b")


def parse_attention(text: str) -> list[tuple[str, float]]:
    """(text, weight) pairs by A1111's `parse_prompt_attention` rules; a BREAK is the pair ("BREAK", -1)."""
    parts: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in _TOKEN.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            parts.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(parts))
        elif piece == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif piece == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            for i, words in enumerate(_BREAK_SPLIT.split(piece)):
                if i:
                    parts.append([BREAK, -1.0])
                parts.append([words, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    merged: list[list[Any]] = []
    for part in parts or [["", 1.0]]:
        if merged and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return [(words, weight) for words, weight in merged]


def check(text: str, what: str = "prompt") -> None:
    """Refuse the A1111 syntax sdkit does not run, in one line: prompt editing, alternation and (prompt only) AND."""
    depth: list[list[str]] = []  # the direct content of each open [ ... ]
    escaped = False
    for char in text:
        if escaped:
            escaped = False
            if depth:
                depth[-1].append("_")
            continue
        if char == "\\":
            escaped = True
        elif char == "[":
            depth.append([])
        elif char == "]" and depth:
            inside = "".join(depth.pop())
            if "|" in inside:
                raise UserError(f"{what}: alternation [{inside}] is A1111 syntax sdkit does not run: write one of the words")
            if _EDIT_WHEN.search(inside):
                raise UserError(
                    f"{what}: prompt editing [{inside}] (switch words at a step) is A1111 syntax sdkit does not run: "
                    "write the words you want, or escape the brackets as \\[ \\]"
                )
        elif depth:
            depth[-1].append(char)
    if what == "prompt" and _AND.search(text):
        raise UserError("prompt: AND (composable diffusion) is A1111 syntax sdkit does not run: write 'and' in lower case")


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def units(tokenizer, ids: list[int]) -> list[list[int]]:
    """Token ids grouped so that a multi-vector textual-inversion token (diffusers writes `<t> <t>_1 <t>_2`) is one unit."""
    names = tokenizer.convert_ids_to_tokens(ids)
    out: list[list[int]] = []
    for i, (token_id, name) in enumerate(zip(ids, names, strict=True)):
        if out and i and re.fullmatch(re.escape(names[i - len(out[-1])]) + r"_\d+", name or ""):
            out[-1].append(token_id)
        else:
            out.append([token_id])
    return out


def chunks(tokenizer, parsed: list[tuple[str, float]], convert=None) -> list[Chunk]:
    """A1111's `tokenize_line`: the parsed prompt as chunks of `model_max_length - 2` token ids with weights (the start
    and end tokens are added by `encode`). `convert` rewrites each fragment first (diffusers' multi-vector tokens)."""
    size = tokenizer.model_max_length - 2
    comma = tokenizer.get_vocab().get(",</w>")
    done: list[Chunk] = []
    chunk, last_comma = Chunk(), -1

    def close() -> None:
        nonlocal chunk, last_comma
        done.append(chunk)
        chunk, last_comma = Chunk(), -1

    for text, weight in parsed:
        if text == BREAK and weight == -1:
            close()
            continue
        words = convert(text) if convert else text
        ids = tokenizer(words, truncation=False, add_special_tokens=False).input_ids
        for unit in units(tokenizer, ids):
            if unit == [comma]:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == size and last_comma != -1 and size - last_comma <= COMMA_BACKTRACK:
                moved = Chunk(chunk.tokens[last_comma + 1 :], chunk.weights[last_comma + 1 :])
                del chunk.tokens[last_comma + 1 :], chunk.weights[last_comma + 1 :]
                close()
                chunk = moved
            if len(chunk.tokens) == size or (len(unit) > 1 and len(chunk.tokens) + len(unit) > size):
                close()
            chunk.tokens += unit
            chunk.weights += [weight] * len(unit)
    if chunk.tokens or not done:
        close()
    return done


def token_ids(tokenizer, chunk: Chunk) -> list[int]:
    """start + tokens + end tokens up to the chunk size + end, then the pad token after the first end token."""
    size = tokenizer.model_max_length - 2
    ids = [tokenizer.bos_token_id, *chunk.tokens, *[tokenizer.eos_token_id] * (size - len(chunk.tokens) + 1)]
    first_end = ids.index(tokenizer.eos_token_id)
    return ids[: first_end + 1] + [tokenizer.pad_token_id] * (len(ids) - first_end - 1)


def emphasis(z, weights: list[float]):
    """A1111's "Original" emphasis: multiply each token's vector by its weight, then restore the chunk's mean."""
    import torch

    if all(w == 1.0 for w in weights):
        return z
    original = z.mean()
    z = z * torch.tensor([1.0, *weights, *[1.0] * (z.shape[1] - len(weights) - 1)], dtype=z.dtype, device=z.device)[None, :, None]
    return z * (original / z.mean())


@dataclass(frozen=True)
class Encoder:
    """One text encoder of a pipeline and the layer A1111 reads from it."""

    tokenizer: Any
    model: Any
    layer: int  # 0: the last layer with the final layer norm; k: hidden_states[-k] (clip skip k, through the norm on SD 1.x)
    norm: bool  # apply the final layer norm to hidden_states[-layer]
    pooled: bool = False  # take the pooled (projected) output of the first chunk


def encoders(pipe, clip_skip: int) -> list[Encoder]:
    """The text encoders of an SD 1.x / 2.x / SDXL pipeline with A1111's layer choice (SDXL's refiner: the second only)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        second = Encoder(pipe.tokenizer_2, pipe.text_encoder_2, 2, False, True)
        return [second] if pipe.text_encoder is None else [Encoder(pipe.tokenizer, pipe.text_encoder, 2, False), second]
    layers = pipe.text_encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise UserError(f"--clip-skip {clip_skip} is more than this text encoder's {layers} layers: use 1 to {layers}")
    skip = 0 if clip_skip <= 1 or clip_skip_ignored(pipe) else clip_skip
    return [Encoder(pipe.tokenizer, pipe.text_encoder, skip, True)]


def clip_skip_ignored(pipe) -> bool:
    """Whether A1111 (and so sdkit) ignores clip skip for this pipeline: SDXL, and SD 2.x (OpenCLIP's tokenizer pads
    with "!", not with the end token)."""
    return getattr(pipe, "text_encoder_2", None) is not None or pipe.tokenizer.pad_token_id != pipe.tokenizer.eos_token_id


def _encode_chunks(pipe, encoder: Encoder, parsed: list[tuple[str, float]], device):
    """(the chunk embeddings concatenated, the pooled embedding of the first chunk or None, the chunk count)."""
    import torch

    convert = (lambda t: pipe.maybe_convert_prompt(t, encoder.tokenizer)) if hasattr(pipe, "maybe_convert_prompt") else None
    zs, pooled = [], None
    for chunk in chunks(encoder.tokenizer, parsed, convert):
        ids = torch.tensor([token_ids(encoder.tokenizer, chunk)], device=device)
        out = encoder.model(ids, output_hidden_states=encoder.layer > 0)
        if encoder.layer == 0:
            z = out.last_hidden_state
        else:
            z = out.hidden_states[-encoder.layer]
            if encoder.norm:  # transformers 5's CLIPTextModel holds final_layer_norm itself (4's: in .text_model)
                z = getattr(encoder.model, "text_model", encoder.model).final_layer_norm(z)
        if encoder.pooled and pooled is None:
            pooled = out[0]
        zs.append(emphasis(z, chunk.weights))
    return zs, pooled


def _side(pipe, text: str, syntax: str, clip_skip: int, device) -> tuple[list, Any]:
    """The chunk embeddings of `text` (the encoders' outputs side by side) and the pooled embedding (SDXL, else None).
    Should the encoders cut it into different numbers of chunks (a textual-inversion token only the first one knows),
    the shorter is padded with encoded empty chunks."""
    import torch

    parsed = parse_attention(text) if syntax == "a1111" else [(text, 1.0)]
    per_encoder, pooled = [], None
    for encoder in encoders(pipe, clip_skip):
        zs, first_pooled = _encode_chunks(pipe, encoder, parsed, device)
        if len(per_encoder) and len(zs) != len(per_encoder[0]):
            longest = max(len(zs), len(per_encoder[0]))
            pad = [_encode_chunks(pipe, e, [("", 1.0)], device)[0][0] for e in encoders(pipe, clip_skip)]
            per_encoder[0] += [pad[0]] * (longest - len(per_encoder[0]))
            zs += [pad[1]] * (longest - len(zs))
        per_encoder.append(zs)
        pooled = first_pooled if first_pooled is not None else pooled
    return [torch.cat(list(chunk), dim=-1) for chunk in zip(*per_encoder, strict=True)], pooled


def encode(pipe, prompt: str, negative: str, *, syntax: str = "a1111", clip_skip: int = 1) -> dict[str, Any]:
    """The pipeline-call arguments for `prompt` and `negative`: prompt_embeds and negative_prompt_embeds (and on SDXL
    pooled_prompt_embeds and negative_pooled_prompt_embeds), in the text encoder's dtype on the execution device."""
    import torch

    if syntax == "a1111":
        check(prompt, "prompt")
        check(negative, "negative prompt")
    device = pipe._execution_device
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    with torch.inference_mode():
        cond, pooled = _side(pipe, prompt, syntax, clip_skip, device)
        zero_negative = sdxl and not negative and pipe.config.get("force_zeros_for_empty_prompt", False)
        if zero_negative:
            uncond, negative_pooled = [torch.zeros_like(z) for z in cond], torch.zeros_like(pooled)
        else:
            uncond, negative_pooled = _side(pipe, negative, syntax, clip_skip, device)
        if len(cond) != len(uncond):
            empty, _ = _side(pipe, "", syntax, clip_skip, device)
            longest = max(len(cond), len(uncond))
            cond, uncond = cond + empty * (longest - len(cond)), uncond + empty * (longest - len(uncond))
        dtype = (pipe.text_encoder_2 if sdxl else pipe.text_encoder).dtype
        out = {"prompt_embeds": torch.cat(cond, dim=1).to(dtype), "negative_prompt_embeds": torch.cat(uncond, dim=1).to(dtype)}
        if sdxl:
            out.update(pooled_prompt_embeds=pooled.to(dtype), negative_pooled_prompt_embeds=negative_pooled.to(dtype))
    return out


def count_chunks(tokenizer, text: str, syntax: str = "a1111") -> int:
    """How many chunks `text` takes (for messages and tests)."""
    return len(chunks(tokenizer, parse_attention(text) if syntax == "a1111" else [(text, 1.0)]))
