"""A full disk while saving a training result or writing a dataset: exit 2 with one line saying where, how much and
what survived; nothing half-written is left, nothing earlier is lost, and the run finishes from its last checkpoint
once there is space again.

Two ways to fill a disk: RLIMIT_FSIZE in the child (any file past the limit fails with EFBIG, which sdkit treats like
ENOSPC; works everywhere), and, where this process may mount one, a real tmpfs that is nearly full (ENOSPC).
"""

from __future__ import annotations

import hashlib
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdkit.training import checkpoints as ckpt

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
LORA = "pytorch_lora_weights.safetensors"
TRAIN = ("train", "lora", "--max-steps", "2", "--checkpointing-steps", "2", "--save-format", "kohya")


def sdkit(*args: object, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # in the child: any file past `file_limit` bytes fails with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-m", "sdkit", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=600, preexec_fn=limit if file_limit else None)  # fmt: skip


def error_line(done: subprocess.CompletedProcess) -> str:
    """Exit 2, no traceback, nothing on stdout, and exactly one `error:` line, the last one on stderr."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr
    return errors[0]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def hidden(root: Path) -> list[Path]:
    """Dot-named leftovers (staging folders, temp files) anywhere under `root`."""
    return [p for p in root.rglob(".*")]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdkit.data.shapes import write_dataset

    return write_dataset(tmp_path_factory.mktemp("full-disk") / "data", 8, seed=0)


@pytest.fixture(scope="module")
def finished_run(shapes_data: Path) -> Path:
    """A LoRA run of 2 steps with its step-2 checkpoint (kohya file too), on a disk with space."""
    out = shapes_data.parent / "reference"
    done = sdkit(*TRAIN, "--data-dir", shapes_data, "-o", out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A folder on its own tmpfs (mount needs root; skipped where this process may not mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", f"sdkit-test-{uuid.uuid4().hex[:8]}", str(disk)],
                             capture_output=True, text=True) if shutil.which("mount") else None  # fmt: skip
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the RLIMIT_FSIZE tests cover the same paths")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def resize(disk: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(disk)], check=True)


def test_full_disk_at_the_final_save_keeps_the_earlier_lora_and_the_checkpoint(finished_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = digests(out)
    more = ("--max-steps", "3", "--resume", "latest", "--data-dir", finished_run.parent / "data", "-o", out)
    # the resumed run trains step 3 (no checkpoint there), then its LoRA does not fit
    line = error_line(sdkit(*TRAIN, *more, file_limit=(out / LORA).stat().st_size // 2))
    checkpoint = out / "checkpoints" / "step-2"
    assert line.startswith("error: no space left on /") and f"while saving {out} (File too large): 0." in line, line
    assert f"MB needed; the last complete checkpoint is {checkpoint}: " in line and "--resume latest" in line, line
    kept = digests(out)
    assert {k: kept[k] for k in before if k.endswith(".safetensors")} == {
        k: v for k, v in before.items() if k.endswith(".safetensors")
    }  # the earlier LoRA files and the checkpoint's weights are byte for byte intact
    assert not hidden(out) and ckpt.latest_checkpoint(out) == checkpoint and ckpt.is_complete(checkpoint)

    done = sdkit(*TRAIN, *more)  # space again: not "already finished", resumes from step-2, saves the step-3 LoRA
    assert done.returncode == 0, done.stderr
    assert f"resumed from {checkpoint}" in done.stderr and "nothing to do" not in done.stderr
    assert digests(out)[LORA] != before[LORA] and not hidden(out)
    assert done.stdout.split() == [str(out / LORA), str(out / "run.safetensors")]


def test_nearly_full_tmpfs_fresh_lora_run(finished_run: Path, small_tmpfs: Path) -> None:
    """The issue's case: a fresh run whose checkpoint fits but whose LoRA does not; then space comes back."""
    results = {LORA, f"{finished_run.name}.safetensors"}
    pages = sum(math.ceil(p.stat().st_size / 4096) for p in finished_run.rglob("*") if p.is_file() and p.name not in results)
    resize(small_tmpfs, (pages + 4 + math.ceil((finished_run / LORA).stat().st_size / 4096) // 2) * 4096)
    out = small_tmpfs / "reference"  # the same folder name: the same recipe.yaml size and kohya file name
    args = (*TRAIN, "--data-dir", finished_run.parent / "data", "-o", out)
    line = error_line(sdkit(*args))
    checkpoint = out / "checkpoints" / "step-2"
    assert line.startswith(f"error: no space left on {small_tmpfs} (sdkit-test-") and f"while saving {out}: 0." in line
    assert f"MB needed; the last complete checkpoint is {checkpoint}: " in line, line
    assert ckpt.is_complete(checkpoint) and not list(out.glob("*.safetensors")) and not hidden(out)

    resize(small_tmpfs, 64 * 2**20)
    done = sdkit(*args[:-2], "-o", out, "--resume", "latest")
    assert done.returncode == 0, done.stderr
    assert f"resumed from {checkpoint}" in done.stderr
    assert done.stdout.split() == [str(out / LORA), str(out / "reference.safetensors")]


def test_full_disk_at_a_checkpoint_is_exit_2_and_keeps_the_previous_one(finished_run: Path, small_tmpfs: Path) -> None:
    """A checkpoint that does not fit (a real ENOSPC from safetensors' writer) is the user's to fix: exit 2 naming the
    device and the checkpoint that is intact; no half-written checkpoint is left behind."""
    out = small_tmpfs / "reference"
    resize(small_tmpfs, 64 * 2**20)
    shutil.copytree(finished_run, out)  # step-2 is complete; the resumed run's step-4 checkpoint will not fit
    before = digests(out / "checkpoints")
    used = sum(math.ceil(p.stat().st_size / 4096) for p in out.rglob("*") if p.is_file())
    resize(small_tmpfs, (used + 2) * 4096)
    line = error_line(sdkit(*TRAIN[:2], "--max-steps", "4", "--checkpointing-steps", "4", "--resume", "latest",
                            "--data-dir", finished_run.parent / "data", "-o", out))  # fmt: skip
    assert line.startswith(f"error: no space left on {small_tmpfs} (sdkit-test-"), line
    assert "while saving checkpoint step-4" in line and "the previous checkpoint step-2 is intact" in line, line
    assert digests(out / "checkpoints") == before and not hidden(out)


def test_full_disk_saving_a_model_folder_keeps_the_old_one(shapes_data: Path, tiny_sd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "t2i"
    args = ("train", "text-to-image", "-m", tiny_sd_dir, "--data-dir", shapes_data, "-o", out, "--checkpointing-steps", "2")
    assert sdkit(*args, "--max-steps", "2").returncode == 0
    model = digests(out / "model")
    line = error_line(sdkit(*args, "--max-steps", "3", "--resume", "latest", file_limit=2**20))
    assert f"while saving {out} (File too large): " in line and f"is {out / 'checkpoints' / 'step-2'}: " in line, line
    assert digests(out / "model") == model and not hidden(out)
    done = sdkit(*args, "--max-steps", "3", "--resume", "latest")
    assert done.returncode == 0 and "nothing to do" not in done.stderr, done.stderr
    assert digests(out / "model") != model


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
def test_data_shapes_on_a_full_disk_leaves_no_dataset(existing: bool, tmp_path: Path) -> None:
    out = tmp_path / "data"
    if existing:
        out.mkdir()
    # 200 rows: every PNG fits under 8 kB, metadata.jsonl (written last) does not
    line = error_line(sdkit("data", "shapes", "-o", out, "--n", "200", file_limit=8192))
    assert line.startswith("error: no space left on /") and f"while writing the dataset {out} (File too large)" in line
    assert sorted(tmp_path.iterdir()) == ([out] if existing else []) and not any(out.iterdir() if existing else [])


def test_data_shapes_on_a_full_tmpfs_leaves_no_dataset(small_tmpfs: Path) -> None:
    resize(small_tmpfs, 64 * 1024)
    out = small_tmpfs / "data"
    line = error_line(sdkit("data", "shapes", "-o", out, "--n", "400"))
    assert line.startswith(f"error: no space left on {small_tmpfs} (sdkit-test-") and "; nothing was kept: " in line
    assert list(small_tmpfs.iterdir()) == []
