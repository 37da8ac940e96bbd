"""Images from someone else: a decompression-bomb header and a real 12000x12000 PNG are refused from their header,
before decoding, whether given as init image, mask, control image, an image of a training dataset or preprocess's
IMAGE; a 16-bit PNG is scaled, not clipped to white."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import snapshot
from PIL import Image
from untrusted_helpers import assert_refused, png_bytes, sdkit

FAST = ["--steps", "2", "--seed", "1"]


def bomb(path: Path) -> Path:
    """69 bytes whose header claims 30000x30000 RGB pixels (2.7 GB decoded)."""
    path.write_bytes(png_bytes(30000, 30000, [b"\0" * 30], colour_type=2))
    return path


def flat_gray(path: Path, width: int, height: int, level: int = 128) -> Path:
    """A valid 8-bit grayscale PNG of one colour, streamed row by row (12000x12000 is 144 MB raw, ~140 kB on disk)."""
    path.write_bytes(png_bytes(width, height, (bytes([level]) * width for _ in range(height))))
    return path


def sixteen_bit(path: Path, values: np.ndarray) -> Path:
    """A 16-bit PNG of `values` (uint16, HxW grayscale or HxWx3 RGB), written chunk by chunk."""
    colour_type = 0 if values.ndim == 2 else 2
    rows = (row.astype(">u2").tobytes() for row in values)
    path.write_bytes(png_bytes(values.shape[1], values.shape[0], rows, bit_depth=16, colour_type=colour_type))
    return path


def test_the_png_writer_makes_images_pillow_reads(tmp_path: Path) -> None:
    with Image.open(flat_gray(tmp_path / "flat.png", 40, 24, level=77)) as img:
        assert (img.mode, img.size) == ("L", (40, 24)) and (np.asarray(img) == 77).all()
    values = np.arange(12 * 10 * 3, dtype=np.uint16).reshape(12, 10, 3) * 181
    with Image.open(sixteen_bit(tmp_path / "rgb16.png", values)) as img:
        assert img.mode == "RGB" and (np.asarray(img) == values >> 8).all()  # Pillow keeps the high byte
    with Image.open(sixteen_bit(tmp_path / "g16.png", values[..., 0])) as img:
        assert img.mode == "I;16" and (np.asarray(img) == values[..., 0]).all()


@pytest.fixture(scope="module")
def oversized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with bomb.png and huge.png (made once: the 12000x12000 one takes a second to compress)."""
    root = tmp_path_factory.mktemp("oversized")
    bomb(root / "bomb.png")
    flat_gray(root / "huge.png", 12000, 12000)
    return root


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    Image.new("RGB", (32, 32), "red").save(tmp_path / "init.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "mask.png")
    return tmp_path


CASES = {  # flags -> fragments of the message
    "init bomb": (["--init-image", "{o}/bomb.png"], ["--init-image", "bomb.png claims 900,000,000 pixels"]),
    "init 12000x12000": (["--init-image", "{o}/huge.png"], ["--init-image", "huge.png is 12000x12000 (144,000,000 pixels)"]),
    "mask bomb": (["--init-image", "{w}/init.png", "--mask", "{o}/bomb.png"], ["--mask", "900,000,000 pixels"]),
    "mask 12000x12000": (["--init-image", "{w}/init.png", "--mask", "{o}/huge.png"], ["--mask", "12000x12000"]),
    "control bomb": (["--control", "canny={o}/bomb.png"], ["--control", "900,000,000 pixels"]),
    "control 12000x12000": (["--control", "canny={o}/huge.png"], ["--control", "12000x12000"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_oversized_image_is_refused_before_decoding(case: str, work: Path, oversized: Path, tiny_sd_dir: Path) -> None:
    flags, fragments = CASES[case]
    before = snapshot(work, oversized)
    args = [a.replace("{w}", str(work)).replace("{o}", str(oversized)) for a in flags]
    proc = sdkit("generate", "a cat", "-m", tiny_sd_dir, *FAST, *args, "-o", work / "out", cwd=work)
    line = assert_refused(proc, *fragments, "more than the limit of 67,108,864 (8192x8192)")
    assert "downscale" in line
    assert snapshot(work, oversized) == before and not (work / "out").exists()


def test_sixteen_bit_images_match_their_eight_bit_version(tmp_path: Path) -> None:
    """16-bit values p8 * 257 + noise (within half a level of p8) load within 1 level of the 8-bit picture p8."""
    from sdkit.images import load_image

    rng = np.random.default_rng(0)
    p8 = rng.integers(0, 256, (24, 32, 3)).astype(np.uint16)
    noisy = np.clip(p8.astype(int) * 257 + rng.integers(-128, 129, p8.shape), 0, 65535).astype(np.uint16)
    gray = np.asarray(load_image(sixteen_bit(tmp_path / "g16.png", noisy[..., 0]), "init image"), dtype=int)
    assert gray.shape == (24, 32, 3) and np.abs(gray - p8[..., :1]).max() <= 1
    mask = np.asarray(load_image(tmp_path / "g16.png", "mask", mode="L"), dtype=int)
    assert np.abs(mask - p8[..., 0]).max() <= 1
    rgb = np.asarray(load_image(sixteen_bit(tmp_path / "rgb16.png", noisy), "init image"), dtype=int)
    assert np.abs(rgb - p8).max() <= 1


def test_sixteen_bit_init_image_gives_the_eight_bit_result(tmp_path: Path, tiny_sd_dir: Path) -> None:
    """img2img from a 16-bit grayscale PNG (exactly p8 * 257) gives the same pixels as from the 8-bit PNG p8."""
    p8 = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    Image.fromarray(p8).save(tmp_path / "g8.png")
    sixteen_bit(tmp_path / "g16.png", p8.astype(np.uint16) * 257)
    images = {}
    for name in ("g8", "g16"):
        proc = sdkit("generate", "a cat", "-m", tiny_sd_dir, *FAST, "--strength", "0.5", "--init-image",
                     tmp_path / f"{name}.png", "-o", tmp_path / name, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        with Image.open(tmp_path / name / "00001-1.png") as img:
            images[name] = np.asarray(img.convert("RGB"))
    assert (images["g8"] == images["g16"]).all()


def dataset(root: Path, oversized_png: Path, layout: str) -> Path:
    """Three good 32 px images and the oversized one, as a plain folder with .txt captions or an imagefolder."""
    root.mkdir()
    names = [f"{i}.png" for i in range(3)] + ["big.png"]
    for name in names[:3]:
        Image.new("RGB", (32, 32), "red").save(root / name)
    (root / "big.png").write_bytes(oversized_png.read_bytes())
    for name in names:
        if layout == "plain":
            (root / name).with_suffix(".txt").write_text("a red circle")
    if layout == "imagefolder":
        (root / "metadata.jsonl").write_text("".join(f'{{"file_name": "{n}", "text": "a red circle"}}\n' for n in names))
    return root


TRAINING = {  # case -> (task, data flag, layout, oversized file, message fragment)
    "lora plain bomb": ("lora", "--data", "plain", "bomb.png", "big.png claims 900,000,000 pixels"),
    "lora plain 12000x12000": ("lora", "--data", "plain", "huge.png", "big.png is 12000x12000 (144,000,000 pixels)"),
    "text-to-image imagefolder bomb": ("text-to-image", "--data", "imagefolder", "bomb.png", "900,000,000 pixels"),
    "textual-inversion plain 12000x12000": ("textual-inversion", "--data", "plain", "huge.png", "12000x12000"),
}


@pytest.mark.parametrize("case", sorted(TRAINING))
def test_oversized_training_image_is_refused_before_training(case: str, tmp_path: Path, oversized: Path) -> None:
    """A training dataset is someone else's images too: past the limit, refused from the header, nothing written."""
    task, flag, layout, source, fragment = TRAINING[case]
    data = dataset(tmp_path / "data", oversized / source, layout)
    extra = ["--token", "<x>", "--init-token", "circle"] if task == "textual-inversion" else []
    before = snapshot(data)
    proc = sdkit("train", task, "-m", "shapes", flag, data, *extra, "--max-steps", "1", "-o", tmp_path / "out", cwd=tmp_path)
    assert_refused(proc, fragment, "more than the limit of 67,108,864 (8192x8192)", "downscale")
    assert snapshot(data) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["bomb.png", "huge.png"])
def test_oversized_image_to_preprocess_is_refused(source: str, tmp_path: Path, oversized: Path) -> None:
    proc = sdkit("preprocess", "canny", oversized / source, "-o", tmp_path / "map.png", cwd=tmp_path)
    assert_refused(proc, f"IMAGE {oversized / source}", "more than the limit of 67,108,864 (8192x8192)")
    assert not (tmp_path / "map.png").exists()
