"""The files of a checkpoint folder, and why resuming from one cannot run code.

A checkpoint (`checkpoints/step-N`, see checkpoints.py) is accelerate's `save_state` folder plus sdkit's own files:

    model*.safetensors, optimizer.bin, scheduler.bin,   accelerate's: weights (safetensors) and torch zip files of
    random_states_N.pkl, ...                            plain tensors/numbers (optimiser, LR schedule, RNG states)
    sdkit_state.safetensors + sdkit_state.json          sdkit's: the loop position and loss history, the EMA weights
                                                        and any other checkpointed object's `state_dict()`: tensors
                                                        in safetensors, everything else as JSON
    checkpoint.json                                     written LAST: the completeness marker and the manifest,
                                                        {"files": {relative path: sha256}} of every other file

Why sdkit writes its own objects instead of `accelerator.register_for_checkpointing`: accelerate 1.15 loads those
(`custom_checkpoint_N.pkl`) with `torch.load(weights_only=False)` (`load_custom_state`), i.e. full unpickling, where
a crafted file runs any code it likes. Every other file accelerate loads with `weights_only=True` (its `load()`
defaults to it; sdkit passes it again as `load_kwargs`), but accelerate swallows any error while restoring RNG states,
so a refused `random_states_N.pkl` would only make the resume silently inexact. So before anything in the folder is
handed to accelerate, `verify(folder, manifest)`:

1. checks the manifest: every listed file present and unchanged (sha256), nothing extra; else it names the file;
2. opens every non-safetensors, non-JSON file with torch's weights-only unpickler (memory-mapped, so a multi-GB
   optimiser state is not read twice), allowing the few numpy types an RNG state holds for that call only, and
   parses every safetensors header: a file holding code or objects is refused, naming it.

What the manifest is and is not: it catches a truncated, corrupted, swapped, missing or added file. It is not a
signature: whoever can put a crafted file into the folder can also rewrite checkpoint.json to match. The protection
against code execution is that nothing in a checkpoint is ever unpickled in a way that can run code (step 2, then
accelerate's own weights-only loads, then safetensors/JSON for sdkit's state), whatever the manifest says. A
checkpoint still carries weights: resume only from checkpoints whose training you would accept as your own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sdkit.errors import UserError

STATE_TENSORS, STATE_JSON = "sdkit_state.safetensors", "sdkit_state.json"
TENSOR_REF = "$tensor"  # {"$tensor": key} in sdkit_state.json stands for sdkit_state.safetensors[key]
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (and accelerate's) file format


def list_files(folder: Path, skip: str) -> list[str]:
    """Every file under `folder` (relative POSIX paths, sorted), except `skip`."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != skip)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path, skip: str) -> dict[str, str]:
    """{relative path: sha256} of every file in `folder` except `skip` (the marker that will hold this manifest)."""
    return {name: sha256(Path(folder) / name) for name in list_files(folder, skip)}


def verify(folder: Path, files: dict[str, str], marker: str) -> None:
    """Refuse (UserError naming the file) a checkpoint whose files differ from its manifest `files`, or that holds
    anything but tensors and plain data. Reads every byte once (hashing) and unpickles nothing that can run code."""
    folder = Path(folder)
    present = list_files(folder, marker)
    for name in present:
        if name not in files:
            raise UserError(
                f"checkpoint {folder}: {name} is not in its manifest ({marker}), so it was added after saving: "
                "remove it, or resume from another checkpoint"
            )
    for name, digest in files.items():
        if name not in present:
            raise UserError(
                f"checkpoint {folder}: {name}, listed in {marker}, is missing: resume from another checkpoint"
            )
        if sha256(folder / name) != digest:
            raise UserError(
                f"checkpoint {folder}: {name} does not match its sha256 in {marker} (changed or corrupted since it "
                "was saved): resume from another checkpoint"
            )
    for name in present:
        check_tensors_only(folder / name)


@contextlib.contextmanager
def _numpy_rng_types() -> Iterator[None]:
    """Allow, inside the block only, the numpy types that `np.random.get_state()` pickles as (an array of uint32)."""
    import numpy as np
    import torch

    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    types = [_reconstruct, np.ndarray, np.dtype, *([np.dtypes.UInt32DType] if hasattr(np, "dtypes") else [])]
    with torch.serialization.safe_globals(types):
        yield


def check_tensors_only(path: Path) -> None:
    """Refuse `path` unless it holds only tensors and plain data: JSON is parsed later by `json`, safetensors files get
    their header checked, anything else must be a torch zip file that torch's weights-only unpickler accepts."""
    path = Path(path)
    if path.suffix == ".json":
        return
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt"):
                return
        except Exception as err:  # safetensors raises its own SafetensorError for a bad header
            raise UserError(
                f"refused: {path} is not a valid safetensors file ({_first_line(err)}): resume from another checkpoint"
            ) from None
    import torch

    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:
            raise UserError(f"refused: {path} is not a torch zip file like those accelerate writes: nothing was loaded")
    loads_numpy = path.name.startswith("random_states_")
    try:
        with _numpy_rng_types() if loads_numpy else contextlib.nullcontext():
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"refused: {path} contains code or Python objects, not just tensors: nothing was loaded; "
            "resume only from checkpoints sdkit wrote"
        ) from None
    except Exception as err:
        raise UserError(f"checkpoint file {path} is unreadable ({_first_line(err)}): resume from another one") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:160]


def save_objects(objects: Sequence[Any], folder: Path) -> None:
    """Write each object's `state_dict()` into `folder`: tensors to sdkit_state.safetensors, the rest (numbers,
    strings, lists, str-keyed dicts) to sdkit_state.json. Tuples come back as lists."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    tree = [_encode(obj.state_dict(), tensors) for obj in objects]
    save_file(tensors, str(Path(folder) / STATE_TENSORS))
    (Path(folder) / STATE_JSON).write_text(json.dumps({"objects": tree}))


def load_objects(objects: Sequence[Any], folder: Path) -> None:
    """Load what `save_objects` wrote back into `objects` (same objects, same order); UserError if it does not fit."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        tree = json.loads((folder / STATE_JSON).read_text())["objects"]
        tensors = load_file(str(folder / STATE_TENSORS))
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise UserError(f"checkpoint {folder}: sdkit's training state is unreadable ({_first_line(err)})") from None
    if not isinstance(tree, list) or len(tree) != len(objects):
        raise UserError(
            f"checkpoint {folder} holds {len(tree) if isinstance(tree, list) else '?'} training-state objects but this "
            f"run has {len(objects)} (use_ema on in one and off in the other?): resume with the same settings"
        )
    for obj, encoded in zip(objects, tree, strict=True):
        try:
            obj.load_state_dict(_decode(encoded, tensors))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise UserError(
                f"checkpoint {folder}: its {type(obj).__name__} state does not fit this run ({_first_line(err)}): "
                "resume with the same settings"
            ) from None


def _encode(value: Any, tensors: dict[str, Any]) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().to("cpu").contiguous()
        return {TENSOR_REF: key}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or TENSOR_REF in value:
            raise TypeError(f"cannot checkpoint a dict with keys {list(value)[:5]} as JSON")
        return {k: _encode(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} without pickle")


def _decode(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {TENSOR_REF}:
            return tensors[value[TENSOR_REF]]
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value
