"""A1111's infotext (the `parameters` text of an image), written and read as A1111 1.10 writes and reads it.

Writing (`parameters`): the prompt with a `<lora:name:weight>` tag per LoRA, a `Negative prompt:` line, then
`Key: value` pairs in A1111's order, each value through A1111's `quote()` (JSON quotes when it holds `,` `:` or a line
break): Steps, Sampler, Schedule type (the one that really ran, so that A1111 never falls back to its "Automatic"),
CFG scale, Seed, Size, Model hash, Model, VAE hash, VAE, Denoising strength, Clip skip, RNG: CPU (sdkit draws noise
on the CPU, as A1111 does with that setting), ControlNet units as sd-webui-controlnet writes them, Lora hashes, TI
hashes, Emphasis, Version.

Reading (`parse`; `sdkit.image_import` turns the result into recipe fields): A1111's `parse_generation_parameters` rules (the last line holds the
parameters when it has at least 3; `Negative prompt:` starts the negative prompt; quoted values are JSON; `WxH`
values become Key-1 / Key-2; a missing Schedule type is Automatic, a missing Clip skip is 1), its
`get_sampler_and_scheduler` (a schedule named at the end of the sampler wins), and its extra-network tags
(`<lora:name:te[:unet]>`). The parameter line is scanned in linear time: A1111's own regex is quadratic on a long line without a colon, and the
image comes from anyone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdkit.errors import UserError

EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra-network tags: <lora:name:0.8>, <hypernet:x:1>
SIZE = re.compile(r"^(\d+)x(\d+)$")
MAX_TEXT = 2**20  # the most infotext read (Pillow's own limit on a PNG text chunk)
CONTROL_MODULES = {"canny": "canny", "openpose": "openpose", "depth": "depth_midas", "seg": "seg_ofade20k",
                   "normal": "normal_bae", "mlsd": "mlsd", "hed": "softedge_hed", "scribble": "scribble_pidinet",
                   "lineart": "lineart_realistic", "shuffle": "shuffle"}


# --- writing ---------------------------------------------------------------------------------------------------


def quote(value: Any) -> str:
    """A1111's `quote()`: the value as is, or as a JSON string when it holds `,`, `:` or a line break."""
    text = str(value)
    return text if not any(c in text for c in ",:\n") else json.dumps(text, ensure_ascii=False)


def format_infotext(prompt: str, negative: str, fields: Mapping[str, Any]) -> str:
    """Prompt, `Negative prompt:` line (when there is one), then the fields that are not None."""
    params = ", ".join(f"{k}: {quote(v)}" for k, v in fields.items() if v is not None)
    return f"{prompt}{f'{chr(10)}Negative prompt: {negative}' if negative else ''}\n{params}".strip()


def lora_tags(prompt: str, loras: list[Any]) -> str:
    """The prompt with a `<lora:stem:weight>` tag for each LoRA that has none there yet (A1111 keeps them in the text)."""
    tags = [f"<lora:{Path(lora.path).stem}:{lora.weight:g}>" for lora in loras]
    missing = [t for t in tags if t.split(":")[1] not in {m.group(2).split(":")[0] for m in EXTRA_NETWORK.finditer(prompt)}]
    return " ".join([prompt, *missing]) if missing else prompt


def _hashes(pairs: list[tuple[str, str]]) -> str | None:
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {h}" for name, h in pairs) or None


