"""What the server can load, by name: sdkit's model library (`sdkit.library`) with the server's own rules on top.

Clients name things; they never give paths. `entries(kind, models_dir)` lists a kind (the A1111 routes, the page and
the job API all read it) and `find(kind, name, models_dir)` turns a client's name into a file. Checkpoints, LoRAs,
embeddings, VAEs and ControlNets come from the library (`--models-dir`, else `$SDKIT_MODELS` or the config file; the
sdkit, ComfyUI and A1111 layouts), looked up as `sdkit.library.find` looks them up (relative path, file name, stem,
short hash). What the server adds:

- what sdkit ships, by its alias: the `shapes` checkpoint and the `shapes-canny` ControlNet;
- A1111's titles (`my-model.safetensors [0123456789]`: the name, checked against the hash);
- datasets for training jobs: imagefolder datasets (metadata.jsonl) in `datasets/` of each library folder;
- never a pickle: a server loads only .safetensors files and diffusers folders (`allow_pickle` is not a client's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sdkit import library
from sdkit.errors import UserError

KINDS = (*library.KINDS, "datasets")
LABELS = {**library.KIND_WORDS, "datasets": "dataset"}
HASHED = ("checkpoints", "loras", "vae")  # kinds whose entries carry a content hash (A1111 shows them)
TITLE = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,64})\]$")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str  # what clients send
    path: Path
    filename: str  # the path below the kind's folder with its suffix (A1111's titles use it)
    builtin: bool = False  # shipped with sdkit: sdkit knows its name as an alias

    @property
    def ref(self) -> str:
        """What a recipe names it by: a shipped model's alias (as `sdkit generate -m shapes` records it), else its path."""
        return self.name if self.builtin else str(self.path)

    @property
    def sha256(self) -> str | None:
        if self.kind not in HASHED:
            return None
        from sdkit.models import content_hash

        return content_hash(self.path)

    @property
    def short_hash(self) -> str | None:
        sha = self.sha256
        return sha[:10] if sha else None

    @property
    def title(self) -> str:
        """A1111's checkpoint title: `file name [short hash]`."""
        return f"{self.filename} [{self.short_hash}]" if self.short_hash else self.filename


def dirs(models_dir: Path | None) -> list[Path] | None:
    """The library folders as `sdkit.library` takes them (None: its defaults)."""
    return [Path(models_dir)] if models_dir is not None else None


def _builtin(kind: str) -> list[Entry]:
    from sdkit.models import ASSETS

    shipped = {"checkpoints": ["shapes"], "controlnet": ["shapes-canny"]}.get(kind, [])
    return [Entry(kind, name, ASSETS / name, name, builtin=True) for name in shipped if (ASSETS / name).is_dir()]


def _loadable(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".safetensors"


def _datasets(models_dir: Path | None) -> list[Entry]:
    found = []
    for root in library.roots(dirs(models_dir)):
        folder = root.path / "datasets"
        if folder.is_dir():
            found += [Entry("datasets", p.parent.relative_to(folder).as_posix(), p.parent.resolve(),
                            p.parent.relative_to(folder).as_posix()) for p in sorted(folder.rglob("metadata.jsonl"))]  # fmt: skip
    return found


def folders(models_dir: Path | None) -> list[Path]:
    """Every folder the server reads models and datasets from (the recipe paths it lets jobs use)."""
    roots = library.roots(dirs(models_dir))
    return [root.path for root in roots] + [f for root in roots for kind in library.KINDS for f in root.folders(kind)]


def entries(kind: str, models_dir: Path | None) -> list[Entry]:
    """Every entry of `kind`: sdkit's shipped ones, then the library's (pickles left out)."""
    if kind not in KINDS:
        raise ValueError(f"unknown catalog kind {kind!r}")
    if kind == "datasets":
        return _datasets(models_dir)
    listed = [Entry(kind, e.name, e.path, e.rel) for e in library.entries(kind, dirs(models_dir)) if _loadable(e.path)]
    return _builtin(kind) + listed


def find(kind: str, name: str, models_dir: Path | None, what: str = "") -> Entry:
    """The entry a client named (see the module docstring for the names that match); UserError naming the choices."""
    wanted = str(name).strip()
    label = what or LABELS[kind]
    for entry in _builtin(kind) + (_datasets(models_dir) if kind == "datasets" else []):
        if wanted in (entry.name, entry.title):
            return entry
    if kind != "datasets" and wanted:
        title = TITLE.match(wanted)
        bare, short_hash = (title.group(1), title.group(2)) if title else (wanted, None)
        if short_hash is None and library.HEX.match(bare):
            hit = next((e for e in _builtin(kind) if kind in HASHED and (e.sha256 or "").startswith(bare.lower())), None)
            if hit is not None:
                return hit
        path = library.find(kind, bare or None, short_hash, dirs(models_dir))
        if path is not None and not _loadable(path):
            raise UserError(f"{label} {wanted!r} is a pickle ({path.name}): the server loads only .safetensors files and "
                            "diffusers folders: convert it (`sdkit convert`) or save it as .safetensors")  # fmt: skip
        if path is not None:
            return next(e for e in entries(kind, models_dir) if e.path == path)
    names = ", ".join(e.name for e in entries(kind, models_dir)[:20]) or "none"
    raise UserError(f"{label} {wanted!r} is not in the library (available: {names}): name one of them")


def model_name(entry: Entry) -> str:
    """A1111's `model_name`: the name with folder separators as '_'."""
    return entry.name.replace("/", "_")
