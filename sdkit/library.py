"""The model library: folders of checkpoints, LoRAs, embeddings, VAEs and ControlNets, found by name or short hash.

Where (the first one set wins): `--models-dir DIR` (repeatable), `$SDKIT_MODELS` (folders separated by `:`), the
`models_dir:` entry (a folder or a list) of `$SDKIT_CONFIG` / `~/.config/sdkit/config.yaml`. Each folder is read,
never written, in one of three layouts, detected from what is inside:

    sdkit / ComfyUI's models/   checkpoints/  loras/       embeddings/         vae/        controlnet/
    ComfyUI install             models/checkpoints, models/loras, models/embeddings, models/vae, models/controlnet
    A1111 install               models/Stable-diffusion, models/Lora (+ models/LyCORIS), embeddings/, models/VAE,
                                models/ControlNet   (A1111's models/ folder itself works too)

Subfolders are searched too. A name is looked up in this order (`find`): the path relative to the kind's folder with
or without its extension (`sub/name`, `sub/name.safetensors`), the file name, the file stem; the same again ignoring
case; then a short hash: a prefix (8+ hex digits) of the file's sha256 (A1111's "Model hash" / AutoV2 is 10), or, for a
LoRA, of the sha256 of its tensor bytes (A1111's "Lora hashes", civitai's AutoV3) or its `sshs_model_hash`. Two files
that match one name are an error listing both. Hashes are kept in sdkit's hash cache (`sdkit.models.content_hash`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdkit.errors import UserError

KINDS = ("checkpoints", "loras", "embeddings", "vae", "controlnet")
MODELS_ENV = "SDKIT_MODELS"
CONFIG_ENV = "SDKIT_CONFIG"
MAX_CONFIG = 1 << 16
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# layout -> kind -> folders under the root
LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "sdkit": {kind: (kind,) for kind in KINDS},
    "comfyui": {kind: (f"models/{kind}",) for kind in KINDS},
    "a1111": {"checkpoints": ("models/Stable-diffusion",), "loras": ("models/Lora", "models/LyCORIS"),
              "embeddings": ("embeddings",), "vae": ("models/VAE",), "controlnet": ("models/ControlNet",)},
    "a1111-models": {"checkpoints": ("Stable-diffusion",), "loras": ("Lora", "LyCORIS"), "embeddings": ("../embeddings",),
                     "vae": ("VAE",), "controlnet": ("ControlNet",)},
}  # fmt: skip
HEX = re.compile(r"^[0-9a-fA-F]{8,64}$")


@dataclass(frozen=True)
class Root:
    path: Path
    layout: str

    def folders(self, kind: str) -> list[Path]:
        return [(self.path / sub).resolve() for sub in LAYOUTS[self.layout][kind] if (self.path / sub).is_dir()]


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path  # a file, or a diffusers folder
    rel: str  # relative to the kind's folder, posix, with its extension

    @property
    def stem(self) -> str:
        return Path(self.rel).stem if self.path.is_file() else Path(self.rel).name

    @property
    def name(self) -> str:
        """The relative path without the extension: A1111's name for it."""
        return self.rel.removesuffix(self.path.suffix) if self.path.is_file() else self.rel


def detect_layout(root: Path) -> str:
    if (root / "models" / "Stable-diffusion").is_dir():
        return "a1111"
    if (root / "Stable-diffusion").is_dir():
        return "a1111-models"
    if (root / "models" / "checkpoints").is_dir() or (root / "models" / "loras").is_dir():
        return "comfyui"
    return "sdkit"


def _config_dirs() -> list[str]:
    import yaml

    path = Path(os.environ.get(CONFIG_ENV) or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "sdkit" / "config.yaml")
    if not path.is_file():
        return []
    if path.stat().st_size > MAX_CONFIG:
        raise UserError(f"{path} is over 64 KiB: sdkit's config file holds a few settings")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]}): fix it") from None
    if not isinstance(data, dict) or set(data) - {"models_dir"}:
        raise UserError(f"{path}: the only setting is models_dir (a folder or a list of folders)")
    value = data.get("models_dir") or []
    return [str(v) for v in ([value] if isinstance(value, str) else value)]


def roots(explicit: Sequence[Path | str] | None = None) -> list[Root]:
    """The library folders in force (see the module docstring), each with its layout."""
    if explicit:
        folders, source = [str(p) for p in explicit], "--models-dir"
    elif os.environ.get(MODELS_ENV):
        folders, source = [p for p in os.environ[MODELS_ENV].split(os.pathsep) if p], f"${MODELS_ENV}"
    else:
        folders, source = _config_dirs(), "models_dir in the config file"
    out = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UserError(f"{source} {folder}: no such folder: give a folder of models (checkpoints/, loras/, ...), "
                            "or an A1111 or ComfyUI installation")  # fmt: skip
        out.append(Root(path.resolve(), detect_layout(path)))
    return out


