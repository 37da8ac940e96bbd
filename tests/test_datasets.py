"""Datasets as people keep them: kohya's N_name/ folders (repeats, image.txt / image.caption, folder-name captions), a
plain folder of images with .txt captions, kohya's shuffle_caption / keep_tokens, and one-line errors naming the file
before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_user_error, invoke, snapshot
from PIL import Image

from sdkit.errors import UserError
from sdkit.training.datasets import read_dataset, repeated
from sdkit.training.text import shuffle_caption


def image(path: Path, caption: str | None = None, suffix: str = ".txt", size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    if caption is not None:
        path.with_suffix(suffix).write_text(caption + "\nsecond line is ignored, as kohya reads captions\n")
    return path


def test_kohya_folders_repeat_and_caption(tmp_path: Path) -> None:
    image(tmp_path / "kohya/10_sks dog/a.png", "sks dog, sitting")
    image(tmp_path / "kohya/10_sks dog/b.jpg", "sks dog, running", suffix=".caption")
    image(tmp_path / "kohya/2_dog/c.png")  # no caption files in the folder: its name is the caption (class token)
    image(tmp_path / "kohya/2_dog/d.png")
    (tmp_path / "kohya/notes").mkdir()  # not N_name: ignored
    rows = read_dataset(tmp_path / "kohya")
    assert [(r["file_name"].name, r["text"], r["repeats"]) for r in rows] == [
        ("a.png", "sks dog, sitting", 10), ("b.jpg", "sks dog, running", 10), ("c.png", "dog", 2), ("d.png", "dog", 2)]  # fmt: skip
    assert len(repeated(rows)) == 24 and repeated(rows)[:11] == [0] * 10 + [1]


def test_plain_folder_with_txt_captions(tmp_path: Path) -> None:
    image(tmp_path / "plain/x.png", "a red square")
    image(tmp_path / "plain/y.png", "a blue circle")
    rows = read_dataset(tmp_path / "plain")
    assert [(r["file_name"].name, r["text"], r["repeats"]) for r in rows] == [("x.png", "a red square", 1), ("y.png", "a blue circle", 1)]
    image(tmp_path / "bare/z.png")  # textual inversion captions such a folder from templates
    assert read_dataset(tmp_path / "bare", captions_required=False)[0]["text"] is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: image(d / "a.png", "x") and image(d / "b.png"), r"b\.png has no caption file \(b\.txt or b\.caption\)"),
        (lambda d: image(d / "a.png"), "1 images but no captions"),
        (lambda d: (d / "3_empty").mkdir(parents=True), r"kohya folder .*3_empty holds no images"),
        (lambda d: image(d / "0_none/a.png", "x"), "repeats its images 0 times"),
        (lambda d: image(d / "a.png", ""), r"caption file .*a\.txt is empty"),
        (lambda d: image(d / "a.png", "x") and (d / "a.png").write_bytes(b"not a png"), r"a\.png is not an image"),
        (lambda d: image(d / "2_x/a.png", "x") and image(d / "b.png", "y"), "kohya folders .*and loose images"),
        (lambda d: d.mkdir(parents=True), "no images and no metadata.jsonl"),
    ],
)
def test_dataset_errors_name_the_file(tmp_path: Path, make, message) -> None:
    make(tmp_path / "ds")
    with pytest.raises(UserError, match=message):
        read_dataset(tmp_path / "ds")


def test_shuffle_caption_keeps_the_first_tokens() -> None:
    caption = "sks dog, red collar, on grass, sunny, photo"
    shuffled = {shuffle_caption(caption, 1, torch.Generator().manual_seed(s)) for s in range(20)}
    assert len(shuffled) > 1 and all(s.startswith("sks dog, ") for s in shuffled)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in shuffled)
    assert shuffle_caption(caption, 5, torch.Generator()) == caption


def test_cli_trains_on_kohya_folders_and_refuses_a_missing_caption(tiny_sd_dir: Path, tmp_path: Path) -> None:
    for i in range(2):
        image(tmp_path / "kohya/3_sks shape" / f"{i}.png", f"sks shape, number {i}", size=(32, 32))
    base = ["train", "lora", "-m", tiny_sd_dir, "--max-steps", "2", "--train-batch-size", "2", "--threads", "1",
            "--checkpointing-steps", "1000", "--shuffle-caption", "--keep-tokens", "1"]  # fmt: skip
    done = invoke(*base, "--data", tmp_path / "kohya", "-o", tmp_path / "run")
    assert done.exit_code == 0, done.output
    assert (tmp_path / "run/pytorch_lora_weights.safetensors").is_file()
    image(tmp_path / "kohya/3_sks shape/2.png", size=(32, 32))  # no caption beside it
    before = snapshot(tmp_path)
    assert_user_error(invoke(*base, "--data", tmp_path / "kohya", "-o", tmp_path / "again"), "2.png has no caption file")
    assert snapshot(tmp_path) == before and not (tmp_path / "again").exists()
    result = invoke(*base, "--data", tmp_path / "kohya", "-o", tmp_path / "o", "--cache-text-embeddings")
    assert_user_error(result, "cache_text_embeddings cannot keep shuffled captions")
