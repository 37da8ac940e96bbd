"""A dataset that lists a file which is not an image (a .txt) or an image that cannot be decoded: every trainer exits
2 naming the file, and writes nothing: no output folder, no recipe.yaml (they used to be written before the images
were decoded)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import snapshot
from PIL import Image

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TRAINERS = {
    "lora": ("train", "lora", "--data-dir", "{data}"),
    "dreambooth": ("train", "dreambooth", "--instance-data", "{data}", "--instance-prompt", "a sks shape"),
    "textual-inversion": ("train", "textual-inversion", "--data-dir", "{data}", "--token", "<zig>", "--init-token", "shape"),
    "text-to-image": ("train", "text-to-image", "-m", "shapes", "--data-dir", "{data}"),
    "controlnet": ("train", "controlnet", "-m", "shapes", "--data-dir", "{data}"),
}


def png(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 64).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def dataset(root: Path, bad: str) -> tuple[Path, str]:
    """An imagefolder of 2 good rows and one bad one; returns the folder and the bad file's name."""
    root.mkdir()
    good = png()
    for name in ("a.png", "b.png", "map.png"):
        (root / name).write_bytes(good)
    if bad == "text-file":
        name = "notes.txt"
        (root / name).write_text("a caption that was meant for another column\n")
    else:  # a PNG whose header reads fine but whose pixel data stops halfway
        name = "cut.png"
        data = png()
        (root / name).write_bytes(data[: len(data) // 2])
    rows = [{"file_name": f, "text": "a <zig> red circle on a blue background", "conditioning_image": "map.png"}
            for f in ("a.png", "b.png", name)]  # fmt: skip
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, name


@pytest.mark.parametrize("bad", ["text-file", "truncated-image"])
@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_bad_dataset_row_writes_nothing(trainer: str, bad: str, tmp_path: Path) -> None:
    data, name = dataset(tmp_path / "data", bad)
    out = tmp_path / "out"
    args = [a.format(data=data) for a in TRAINERS[trainer]]
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "sdkit", *args, "-o", str(out), "--max-steps", "1"],
                          capture_output=True, text=True, env=ENV, timeout=600)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert str(data / name) in lines[0] and ("not an image" in lines[0] or "cannot be read" in lines[0]), lines[0]
    assert done.stdout == ""
    assert not out.exists()  # no recipe.yaml, no folder
    assert snapshot(tmp_path) == before