def _is_model_dir(path: Path, kind: str) -> bool:
    return (path / "model_index.json").is_file() if kind == "checkpoints" else (path / "config.json").is_file()


def entries(kind: str, explicit: Sequence[Path | str] | None = None) -> Iterator[Entry]:
    """Every model of a kind in the library, in folder order, then by path."""
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    for root in roots(explicit):
        for folder in root.folders(kind):
            found = []
            for here, dirs, files in os.walk(folder):
                base = Path(here)
                for d in list(dirs):
                    if d.startswith(".") or _is_model_dir(base / d, kind):
                        dirs.remove(d)
                        if not d.startswith("."):
                            found.append(base / d)
                found += [base / f for f in files if not f.startswith(".") and f.lower().endswith(WEIGHT_SUFFIXES)]
            for path in sorted(found):
                yield Entry(kind, path, path.relative_to(folder).as_posix())


def _by_name(candidates: list[Entry], name: str) -> list[Entry]:
    name = name.replace("\\", "/")
    for fold in (str, str.lower):
        for field in ("rel", "name"):
            hits = [e for e in candidates if fold(getattr(e, field)) == fold(name)]
            if hits:
                return hits
        for field in ("file_name", "stem"):
            hits = [e for e in candidates if fold(e.path.name if field == "file_name" else e.stem) == fold(name)]
            if hits:
                return hits
    return []


def _hashes(entry: Entry) -> list[str]:
    from sdkit.lora_io import read_metadata
    from sdkit.models import content_hash
    from sdkit.weightfiles import SAFETENSORS, weights_format

    digests = [content_hash(entry.path)]
    if entry.kind == "loras" and entry.path.is_file() and weights_format(entry.path) == SAFETENSORS:
        digests += [content_hash(entry.path, "addnet"), read_metadata(entry.path).get("sshs_model_hash", "")]
    return [d.lower() for d in digests if d]


def _by_hash(candidates: list[Entry], short_hash: str) -> list[Entry]:
    prefix = short_hash.lower()
    return [e for e in candidates if any(d.startswith(prefix) for d in _hashes(e))]


def find(kind: str, name: str | None = None, short_hash: str | None = None,
         explicit: Sequence[Path | str] | None = None) -> Path | None:  # fmt: skip
    """The one library file (or folder) of `kind` with this name (as the module docstring orders the lookup) and/or
    short hash; None when nothing matches; UserError (exit 2) listing the matches when several do."""
    candidates = list(entries(kind, explicit))
    if name and short_hash:  # both (an infotext): the named file if its hash agrees, else the file with that hash
        named = _by_name(candidates, name)
        hits = _by_hash(named, short_hash) or _by_hash(candidates, short_hash) or named
    elif name:
        hits = _by_name(candidates, name) or (_by_hash(candidates, name) if HEX.match(name) else [])
    else:
        hits = _by_hash(candidates, short_hash) if short_hash else []
    if len(hits) > 1:
        listed = ", ".join(str(e.path) for e in hits[:6])
        raise UserError(f"{name or short_hash!r} matches {len(hits)} {kind}: {listed}: give the path, or a longer name "
                        "(sub/name, name.safetensors) or hash")  # fmt: skip
    return hits[0].path if hits else None


def where_looked(kind: str, explicit: Sequence[Path | str] | None = None) -> str:
    """Where a name of `kind` was looked up, for a not-found message."""
    folders = [str(f) for r in roots(explicit) for f in r.folders(kind)]
    if folders:
        return f"not in the model library ({', '.join(folders)})"
    return "and no model library is set (--models-dir DIR, $SDKIT_MODELS, or models_dir in ~/.config/sdkit/config.yaml)"


def find_or_fail(kind: str, ref: str, explicit: Sequence[Path | str] | None = None, *, required: bool = True) -> Path | None:
    """`find` for a value given on the command line: None only when nothing matched and `required` is False (the
    caller tries a hub id next); a UserError saying where sdkit looked otherwise."""
    found = find(kind, ref, explicit=explicit)
    if found is not None or not required:
        return found
    raise UserError(f"{KIND_WORDS[kind]} {ref!r} not found: no such file, {where_looked(kind, explicit)}")


KIND_WORDS = {"checkpoints": "model", "loras": "LoRA", "embeddings": "embedding", "vae": "VAE", "controlnet": "ControlNet"}