def embedding_token(emb: Any) -> str:
    """The token an embedding binds: the one given, else a diffusers file's single key, else the file's name."""
    if emb.token:
        return emb.token
    try:
        from safetensors import safe_open

        with safe_open(str(emb.path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # not safetensors (a pickle, with --allow-pickle): its name
        keys = []
    return keys[0] if len(keys) == 1 and keys[0] not in ("emb_params", "string_to_param") else Path(emb.path).stem


def legacy_hash(path: Path) -> str | None:
    """A1111's old 8-character model hash (64 KiB from offset 1 MiB), which sd-webui-controlnet shows beside names."""
    import hashlib

    try:
        with open(path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except OSError:
        return None


def controlnet_unit(control: Any, location: str) -> str:
    """One unit as sd-webui-controlnet writes it: `Module: canny, Model: name [hash], Weight: 1.0, ...`."""
    folder = Path(location)
    weights = next(iter(sorted(folder.glob("*.safetensors"))), None) if folder.is_dir() else None
    short = legacy_hash(weights) if weights else None
    name = folder.name if folder.is_dir() else location.split("/")[-1]
    module = "none" if control.preprocessed else CONTROL_MODULES.get(control.type, control.type)
    fields = {"Module": module, "Model": f"{name} [{short}]" if short else name, "Weight": control.scale,
              "Resize Mode": "Just Resize", "Guidance Start": control.start, "Guidance End": control.end,
              "Pixel Perfect": False, "Control Mode": "Balanced"}
    return ", ".join(f"{k}: {v}" for k, v in fields.items())


def lora_hash(path: Path) -> str:
    """A1111's short LoRA hash: the file's `sshs_model_hash`, else the sha256 of its tensor bytes (the "addnet" hash,
    AutoV3), 12 characters; a pickled file's whole-file sha256."""
    from sdkit.lora_io import read_metadata
    from sdkit.models import content_hash
    from sdkit.weightfiles import SAFETENSORS, weights_format

    if weights_format(path) != SAFETENSORS:
        return content_hash(path)[:12]
    return (read_metadata(path).get("sshs_model_hash") or content_hash(path, "addnet"))[:12]


def parameters(recipe: Any, model: Any, size: tuple[int, int], schedule: str, controls: list[str] | None = None,
               refs: Any = None, extra: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """The `parameters` text of one image made by `recipe` (seed and size resolved) with `model` (a ModelRef);
    `refs` (sdkit.adapter_refs.Refs): the LoRAs (with the prompt's tags), embeddings and VAE the run resolved;
    `extra`: more fields (the refiner's), written where A1111 writes its extra generation parameters."""
    from sdkit import schedulers
    from sdkit.models import content_hash
    from sdkit.version import __version__

    loras = list(refs.loras) if refs is not None else list(recipe.lora)
    embeddings = list(refs.embeddings) if refs is not None else list(recipe.embedding)
    vae = refs.vae if refs is not None else None
    used = f"{recipe.prompt} {recipe.negative}"
    tokens = [(embedding_token(emb), emb.path) for emb in embeddings]
    fields: dict[str, Any] = {
        "Steps": recipe.steps,
        "Sampler": schedulers.resolve(recipe.scheduler, recipe.schedule_type).name,
        "Schedule type": schedule,
        "CFG scale": recipe.cfg,
        "Seed": recipe.seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model hash": model.sha256[:10] if model.sha256 else None,
        "Model": model.name,
        "VAE hash": vae.sha256[:10] if vae is not None and vae.sha256 else None,
        "VAE": vae.name if vae is not None else None,
        "Denoising strength": recipe.strength if recipe.mode != "txt2img" else None,
        "Clip skip": recipe.clip_skip if recipe.clip_skip > 1 else None,
        "RNG": "CPU",
        **{f"ControlNet {i}": unit for i, unit in enumerate(controls or [])},
        **(extra or {}),
        "Lora hashes": _hashes([(Path(lo.path).stem, lora_hash(Path(lo.path))) for lo in loras]),
        "TI hashes": _hashes([(t, content_hash(Path(p))[:12]) for t, p in tokens if t.lower() in used.lower()]),
        "Emphasis": "None" if recipe.prompt_syntax == "plain" and any(c in used for c in "([") else None,
        "Version": f"sdkit {__version__}",
    }
    return format_infotext(lora_tags(recipe.prompt, list(recipe.lora)), recipe.negative, fields)


# --- reading ---------------------------------------------------------------------------------------------------


def _key_char(c: str) -> bool:
    return c.isalnum() or c in "_ -/"


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return value if isinstance(value, str) else text


def params(line: str) -> list[tuple[str, str]]:
    """What A1111's `re_param.findall(line)` finds (`\\s*(\\w[\\w \\-/]+):\\s*("(?:\\\\.|[^\\\\"])+"|[^,]*)(?:,|$)`),
    in one pass: a key is a word character and at least one more of word, space, '-' or '/', right before a ':'."""
    n, found, i = len(line), [], 0
    run_end = [n] * (n + 1)  # run_end[i]: where the run of key characters starting at i ends
    for j in range(n - 1, -1, -1):
        run_end[j] = run_end[j + 1] if _key_char(line[j]) else j
    while i < n:
        j = i
        while j < n and line[j].isspace():
            j += 1
        k = run_end[j] if j < n and _word_char(line[j]) else j
        if k - j < 2 or k >= n or line[k] != ":":
            i += 1
            continue
        v = k + 1
        while v < n and line[v].isspace():
            v += 1
        end = _closing_quote(line, v) if v < n and line[v] == '"' else None
        if end is not None and (end + 1 == n or line[end + 1] == ","):
            found.append((line[j:k], line[v : end + 1]))
            i = end + 2
            continue
        comma = line.find(",", v)
        comma = n if comma < 0 else comma
        found.append((line[j:k], line[v:comma]))
        i = comma + 1
    return found


def _closing_quote(line: str, start: int) -> int | None:
    """Index of the quote closing a JSON-like string opened at `start` (at least one character inside), or None."""
    i = start + 1
    while i < len(line):
        if line[i] == "\\":
            if i + 1 >= len(line):
                return None
            i += 2
        elif line[i] == '"':
            return i if i > start + 1 else None
        else:
            i += 1
    return None


@dataclass
class Infotext:
    prompt: str
    negative: str
    fields: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> Infotext:
    """A1111's `parse_generation_parameters` (the parts that decide a recipe)."""
    if len(text) > MAX_TEXT:
        raise UserError(f"the infotext is {len(text):,} characters, more than the limit of {MAX_TEXT:,}: not one A1111 wrote")
    *lines, last = text.strip().split("\n")
    if len(params(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        (negative if in_negative else prompt).append(line)
    fields: dict[str, str] = {}
    for key, value in params(last):
        value = _unquote(value) if value[:1] == '"' and value[-1:] == '"' else value
        size = SIZE.match(value)
        if size:
            fields[f"{key}-1"], fields[f"{key}-2"] = size.groups()
        else:
            fields[key] = value
    fields.setdefault("Clip skip", "1")
    fields.setdefault("Schedule type", "Automatic")
    return Infotext("\n".join(prompt), "\n".join(negative), fields)


def sampler_and_schedule(sampler: str | None, schedule: str | None) -> tuple[str, str]:
    """A1111's `get_sampler_and_scheduler` (a schedule named at the end of the sampler's name wins; a missing sampler
    is DPM++ 2M), except that names sdkit does not know are errors, not a silent fallback."""
    from sdkit import schedulers

    by_name = schedulers.resolve(sampler or "DPM++ 2M", "automatic")
    choice = by_name if by_name.schedule != "Automatic" else schedulers.resolve(sampler or "DPM++ 2M", schedule)
    return choice.name, choice.schedule


def extra_networks(prompt: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """The prompt without A1111's extra-network tags, and the tags as (type, arguments)."""
    found = [(m.group(1), m.group(2).split(":")) for m in EXTRA_NETWORK.finditer(prompt)]
    return EXTRA_NETWORK.sub("", prompt), found
