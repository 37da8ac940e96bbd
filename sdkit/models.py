"""Model references: the only code that resolves a `--model` value and touches weights on disk or the hub.

A reference is an alias, a local diffusers folder, a single-file checkpoint, a name or short hash in the model library
(`sdkit.library`), or a hub id. `resolve_model` checks it without importing torch (so bad input fails in milliseconds,
before anything is loaded or written); `load_pipeline` builds the txt2img pipeline through diffusers' own loaders
(single files offline, with the configs of `sdkit.single_file`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from sdkit.errors import UserError
from sdkit.weightfiles import (
    NOT_WEIGHTS_FIX,
    PICKLE,
    SAFETENSORS,
    check_safetensors,
    check_weights,
    quiet_libraries,
    refusing_code,
    weights_format,
)

ASSETS = Path(__file__).parent / "assets"
ALIASES = MappingProxyType(
    {
        "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sd21": "stabilityai/stable-diffusion-2-1",
        "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
        "sd-turbo": "stabilityai/sd-turbo",
        "sdxl-turbo": "stabilityai/sdxl-turbo",
        "shapes": str(ASSETS / "shapes"),
    }
)
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: `kind` is folder, file or hub; `location` an absolute path or a hub id."""

    ref: str
    kind: str
    location: str
    sha256: str | None = None
    config: str | None = None  # single files: --config (a diffusers folder, a family name or an original .yaml)

    @property
    def name(self) -> str:
        """Short display name (A1111's `Model:` field)."""
        return Path(self.location).stem if self.kind != "hub" else self.location.split("/")[-1]


def _check_folder(folder: Path, allow_pickle: bool) -> None:
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(
            f"{folder} has no model_index.json: give a diffusers pipeline folder (saved with save_pretrained) "
            "or a .safetensors checkpoint file"
        )
    try:
        components = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{index} is not valid JSON: repair or re-download the model folder") from None
    for name, value in components.items():
        sub = folder / name
        if name.startswith("_") or not isinstance(value, list) or value[0] is None or not sub.is_dir():
            continue
        files = sorted(p for p in sub.iterdir() if p.suffix in SINGLE_FILE_SUFFIXES and p.is_file())
        safetensors = [p for p in files if p.suffix == ".safetensors"]
        for file in safetensors or files:  # the files diffusers loads: safetensors where present, else the pickles
            check_weights(file, "", allow_pickle, by_name=True)


def _pickle_files(folder: Path) -> list[Path]:
    """The files of a pipeline folder's components that diffusers may unpickle (named .bin, .ckpt, ...)."""
    return sorted(p for p in folder.glob("*/*") if p.suffix in PICKLE_SUFFIXES and p.is_file())


