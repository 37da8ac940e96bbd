"""Generation under faults: full disk, Ctrl-C mid-batch, concurrent writers, outputs confined to an output root."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import assert_user_error, invoke, snapshot
from PIL import Image

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def sdkit(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sdkit", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def _limit_file_size() -> None:  # runs in the child: any file over 2 kB fails with EFBIG, like a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))


def test_full_disk_is_a_clean_error_without_partial_files(tmp_path: Path, tiny_sd_dir: Path) -> None:
    proc = sdkit("generate", "a cat", "-m", tiny_sd_dir, "--steps", "2", "--seed", "1", "-o", tmp_path / "o",
                 preexec_fn=_limit_file_size)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith("error: no space left to write into")
    assert "Traceback" not in err and out == ""
    assert list((tmp_path / "o").iterdir()) == []  # the temp file was removed, nothing partial is left


def test_ctrl_c_mid_batch_keeps_finished_images(tmp_path: Path, tiny_sd_dir: Path) -> None:
    out = tmp_path / "o"
    # SIGINT back to its default in the child: a suite started in the background of a non-interactive shell inherits
    # SIGINT ignored, and Python then keeps ignoring it (the run went on to finish all its images, exit 0)
    proc = sdkit("generate", "a cat", "-m", tiny_sd_dir, "--steps", "4", "--seed", "1", "--num-images", "200", "-o", out,
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("*.png"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    written = sorted(out.iterdir())
    assert 2 <= len(written) < 200
    assert all(p.suffix == ".png" and not p.name.startswith(".") for p in written)  # no temp files left
    for p in written:
        with Image.open(p) as img:
            img.load()  # complete, readable PNGs
    assert stdout.split() == [str(p) for p in written]  # every kept file was reported


def test_concurrent_runs_into_one_folder_never_overwrite(tmp_path: Path, tiny_sd_dir: Path) -> None:
    out = tmp_path / "o"
    procs = [sdkit("generate", "a cat", "-m", tiny_sd_dir, "--steps", "2", "--seed", "5", "--num-images", "4", "-o", out)
             for _ in range(2)]
    reported = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        reported += stdout.split()
    files = sorted(out.glob("*.png"))
    assert len(files) == len(set(reported)) == 8  # 8 distinct files: nothing overwritten
    assert sorted(int(p.name[:5]) for p in files) == list(range(1, 9))


def test_output_root_refuses_dotdot_and_symlinks(tmp_path: Path, tiny_sd_dir: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    before = snapshot(tmp_path)
    for out in (f"{root}/../elsewhere", f"{root}/escape/sub"):
        recipe = root / "r.yaml"
        recipe.write_text(f"task: generate\nmodel: {tiny_sd_dir}\nprompt: x\nsteps: 2\nout: {out}\n")
        assert_user_error(invoke("run", recipe, "--output-root", root), "outside the output root")
        recipe.unlink()
    assert snapshot(tmp_path) == before
    assert "SDKIT_OUTPUT_ROOT" not in os.environ  # the option does not leak out of the command
