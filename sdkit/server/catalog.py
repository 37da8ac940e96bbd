"""What the server can load, by name: checkpoints, LoRAs, embeddings, VAEs, ControlNets and datasets.

Clients name things; they never give paths. `entries(kind, models_dir)` is the one place that lists a kind (the
A1111 routes, the page and the job API all read it), and `find(kind, name, models_dir)` the one place that turns a
client's name into a file. Point both at the model library when it lands; until then they read `--models-dir`:

    MODELS/checkpoints/  (or A1111's Stable-diffusion/)  diffusers folders (model_index.json) and .safetensors files
    MODELS/loras/        (or Lora/)                      .safetensors
    MODELS/embeddings/                                   .safetensors
    MODELS/vae/          (or VAE/)                       .safetensors files and diffusers folders
    MODELS/controlnet/   (or ControlNet/)                diffusers folders (config.json)
    MODELS/datasets/                                     imagefolder datasets (for training jobs)

plus what sdkit ships: the `shapes` checkpoint and the `shapes-canny` ControlNet. A name is the path below the kind's
folder without its suffix (`my-model`, `sub/my-model`); A1111's titles (`my-model.safetensors [0123456789]`), model
names, file names and short hashes (sha256[:10]) find checkpoints too. Pickles are never listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sdkit.errors import UserError

KINDS: dict[str, tuple[str, ...]] = {  # kind -> folder names under --models-dir, sdkit's first, then A1111's
    "checkpoints": ("checkpoints", "Stable-diffusion"),
    "loras": ("loras", "Lora"),
    "embeddings": ("embeddings",),
    "vae": ("vae", "VAE"),
    "controlnet": ("controlnet", "ControlNet"),
    "datasets": ("datasets",),
}
LABELS = {"checkpoints": "model", "loras": "LoRA", "embeddings": "embedding", "vae": "VAE", "controlnet": "ControlNet",
          "datasets": "dataset"}  # fmt: skip
HASHED = ("checkpoints", "loras", "vae")  # kinds whose entries carry a content hash (A1111 shows them)
TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str  # what clients send
    path: Path
    filename: str  # the file or folder name, with its suffix (A1111's titles use it)
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


def _builtin(kind: str) -> list[Entry]:
    from sdkit.models import ASSETS

    shipped = {"checkpoints": ["shapes"], "controlnet": ["shapes-canny"]}.get(kind, [])
    return [Entry(kind, name, ASSETS / name, name, builtin=True) for name in shipped if (ASSETS / name).is_dir()]


def _is_entry(kind: str, path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_file():
        return path.suffix == ".safetensors" and kind in ("checkpoints", "loras", "embeddings", "vae")
    if not path.is_dir():
        return False
    marker = {"checkpoints": "model_index.json", "vae": "config.json", "controlnet": "config.json",
              "datasets": "metadata.jsonl"}.get(kind)  # fmt: skip
    return marker is not None and (path / marker).is_file()


def _scan(kind: str, folder: Path) -> list[Entry]:
    found = []
    stack = [folder]
    while stack:
        here = stack.pop()
        for path in sorted(here.iterdir()):
            if _is_entry(kind, path):
                rel = path.relative_to(folder)
                name = rel.with_suffix("").as_posix() if path.is_file() else rel.as_posix()
                found.append(Entry(kind, name, path.resolve(), rel.as_posix()))
            elif path.is_dir() and not path.name.startswith(".") and not path.is_symlink():
                stack.append(path)
    return found


def entries(kind: str, models_dir: Path | None) -> list[Entry]:
    """Every entry of `kind`: sdkit's shipped ones, then --models-dir's, sorted by name within each."""
    if kind not in KINDS:
        raise ValueError(f"unknown catalog kind {kind!r}")
    found = _builtin(kind)
    if models_dir is not None:
        for folder_name in KINDS[kind]:
            folder = Path(models_dir) / folder_name
            if folder.is_dir():
                found += sorted(_scan(kind, folder), key=lambda e: e.name)
    return found


def find(kind: str, name: str, models_dir: Path | None, what: str = "") -> Entry:
    """The entry a client named (see the module docstring for the names that match); UserError naming the choices."""
    wanted = str(name).strip()
    bare = TITLE_HASH.sub("", wanted)
    listed = entries(kind, models_dir)
    for entry in listed:
        if wanted in (entry.name, entry.filename) or bare in (entry.name, entry.filename):
            return entry
    if kind in HASHED and re.fullmatch(r"[0-9a-fA-F]{10}|[0-9a-fA-F]{64}", bare):
        for entry in listed:
            if entry.sha256 and entry.sha256.startswith(bare.lower()):
                return entry
    names = ", ".join(e.name for e in listed[:20]) or "none"
    label = what or LABELS[kind]
    raise UserError(f"{label} {wanted!r} is not in the library (available: {names}): name one of them")


def model_name(entry: Entry) -> str:
    """A1111's `model_name`: the name with folder separators as '_'."""
    return entry.name.replace("/", "_")