def hash_cache_file() -> Path:
    """Where content hashes are remembered: $SDKIT_CACHE_DIR, else $XDG_CACHE_HOME/sdkit, else ~/.cache/sdkit."""
    root = os.environ.get("SDKIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sdkit"
    return Path(root) / "hashes.json"


def content_hash(location: Path, kind: str = "sha256") -> str:
    """A hex digest of a model: `kind` "sha256" is the sha256 of a file, or of a folder's files (relative names and
    bytes, sorted); A1111's short hash (AutoV2) is its first 10 characters. "addnet" is the sha256 of a safetensors
    file's bytes after its header (kohya's and A1111's LoRA hash, civitai's AutoV3; `Lora hashes` shows 12).

    Reading every byte of an SDXL folder takes seconds, so digests are remembered in `hash_cache_file()` against the
    files' names, sizes and modification times (as A1111 keeps its cache.json): a changed file is hashed again."""
    is_dir = location.is_dir()
    files = sorted(p for p in location.rglob("*") if p.is_file()) if is_dir else [location]
    names = [str(f.relative_to(location)) if is_dir else f.name for f in files]
    signature = [[name, st.st_size, st.st_mtime_ns] for name, st in zip(names, (f.stat() for f in files), strict=True)]
    key = str(location.resolve())
    cache_file = hash_cache_file()
    cache = _read_hash_cache(cache_file)
    entry = cache.get(key)
    entry = entry if isinstance(entry, dict) and entry.get("files") == signature else {"files": signature}
    if isinstance(entry.get(kind), str):
        return entry[kind]
    digest = hashlib.sha256()
    for name, file in zip(names, files, strict=True):
        if is_dir:
            digest.update(name.encode() + b"\0")
        with file.open("rb") as f:
            if kind == "addnet":  # skip the 8-byte length and the JSON header
                f.seek(8 + int.from_bytes(f.read(8), "little"))
            while chunk := f.read(2**22):
                digest.update(chunk)
    entry[kind] = digest.hexdigest()
    cache = {k: v for k, v in cache.items() if Path(k).exists()}  # forget models that are gone
    cache[key] = entry
    _write_hash_cache(cache_file, cache)
    return entry[kind]


def _read_hash_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # no cache yet, or a damaged one: hash from the bytes
        return {}
    return data if isinstance(data, dict) else {}


def _write_hash_cache(path: Path, cache: dict) -> None:
    """Atomic replace; a cache that cannot be written (read-only home, full disk) only costs the next run a re-hash."""
    from sdkit.atomic import write_text

    try:
        write_text(path, json.dumps(cache))
    except OSError as err:
        print(f"warning: could not save the model hash cache {path}: {err.strerror or err}", file=sys.stderr)


def resolve_model(
    ref: str,
    *,
    allow_pickle: bool = False,
    hash_local: bool = True,
    config: str | None = None,
    models_dirs: Sequence[Path] | None = None,
) -> ModelRef:
    """Check a model reference and say what it is, without loading anything. Looked up in this order: an alias, an
    existing folder or file, a name or short hash in the model library (`sdkit.library`), a hub id."""
    from sdkit import library

    target = ALIASES.get(ref.strip().lower(), ref)
    path = Path(target).expanduser()
    if path.is_dir():
        _check_folder(path, allow_pickle)
        _no_config(config, path)
        return ModelRef(ref, "folder", str(path.resolve()), content_hash(path) if hash_local else None)
    if path.is_file():
        kind = weights_format(path)
        if kind not in (SAFETENSORS, PICKLE) and path.suffix != ".safetensors" and kind not in NOT_WEIGHTS_FIX:
            raise UserError(
                f"{path} is not a model (it is {kind}, neither safetensors nor a torch pickle): give a diffusers "
                "folder or a .safetensors checkpoint"
            )
        check_weights(path, "", allow_pickle, by_name=True)  # a pickle needs --allow-pickle whatever its name
        _check_config(config)
        return ModelRef(ref, "file", str(path.resolve()), content_hash(path) if hash_local else None, config)
    if ref.strip().lower() == "shapes":
        raise UserError(f"the embedded shapes model is missing from {path}: reinstall sdkit (pip install -e .)")
    found = library.find("checkpoints", ref, explicit=models_dirs)
    if found is not None:
        resolved = resolve_model(str(found), allow_pickle=allow_pickle, hash_local=hash_local, config=config)
        return ModelRef(ref, resolved.kind, resolved.location, resolved.sha256, resolved.config)
    if path.suffix in SINGLE_FILE_SUFFIXES or target.startswith((".", "/", "~")) or not HUB_ID.match(target):
        raise UserError(
            f"model {ref!r} not found: no such folder or file, not an alias ({', '.join(ALIASES)}), not a hub id "
            f"(org/name), {library.where_looked('checkpoints', models_dirs)}"
        )
    _no_config(config, target)
    return ModelRef(ref, "hub", target)


def _check_config(config: str | None) -> None:
    """--config: a diffusers config folder, a family name or an original .yaml (see sdkit.single_file)."""
    from sdkit.families import FAMILIES

    if config is None or config in FAMILIES:
        return
    path = Path(config).expanduser()
    if path.is_dir() and (path / "model_index.json").is_file():
        return
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return
    raise UserError(
        f"--config {config}: not a diffusers folder (with model_index.json), an original .yaml, or a family "
        f"({', '.join(FAMILIES)})"
    )


def _no_config(config: str | None, where: Path | str) -> None:
    if config is not None:
        raise UserError(f"--config is for single-file checkpoints; {where} has its own configs: drop --config")


def resolve_component(ref: str, what: str, aliases: dict[str, str] | None = None) -> str:
    """A single model component (ControlNet, tiny VAE, ...): a checked local folder path, or a hub id."""
    target = (aliases or {}).get(ref.strip().lower(), ref)
    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{what} folder {path} has no config.json: give a folder saved with save_pretrained")
        for weights in path.glob("*.safetensors"):
            check_safetensors(weights)
        return str(path.resolve())
    if aliases and ref.strip().lower() in aliases:
        raise UserError(f"the shipped {what} {ref!r} is missing from {path}: reinstall sdkit")
    if target.startswith((".", "/", "~")) or not HUB_ID.match(target):
        raise UserError(f"{what} {ref!r} not found: no such folder, and not a hub id (org/name)")
    return target


# txt2img pipeline classes a folder may name: loaded as that class (AutoPipelineForText2Image maps them to themselves)
TEXT2IMAGE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def load_pipeline(model: ModelRef, *, torch_dtype, allow_pickle: bool = False, vae=None):
    """Load the txt2img pipeline for a resolved model with diffusers' loaders (safetensors only unless allowed).
    `vae` (a resolved `sdkit.vae.VaeRef`) replaces the model's VAE."""
    import diffusers
    import transformers

    from sdkit.vae import load_vae

    diffusers.utils.logging.disable_progress_bar()  # per-component loading bars; hub downloads keep theirs
    transformers.utils.logging.disable_progress_bar()
    safe = {"use_safetensors": None if allow_pickle else True}
    if model.kind == "file":
        from sdkit import single_file
        from sdkit.families import read_json

        choice = single_file.choose(Path(model.location), model.config, allow_pickle=allow_pickle)
        own_vae = load_vae(vae, read_json(choice.config_dir / "vae" / "config.json"), torch_dtype) if vae else None
        return single_file.load(Path(model.location), choice, dtype=torch_dtype, vae=own_vae)
    extra = {}
    loader_name = "AutoPipelineForText2Image"
    pickles: list[Path] = []
    if model.kind == "folder":
        index = json.loads((Path(model.location) / "model_index.json").read_text())
        if "safety_checker" in index:
            extra = {"safety_checker": None, "requires_safety_checker": False}
        if index.get("_class_name") in TEXT2IMAGE_CLASSES:  # the class itself: diffusers' auto_pipeline module imports
            loader_name = index["_class_name"]  # every pipeline family (≈ 0.5 s of every `sdkit generate`)
        pickles = _pickle_files(Path(model.location)) if allow_pickle else []
        if vae is not None:
            extra["vae"] = load_vae(vae, json.loads((Path(model.location) / "vae" / "config.json").read_text()), torch_dtype)
    try:
        # quiet: with --allow-pickle diffusers logs an error for each component without safetensors, then loads the .bin
        with quiet_libraries(), refusing_code(pickles, model.location):
            pipe = getattr(diffusers, loader_name).from_pretrained(model.location, dtype=torch_dtype, **safe, **extra)
    except OSError as err:
        if model.kind != "hub":
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"could not load {model.location!r} from the Hugging Face Hub ({first[:160]}): check the id and your "
            "network (HF_HUB_OFFLINE=1 uses only the local cache), or pass a local diffusers folder"
        ) from None
    if vae is not None and model.kind == "hub":
        pipe.vae = load_vae(vae, pipe.vae.config, torch_dtype)
    return pipe
