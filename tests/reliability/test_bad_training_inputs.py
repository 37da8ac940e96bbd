"""Training datasets and control images that are wrong: exit 2, one line naming the problem, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, snapshot
from PIL import Image


def dataset(root: Path, rows: list[dict], images: dict[str, bytes | None]) -> Path:
    root.mkdir(parents=True)
    for name, content in images.items():
        if content is None:
            Image.new("RGB", (16, 16), "red").save(root / name)
        else:
            (root / name).write_bytes(content)
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


CASES = {
    "empty-folder": ([], {}, "no metadata.jsonl"),
    "missing-caption": ([{"file_name": "a.png"}], {"a.png": None}, "text"),
    "empty-caption": ([{"file_name": "a.png", "text": ""}], {"a.png": None}, "a.png"),
    "missing-image": ([{"file_name": "gone.png", "text": "x"}], {}, "gone.png"),
    "corrupt-image": ([{"file_name": "bad.png", "text": "x"}], {"bad.png": b"\x89PNG\r\n\x1a\nbroken"}, "bad.png"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_dataset(case: str, tmp_path: Path, tiny_sd_dir: Path) -> None:
    rows, images, fragment = CASES[case]
    data = dataset(tmp_path / "data", rows, images) if case != "empty-folder" else (tmp_path / "data")
    data.mkdir(exist_ok=True)
    before = snapshot(tmp_path)
    result = invoke("train", "text-to-image", "-m", tiny_sd_dir, "--data-dir", data, "--output-dir", tmp_path / "out",
                    "--max-steps", "2")
    assert_user_error(result, fragment)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_missing_data_dir_and_bad_numbers(tmp_path: Path, tiny_sd_dir: Path) -> None:
    args = ["train", "text-to-image", "-m", tiny_sd_dir, "--output-dir", tmp_path / "out"]
    assert_user_error(invoke(*args, "--data-dir", tmp_path / "nope"), "nope")
    assert_user_error(invoke(*args, "--data-dir", tmp_path, "--max-steps", "0"), "--max-steps")
    assert_user_error(invoke(*args, "--data-dir", tmp_path, "--learning-rate", "-1"), "--learning-rate")
    assert_user_error(invoke(*args, "--data-dir", tmp_path, "--resume", tmp_path / "no-such-checkpoint"), "no-such-checkpoint")
    assert not (tmp_path / "out").exists()


def test_control_image_that_is_not_an_image(tmp_path: Path, tiny_sd_dir: Path) -> None:
    (tmp_path / "notes.png").write_text("not a picture")
    before = snapshot(tmp_path)
    assert_user_error(invoke("generate", "x", "-m", tiny_sd_dir, "--control", f"canny={tmp_path / 'notes.png'}",
                             "-o", tmp_path / "o"), "not a readable image")
    assert snapshot(tmp_path) == before
