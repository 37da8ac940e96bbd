"""A1111's infotext (the `parameters` text of an image), written and read as A1111 1.10 writes and reads it.

Writing (`parameters`): the prompt with a `<lora:name:weight>` tag per LoRA, a `Negative prompt:` line, then
`Key: value` pairs in A1111's order, each value through A1111's `quote()` (JSON quotes when it holds `,` `:` or a line
break): Steps, Sampler, Schedule type (the one that really ran, so that A1111 never falls back to its "Automatic"),
CFG scale, Seed, Size, Model hash, Model, VAE hash, VAE, Denoising strength, Clip skip, RNG: CPU (sdkit draws noise
on the CPU, as A1111 does with that setting), ControlNet units as sd-webui-controlnet writes them, Lora hashes, TI
hashes, Emphasis, Version.

Reading (`parse`, then `recipe_fields`): A1111's `parse_generation_parameters` rules (the last line holds the
parameters when it has at least 3; `Negative prompt:` starts the negative prompt; quoted values are JSON; `WxH`
values become Key-1 / Key-2; a missing Schedule type is Automatic, a missing Clip skip is 1), its
`get_sampler_and_scheduler` (a schedule named at the end of the sampler wins), and its extra-network tags
(`<lora:name:te[:unet]>`). Models, LoRAs and embeddings are found by a `resolver(kind, name, short_hash)`; what is
missing is an error naming its name and hash. Fields sdkit cannot reproduce are returned for one warning line.
The parameter line is scanned in linear time: A1111's own regex is quadratic on a long line without a colon, and the
image comes from anyone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdkit.errors import UserError

Resolver = Callable[[str, "str | None", "str | None"], "str | None"]
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra-network tags: <lora:name:0.8>, <hypernet:x:1>
SIZE = re.compile(r"^(\d+)x(\d+)$")
MAX_TEXT = 2**20  # the most infotext read (Pillow's own limit on a PNG text chunk)
# fields the recipe takes; the rest are reported as not reproduced
UNDERSTOOD = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1", "Size-2", "Model hash", "Model",
              "Clip skip", "Denoising strength", "Lora hashes", "TI hashes", "Version", "Emphasis", "RNG"}
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


def _number(fields: Mapping[str, str], key: str, kind: type, source: str) -> Any:
    try:
        return kind(fields[key].strip())
    except ValueError:
        raise UserError(f"{source}: {key} {fields[key]!r} is not a number: not an infotext A1111 wrote") from None


def _hash_list(text: str | None) -> dict[str, str]:
    pairs = [item.split(":", 1) for item in (text or "").split(",") if ":" in item]
    return {name.strip(): value.strip() for name, value in pairs}


def find(resolver: Resolver, kind: str, name: str | None, short_hash: str | None, source: str) -> str:
    found = resolver(kind, name, short_hash)
    if found is None:
        what = " ".join(x for x in (repr(name) if name else "", f"hash {short_hash}" if short_hash else "") if x)
        raise UserError(
            f"{source}: {kind} {what} was not found: put the file there under that name or pass it on the command line"
        )
    return found


@dataclass
class Imported:
    """Recipe fields read from an image, and what in it sdkit does not reproduce."""

    fields: dict[str, Any]
    ignored: list[str] = field(default_factory=list)
    source: str = "A1111 infotext"


def recipe_fields(info: Infotext, resolver: Resolver, source: str, skip: frozenset[str] = frozenset()) -> Imported:
    """Generate-recipe fields for an A1111 infotext. `skip`: fields the caller sets itself (not resolved here)."""
    f = info.fields
    prompt, tags = extra_networks(info.prompt)
    out: dict[str, Any] = {"prompt": prompt.strip(), "negative": info.negative}
    ignored = sorted(k for k in f if k not in UNDERSTOOD and not k.startswith("Hires") and k not in ("VAE", "VAE hash"))
    hires = sorted(k for k in f if k.startswith("Hires") and f[k] not in ("0", "", "Use same sampler", "Use same scheduler"))
    for key, name, kind in (("Steps", "steps", int), ("CFG scale", "cfg", float), ("Seed", "seed", int),
                            ("Size-1", "width", int), ("Size-2", "height", int), ("Clip skip", "clip_skip", int)):
        if key in f:
            out[name] = _number(f, key, kind, source)
    if "Denoising strength" in f:
        if hires:
            hires = sorted([*hires, "Denoising strength"])
        else:
            out["strength"] = _number(f, "Denoising strength", float, source)
    out["scheduler"], schedule = sampler_and_schedule(f.get("Sampler"), f.get("Schedule type"))
    out["schedule_type"] = schedule.lower()
    if "model" not in skip and (f.get("Model") or f.get("Model hash")):
        out["model"] = find(resolver, "model", f.get("Model"), f.get("Model hash"), source)
    if f.get("Emphasis") == "None":
        out["prompt_syntax"] = "plain"
    elif f.get("Emphasis", "Original") != "Original":
        ignored.append(f"Emphasis {f['Emphasis']}")
    if f.get("RNG", "GPU") != "CPU":
        ignored.append(f"RNG {f.get('RNG', 'GPU')} (sdkit draws noise on the CPU: same seed, other noise)")
    lora_hashes, loras = _hash_list(f.get("Lora hashes")), []
    for kind, args in tags:
        if kind not in ("lora", "lyco"):
            ignored.append(f"<{kind}:{':'.join(args)}>")
            continue
        weights = [a for a in args[1:] if "=" not in a]
        if len(weights) > 1 and weights[1] != weights[0] or any("=" in a for a in args[1:]):
            ignored.append(f"<{kind}:{':'.join(args)}> beyond one weight")
        try:
            weight = float(weights[0]) if weights else 1.0
        except ValueError:
            raise UserError(f"{source}: the LoRA tag <{kind}:{':'.join(args)}> has no number for its weight") from None
        if "lora" not in skip:
            loras.append({"path": find(resolver, "lora", args[0], lora_hashes.get(args[0]), source), "weight": weight})
    if "lora" not in skip and loras:
        out["lora"] = loras
    embeddings = [{"path": find(resolver, "embedding", name, h, source), "token": name}
                  for name, h in _hash_list(f.get("TI hashes")).items()] if "embedding" not in skip else []
    if embeddings:
        out["embedding"] = embeddings
    vae_fields = [k for k in ("VAE", "VAE hash") if k in f]
    if vae_fields and _recipe_has("vae") and "vae" not in skip:
        out["vae"] = find(resolver, "vae", f.get("VAE"), f.get("VAE hash"), source)
    elif vae_fields:
        ignored += vae_fields
    return Imported(out, ignored + [f"Hires fix ({', '.join(hires)})"] * bool(hires))


def _recipe_has(name: str) -> bool:
    from sdkit.schema.generate import GenerateRecipe

    return name in GenerateRecipe.model_fields


LIBRARY_KINDS = {"model": "checkpoints", "lora": "loras", "embedding": "embeddings", "vae": "vae"}


def library_resolver(models_dirs: Any = None) -> Resolver:
    """Finds what an image names: an existing path (for LoRAs, embeddings and VAEs also with `.safetensors` added),
    else the model library's file of that name and/or short hash (`sdkit.library.find`, in `models_dirs` and the
    configured roots), else for a model an alias or a hub id."""

    def resolve(kind: str, name: str | None, short_hash: str | None) -> str | None:
        from sdkit import library
        from sdkit.models import ALIASES, HUB_ID

        for candidate in ((name, f"{name}.safetensors") if kind != "model" else (name,)) if name else ():
            if Path(candidate).expanduser().exists():
                return str(Path(candidate).expanduser())
        found = library.find(LIBRARY_KINDS[kind], name, short_hash, explicit=models_dirs)
        if found is not None:
            return str(found)
        if kind == "model" and name and (name.strip().lower() in ALIASES or HUB_ID.match(name)):
            return name
        return None

    return resolve


def default_resolver(kind: str, name: str | None, short_hash: str | None) -> str | None:
    """`library_resolver()` over the configured library roots."""
    return library_resolver()(kind, name, short_hash)


# --- images ----------------------------------------------------------------------------------------------------

USER_COMMENT, EXIF_IFD = 0x9286, 0x8769
_CHARSETS = {b"ASCII\0\0\0": "ascii", b"JIS\0\0\0\0\0": "shift_jis"}


def exif_comment(data: bytes) -> str:
    """EXIF UserComment bytes as text: an 8-byte charset prefix, then ASCII, JIS or UTF-16 (A1111 writes big-endian
    through piexif; other tools little-endian: the byte order with more zero high bytes wins), else UTF-8."""
    prefix, body = data[:8], data[8:]
    if prefix == b"UNICODE\0":
        big = body[0::2].count(0) >= body[1::2].count(0)
        return body.decode("utf-16-be" if big else "utf-16-le", errors="replace").rstrip("\0")
    if prefix in _CHARSETS:
        return body.decode(_CHARSETS[prefix], errors="replace").rstrip("\0")
    return data.decode("utf-8", errors="replace").rstrip("\0")


def image_text(path: Path) -> dict[str, str]:
    """The generation text of an image: its PNG text chunks (sdkit, parameters, ComfyUI's prompt and workflow), or
    for JPEG/WEBP its EXIF UserComment as `parameters` (how A1111 and civitai store it). Decodes no pixels."""
    from sdkit.images import open_header
    from sdkit.outputs import read_text_chunks

    chunks = read_text_chunks(path)
    if any(k in chunks for k in ("sdkit", "parameters", "prompt", "workflow")):
        return chunks
    try:
        with open_header(path, str(path)) as img:
            comment = img.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except (OSError, ValueError, SyntaxError):
        comment = None
    if isinstance(comment, bytes) and 0 < len(comment) <= MAX_TEXT:
        return {**chunks, "parameters": exif_comment(comment)}
    return chunks


SDKIT_ONLY = ("out", "allow_pickle")  # never taken from an image (an image may come from anyone)


def import_image(path: Path, resolver: Resolver = default_resolver, skip: frozenset[str] = frozenset()) -> Imported:
    """Generate-recipe fields from any generator's image: sdkit's own recipe chunk, else A1111/Forge/civitai infotext
    (PNG `parameters` or EXIF UserComment), else a ComfyUI graph. Never the output folder or pickle permission."""
    from sdkit import comfyui
    from sdkit.outputs import read_recipe

    chunks = image_text(path)
    if "sdkit" in chunks:
        record = read_recipe(path)
        if record.get("task") != "generate":
            raise UserError(f"{path} was made by task {record.get('task')!r}: only generate recipes can be read from images")
        return Imported({k: v for k, v in record["recipe"].items() if k not in SDKIT_ONLY}, [], "sdkit recipe")
    if "parameters" in chunks:
        return recipe_fields(parse(chunks["parameters"]), resolver, f"{path} (A1111 infotext)", skip)
    if "prompt" in chunks or "workflow" in chunks:
        return comfyui.recipe_fields(chunks.get("prompt"), chunks.get("workflow"), resolver, f"{path} (ComfyUI graph)", skip)
    raise UserError(
        f"{path} has no generation metadata (no sdkit recipe, A1111 parameters, EXIF UserComment or ComfyUI graph): "
        "was it re-saved by an editor?"
    )
