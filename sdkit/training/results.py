"""The end of every training run (text-to-image, LoRA, DreamBooth, textual inversion, ControlNet): its result saved
like a checkpoint, and "already finished" decided from what was really saved.

    files = save_result(out, ["pytorch_lora_weights.safetensors"], lambda stage: save_lora(stage, ...), nbytes)
    if finished(out, files, recipe.max_steps): ...   # `--resume latest` of a run whose result is saved: nothing to do

The result is written into a temporary folder inside the output folder (`OUT/.result.tmp-XXXX`) and each entry
(a file, or a folder such as `model/`) is renamed into place only once all of it is written: renames need no space,
so a full disk fails while staging, before anything the user has is touched. A failed save removes the staging folder
and keeps every checkpoint and any earlier result; a full disk is a UserError (exit 2) that says how much the save
needed and which checkpoint to continue from. run.json (written by the loop) carries `"saved": false` until the
result is in place, so a run whose save failed or was killed is not mistaken for a finished one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from sdkit import atomic
from sdkit.errors import UserError

STAGE = ".result"  # staging folders are OUT/.result.tmp-XXXX
RUN_INFO = "run.json"


def tensor_bytes(*things: Any) -> int:
    """Bytes of the tensors in modules (their state_dict), mappings of tensors, or tensors: a save's size estimate."""
    total = 0
    for thing in things:
        if thing is None:
            continue
        if hasattr(thing, "state_dict") and callable(thing.state_dict):
            thing = thing.state_dict()
        values = thing.values() if isinstance(thing, dict) else [thing]
        total += sum(v.numel() * v.element_size() for v in values if hasattr(v, "element_size"))
    return total


def save_result(output_dir: Path, entries: Sequence[str], write: Callable[[Path], object], needed_bytes: int) -> list[Path]:
    """Call `write(stage)` to write `entries` (names relative to the output folder) into a staging folder, then move
    each into `output_dir`, replacing an older one only now. Returns the final paths. See the module docstring."""
    out = Path(output_dir)
    _mark_saved(out, False)
    for stale in out.glob(f"{STAGE}.tmp-*"):  # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)
    stage: Path | None = None
    try:
        try:
            stage = atomic.new_dir(out / STAGE)
            write(stage)
            missing = [name for name in entries if not (stage / name).exists()]
            if missing:
                raise RuntimeError(f"the save wrote no {missing[0]} into {stage}")
            atomic.finish_tree(stage)
        except Exception as err:
            code = atomic.full_disk_errno(err)
            if code is None:
                raise
            raise UserError(no_space_message(out, code, needed_bytes)) from None
        for name in entries:
            source, target = stage / name, out / name
            if source.is_dir():
                atomic.replace_dir(source, target)
            else:
                os.replace(source, target)
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    _mark_saved(out, True)
    return [out / name for name in entries]


def no_space_message(out: Path, code: int, needed_bytes: int) -> str:
    """"no space left on DEVICE while saving OUT: N MB needed; the last complete checkpoint is CK: ..." """
    from sdkit.training.checkpoints import latest_checkpoint

    mb = needed_bytes / 1e6
    size = f"{mb:.1f}" if mb >= 1 else f"{mb:.2f}"
    why = "" if code == errno.ENOSPC else f" ({os.strerror(code)})"
    kept = latest_checkpoint(out)
    then = (
        f"the last complete checkpoint is {kept}: free space and continue from it with --resume latest"
        if kept is not None
        else "no complete checkpoint exists (checkpointing_steps keeps some): free space and run again"
    )
    return f"no space left on {atomic.device_of(out)} while saving {out}{why}: {size} MB needed; {then}"


def finished(output_dir: Path, outputs: Iterable[Path], max_steps: int) -> bool:
    """True when `output_dir` holds a saved result of at least `max_steps` steps: run.json says so (and does not say
    the save failed) and every path in `outputs` exists."""
    info = Path(output_dir) / RUN_INFO
    if not info.is_file() or not all(Path(p).exists() for p in outputs):
        return False
    try:
        data = json.loads(info.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("saved", True) is not False and data.get("steps", 0) >= max_steps


def _mark_saved(out: Path, saved: bool) -> None:
    """Record in run.json (if the loop wrote one) whether the result of that run is saved.

    When even that small write fails (a full disk), run.json is removed before a save instead: a folder without it is
    never taken as finished, and removing frees space rather than needing it. Marking a saved result is best effort:
    if it fails, a later `--resume latest` only redoes the save from the last checkpoint."""
    info = out / RUN_INFO
    try:
        data = json.loads(info.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(data, dict) or data.get("saved", True) is saved:
        return
    try:
        atomic.write_text(info, json.dumps({**data, "saved": saved}, indent=2) + "\n")
    except OSError:
        if not saved:
            info.unlink(missing_ok=True)
