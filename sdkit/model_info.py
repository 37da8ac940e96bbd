"""What `sdkit models` shows about each library file: its family, size, short hash and, for LoRAs, trigger words.

Families come from the file's header only (no tensor is read): checkpoints through `sdkit.families` (the same check
as loading), LoRAs from their metadata (kohya's `ss_base_model_version` / `ss_v2`, the SAI `modelspec.architecture`,
sdkit's `sdkit.base_model`) or else the width of their cross-attention layers, embeddings and ControlNets from their
widths. Trigger words: sdkit's `sdkit.trigger_word`, `modelspec.trigger_phrase`, A1111's `activation text` in a
`NAME.json` beside the file, and the most frequent tags of kohya's `ss_tag_frequency`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sdkit.errors import UserError
from sdkit.library import Entry
from sdkit.weightfiles import SAFETENSORS, weights_format

WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
MAX_SIDECAR = 1 << 20
TOP_TAGS = 5


@dataclass(frozen=True)
class Row:
    name: str
    family: str
    size: int
    short_hash: str
    triggers: str


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _header(path: Path):
    from sdkit.families import read_header

    return read_header(path) if weights_format(path) == SAFETENSORS else None


def _width_family(shapes, suffixes: tuple[str, ...], axis: int = -1) -> str | None:
    for key, shape in shapes.items():
        if key.endswith(suffixes) and len(shape) >= 2:
            width = shape[axis]
            return WIDTHS.get(width, f"cross-attention {width}")
    return None


def checkpoint_family(entry: Entry, memo: dict | None = None) -> str:
    if entry.path.is_dir():
        from sdkit.families import read_json

        name = str(read_json(entry.path / "model_index.json").get("_class_name", "?"))
        return ("SDXL" if "XL" in name else "SD") + " (diffusers folder)"
    header = _header(entry.path)
    if header is None:
        return "pickle (not read)"
    from sdkit.single_file import describe

    return describe(header, memo)


def lora_family(header) -> str:
    meta = header.metadata
    version = meta.get("ss_base_model_version", "") or meta.get("modelspec.architecture", "")
    if "xl" in version.lower():
        return "SDXL"
    if meta.get("ss_v2") == "True" or "v2" in version:
        return "SD 2.x"
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in header.shapes):
        return "SDXL"
    family = _width_family(header.shapes, ("attn2_to_k.lora_down.weight", "attn2.to_k.lora_A.weight",
                                            "attn2.to_k.lora.down.weight", "attn2.processor.to_k_lora.down.weight"))  # fmt: skip
    if family:
        return family
    return f"{meta['sdkit.base_model']} (sdkit)" if meta.get("sdkit.base_model") else "unknown"


def embedding_family(header) -> str:
    if {"clip_l", "clip_g"} <= set(header.shapes):
        return "SDXL"
    widths = {shape[-1] for shape in header.shapes.values() if shape}
    return WIDTHS.get(next(iter(widths)), f"width {next(iter(widths))}") if len(widths) == 1 else "unknown"


def triggers(entry: Entry, header) -> str:
    meta = header.metadata if header is not None else {}
    words = [meta[k] for k in ("sdkit.trigger_word", "modelspec.trigger_phrase") if meta.get(k)]
    sidecar = entry.path.with_suffix(".json")
    if sidecar.is_file() and sidecar.stat().st_size <= MAX_SIDECAR:
        try:
            text = json.loads(sidecar.read_text()).get("activation text")
        except (ValueError, UnicodeDecodeError, AttributeError):
            text = None
        if isinstance(text, str) and text.strip():
            words.append(text.strip())
    try:
        frequency = json.loads(meta.get("ss_tag_frequency") or "{}")
    except ValueError:
        frequency = {}
    counts: Counter[str] = Counter()
    for tags in frequency.values() if isinstance(frequency, dict) else ():
        if isinstance(tags, dict):
            counts.update({str(t).strip(): int(n) for t, n in tags.items() if isinstance(n, (int, float))})
    words += [tag for tag, _ in counts.most_common(TOP_TAGS)]
    return ", ".join(dict.fromkeys(w for w in words if w))


def row(entry: Entry, *, with_hash: bool = True, memo: dict | None = None) -> Row:
    """One listing row (`memo`: the families' expected shapes, shared by the rows of a listing)."""
    from sdkit.models import content_hash

    try:
        header = _header(entry.path) if entry.path.is_file() else None
    except (UserError, ValueError, OSError):
        header = None
    if entry.kind == "checkpoints":
        family = checkpoint_family(entry, memo)
    elif header is None:
        family = "folder" if entry.path.is_dir() else "pickle (not read)"
    elif entry.kind == "loras":
        family = lora_family(header)
    elif entry.kind == "embeddings":
        family = embedding_family(header)
    elif entry.kind == "controlnet":
        family = _width_family(header.shapes, ("attn2.to_k.weight",)) or "unknown"
    else:
        family = "VAE"
    short = content_hash(entry.path)[:10] if with_hash else ""
    words = triggers(entry, header) if entry.kind == "loras" else ""
    return Row(entry.name, family, _size(entry.path), short, words)


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
