"""Recipe fields from any generator's image: what `sdkit info`, `sdkit replay` and `sdkit generate --from-png` read.

    imported = import_image(path)          # .fields: generate-recipe fields; .ignored: what sdkit does not reproduce

An image's text is sdkit's own recipe chunk, else A1111/Forge/civitai infotext (PNG `parameters`, or the EXIF
UserComment of a JPEG/WEBP as civitai serves it; read by `sdkit.infotext.parse`), else a ComfyUI graph
(`sdkit.comfyui`). Models, LoRAs, embeddings and VAEs named there are found by a `resolver(kind, name, short_hash)`:
by default a path, else the model library's file of that name or short hash (`library_resolver`); what is missing is
an error naming its name and hash. Fields sdkit cannot reproduce are returned for one warning line. An image comes
from anyone: the output folder and pickle permission are never taken from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.infotext import MAX_TEXT, Infotext, extra_networks, parse, sampler_and_schedule

Resolver = Callable[[str, "str | None", "str | None"], "str | None"]
# fields the recipe takes; the rest are reported as not reproduced
UNDERSTOOD = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1", "Size-2", "Model hash", "Model",
              "Clip skip", "Denoising strength", "Lora hashes", "TI hashes", "Version", "Emphasis", "RNG"}


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
