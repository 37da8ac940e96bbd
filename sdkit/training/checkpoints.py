"""Resumable checkpoints: `OUT/checkpoints/step-N`, written atomically, pruned safely, verified on resume.

A checkpoint is accelerate's `save_state` folder (trained weights, optimiser, LR scheduler, sampler, RNG states),
sdkit's own training state (loop position, loss history, EMA: safetensors + JSON, see checkpoint_files.py) and
`checkpoint.json`, written LAST: the completeness marker and the manifest (sha256 of every other file). It is written
into `checkpoints/.tmp-step-N` and renamed to `step-N` only once complete, so a crash mid-save leaves a temp folder
that nothing mistakes for a checkpoint. Old checkpoints are pruned only after the new one is complete.

A checkpoint may come from someone else, so resuming trusts none of it: the manifest is checked and every file is
opened as tensors-only before anything is loaded, and nothing is unpickled in a way that can run code (see
checkpoint_files.py for what that does and does not protect). A checkpoint without a manifest (saved by an sdkit
before manifests) is refused: it cannot be verified, and such checkpoints hold pickled custom objects that accelerate
would load with full unpickling.

    latest_checkpoint(out)            -> newest complete checkpoint or None (temp and unmarked folders are skipped)
    resolve_resume(out, resume)       -> the checkpoint to resume from, or None for a fresh start (UserError otherwise)
    save_checkpoint(accelerator, out, step, info, total_limit, objects) -> Path
    load_checkpoint(accelerator, path, objects)   # accelerate's load_state (weights-only), then sdkit's own state
    with StopSignals() as stop: ...   # SIGINT/SIGTERM only set stop.received: the loop saves, then stops
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdkit import atomic
from sdkit.errors import SdkitError, UserError
from sdkit.training import checkpoint_files

MARKER = "checkpoint.json"
STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def is_complete(path: Path) -> bool:
    """A checkpoint is complete when its marker exists and parses (it is written after everything else)."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("complete") is True


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete `step-N` folder, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint in `output_dir/checkpoints`, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def read_marker(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / MARKER).read_text())


def resolve_resume(output_dir: Path, resume: str | None, outputs: Sequence[Path] = ()) -> Path | None:
    """The checkpoint a run resumes from.

    None: a fresh start, refused when `output_dir` already holds a run: a complete checkpoint, or one of `outputs`
    (the trainer's result files), so nothing is overwritten by accident.
    "latest": the newest complete checkpoint, or None (fresh start) when there is none.
    A path: it must exist and be complete; anything else is a UserError, never a silent fresh start.
    Either way the checkpoint is `verified` here (manifest, tensors-only files), before any model is loaded.
    """
    output_dir = Path(output_dir)
    if resume is None:
        if complete_checkpoints(output_dir):
            raise UserError(
                f"{output_dir} already holds a training run (checkpoints/): continue it with --resume latest, "
                "or choose another output folder"
            )
        existing = [p for p in outputs if Path(p).exists()]
        if existing:
            raise UserError(
                f"{output_dir} already holds a trained result ({Path(existing[0]).name}): continue it with "
                "--resume latest, or choose another output folder"
            )
        return None
    if resume == "latest":
        latest = latest_checkpoint(output_dir)
        return None if latest is None else verified(latest)
    path = Path(resume).expanduser()
    if not path.exists():
        raise UserError(f"resume checkpoint {path} does not exist: give a checkpoints/step-N folder or --resume latest")
    if not path.is_dir() or not is_complete(path):
        raise UserError(
            f"resume checkpoint {path} is incomplete (no {MARKER}; the save was interrupted?): "
            "pick a complete one or use --resume latest, which skips incomplete checkpoints"
        )
    return verified(path)


def verified(path: Path) -> Path:
    """`path`, once its files match its manifest and hold only tensors and plain data (checkpoint_files.verify);
    otherwise a UserError naming the file. A checkpoint saved before manifests existed is refused outright.

    This reads every byte of the checkpoint (sha256 at ≈ 1.3 GB/s here): milliseconds for a LoRA, ≈ 10 s for a full
    SD 1.5 fine-tune with EMA. Recipes call `resolve_resume` early, before writing anything, and `run_training`
    again before loading, so a bad checkpoint is refused before any model is loaded."""
    files = read_marker(path).get("files")
    if not isinstance(files, dict):
        raise UserError(
            f"checkpoint {path} has no file manifest (saved by an older sdkit), so it cannot be verified and its "
            "pickled files cannot be trusted: start a fresh run in a new output folder"
        )
    checkpoint_files.verify(path, files, MARKER)
    return path


def load_checkpoint(accelerator, path: Path, objects: Sequence[Any]) -> None:
    """Resume from `path`, which `resolve_resume` verified: accelerate's `load_state` (every load weights-only) and
    sdkit's own state into `objects` (the ones `save_checkpoint` was given), from safetensors + JSON."""
    accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    checkpoint_files.load_objects(objects, path)


def save_checkpoint(
    accelerator, output_dir: Path, step: int, info: dict[str, Any], total_limit: int | None, objects: Sequence[Any] = ()
) -> Path:
    """Save the accelerator's state and `objects`' state dicts (sdkit's own state, not pickled) as
    `checkpoints/step-{step}` atomically, the manifest last; prune beyond `total_limit` afterwards.

    Every process must call this (each saves its own RNG state); only the main process touches the folders.
    """
    root = checkpoints_dir(output_dir)
    final = root / f"step-{step}"
    tmp = root / f"{TMP_PREFIX}step-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a crashed save of the same step
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            checkpoint_files.save_objects(objects, tmp)
    except Exception as err:  # torch's zip writer reports a full disk as a RuntimeError, safetensors as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        code = atomic.full_disk_errno(err)
        if code is None and not isinstance(err, (OSError, RuntimeError)):
            raise
        kept = latest_checkpoint(output_dir)
        then = (f"{'the previous checkpoint ' + kept.name + ' is intact' if kept else 'no earlier checkpoint exists'}: "
                "free disk space and continue with --resume latest")  # fmt: skip
        if code is not None:  # a full disk is the user's to fix: exit 2, like a full disk at the final save
            raise UserError(f"no space left on {atomic.device_of(root)} while saving checkpoint step-{step} in {root}"
                            f" ({os.strerror(code)}); {then}") from None  # fmt: skip
        cause = f"write failed: {str(err).strip().splitlines()[0][:120]}; is the disk full?"  # no errno to tell
        raise SdkitError(f"saving checkpoint step-{step} in {root}: {cause}; {then}") from err
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = {"complete": True, "step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        marker["files"] = checkpoint_files.manifest(tmp, skip=MARKER)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        atomic.finish_tree(tmp)  # ordinary permissions (safetensors writes 0600 files) and every file on disk
        atomic.replace_dir(tmp, final)  # an older step-N (a run restarted from an earlier checkpoint) goes only now
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: Path, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `total_limit` and leftover temp folders; return what was removed.

    Incomplete `step-N` folders (no marker) are left alone: they are not counted and not trusted, but not ours to delete.
    """
    removed = []
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(TMP_PREFIX) and child.is_dir():
                shutil.rmtree(child)
                removed.append(child)
    if total_limit is not None:
        found = complete_checkpoints(output_dir)
        for _, path in found[: max(0, len(found) - total_limit)]:
            shutil.rmtree(path)
            removed.append(path)
    return removed


class StopSignals:
    """While active, SIGINT/SIGTERM only record a stop request (`.received`); a second SIGINT raises
    KeyboardInterrupt at once. The previous handlers come back on exit. Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self._restore()
