"""`accelerate launch -m sdkit run` with 2 CPU processes (gloo) writes exactly what a 1-process run writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RECIPE = """\
defaults: {{model: {model}, steps: 2, width: 32, height: 32, device: cpu}}
jobs:
  - name: sweep
    task: generate
    prompt: a cat
    out: {out}
    num_images: 3
    seed: 10
    sweep: {{cfg: [1, 5]}}
  - task: generate
    prompt: a dog
    out: {out}
    num_images: 2          # no seed: rank 0 draws one and broadcasts it
"""


def _files(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    out = {}
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as img:
            record = json.loads(img.text["sdkit"]) if "sdkit" in img.text else {}
            record.get("recipe", {}).pop("out", None)
            out[path.name] = (np.asarray(img.convert("RGB")), record)
    return out


@pytest.mark.slow  # multi-process or end to end
def test_two_processes_match_one(tmp_path: Path, tiny_sd_dir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(RECIPE.format(model=tiny_sd_dir, out=tmp_path / name))
    single = subprocess.run([sys.executable, "-m", "sdkit", "run", str(tmp_path / "one.yaml")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    double = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_cpu_threads_per_process", "1",
                             "-m", "sdkit", "run", str(tmp_path / "two.yaml")], env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    assert "distributed run: MULTI_CPU with 2 processes" in double.stderr  # a "2-process" run that is really one proves nothing
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == len(two) == 9  # 8 images + the sweep grid
    randomly_seeded = [n for n in two if n.startswith(("00007-", "00008-"))]
    seed = int(randomly_seeded[0].split("-")[1].split(".")[0])
    assert randomly_seeded == [f"00007-{seed}.png", f"00008-{seed + 1}.png"]  # both ranks used one broadcast seed
    one = {k: v for k, v in one.items() if not k.startswith(("00007-", "00008-"))}
    assert set(one) <= set(two)
    for name in one:
        assert (one[name][0] == two[name][0]).all(), name
        assert one[name][1] == two[name][1], name
