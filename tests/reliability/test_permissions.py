"""Finished files get the permissions the umask gives any new file (0644 under umask 022, 0600 under 077), folders
0755 / 0700: generated PNGs and control maps, datasets, LoRA files, checkpoints, model folders. A temp file's 0600
must not survive its rename."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
MODES = {0o022: (0o644, 0o755), 0o077: (0o600, 0o700), 0o002: (0o664, 0o775)}


def sdkit(umask: int, *args: object, module: str = "sdkit") -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=600, preexec_fn=lambda: os.umask(umask))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and everything under it, by path relative to `root`."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_modes(root: Path, umask: int) -> None:
    file_mode, dir_mode = MODES[umask]
    found = modes(root)
    wrong = {p: oct(m) for p, m in found.items() if m != (dir_mode if (root / p).is_dir() else file_mode)}
    assert not wrong, f"under umask {umask:03o} expected files {file_mode:o}, folders {dir_mode:o}: {wrong}"
    assert not [p for p in found if Path(p).name.startswith(".")], found  # no temp files left


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_everything_written_has_the_umask_modes(umask: int, tmp_path: Path, tiny_sd_dir: Path) -> None:
    data, gen, lora, model = tmp_path / "data", tmp_path / "gen", tmp_path / "lora", tmp_path / "model"
    sdkit(umask, "data", "shapes", "-o", data, "--n", "6", "--conditioning")
    sdkit(umask, "generate", "a red circle on a blue background", "--steps", "2", "-o", gen,
          "--control", f"canny={data / 'images' / '00000.png'}")  # fmt: skip
    sdkit(umask, "train", "lora", "--data-dir", data, "-o", lora, "--max-steps", "2", "--checkpointing-steps", "1",
          "--save-format", "kohya")  # fmt: skip
    sdkit(umask, "tiny-sd", model, module="sdkit.architectures")  # a diffusers model folder (safetensors writes 0600)

    assert len(list(gen.glob("*.png"))) == 2  # the image and its control map
    assert {p.name for p in lora.glob("*.safetensors")} == {"pytorch_lora_weights.safetensors", "lora.safetensors"}
    assert len(list((lora / "checkpoints").iterdir())) == 2 and (lora / "checkpoints" / "step-2" / "model.safetensors").is_file()
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    for root in (data, gen, lora, model):
        assert_modes(root, umask)


@pytest.mark.parametrize("umask", sorted(MODES), ids=lambda m: f"umask{m:03o}")
def test_atomic_writes_follow_the_umask(umask: int, tmp_path: Path) -> None:
    """The leaf helpers themselves, in a fresh process per umask (002 included: group-writable stays so)."""
    script = (
        "import sys; from pathlib import Path; from sdkit import atomic\n"
        "out = Path(sys.argv[1])\n"
        "atomic.write_text(out / 'a.txt', 'x')\n"
        "atomic.write_bytes(out / 'b.bin', b'y', overwrite=False)\n"
        "with atomic.staged_dir(out / 'folder') as tmp:\n"
        "    (tmp / 'sub').mkdir(mode=0o700)\n"
        "    (tmp / 'sub' / 'c.txt').write_text('z')\n"
        "    (tmp / 'sub' / 'c.txt').chmod(0o600)\n"
        "print(oct(atomic.umask()))\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, MODES[umask][1])
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=ENV, timeout=60,
                          preexec_fn=lambda: os.umask(umask))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == oct(umask)
    assert (out / "folder" / "sub" / "c.txt").read_text() == "z"
    assert_modes(out, umask)
