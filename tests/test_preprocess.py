"""`sdkit preprocess` and `sdkit.control`: every control type through the real CLI on random-weight local annotators,
the option/weight/input errors, and the default ControlNet table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from control_weights import build_annotators
from helpers import assert_user_error, invoke, snapshot
from PIL import Image

from sdkit.control import CONTROL_TYPES, DETECTORS, default_controlnet, preprocess
from sdkit.errors import UserError

SIZE = (72, 56)  # not square, not a multiple of 64: the map must still come back at exactly this size
NO_DETECT_RESOLUTION = ("canny", "depth", "seg")
CONSTANT_WITH_RANDOM_WEIGHTS = ("openpose", "scribble")  # no pose found / everything past the scribble threshold


@pytest.fixture(scope="session")
def annotators(tmp_path_factory) -> Path:
    return build_annotators(tmp_path_factory.mktemp("annotators"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from sdkit.data.shapes import Sample, render

    image = render(Sample("triangle", "red", "blue", 28, 30, 30, canvas=64)).resize(SIZE)
    path = tmp_path_factory.mktemp("src") / "source.png"
    image.save(path)
    return path


def _small(kind: str) -> list[str]:
    return [] if kind in NO_DETECT_RESOLUTION else ["-p", "detect_resolution=64"]


@pytest.mark.parametrize("kind", CONTROL_TYPES)
def test_every_type_through_the_cli(kind, annotators, source, tmp_path):
    out = tmp_path / "map.png"
    result = invoke("preprocess", kind, source, "-o", out, "--annotators-dir", annotators, *_small(kind))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    with Image.open(out) as image:
        assert image.size == SIZE and image.mode == "RGB"
        record = json.loads(image.text["sdkit-preprocess"])
        pixels = np.asarray(image)
    assert record["type"] == kind
    if kind not in CONSTANT_WITH_RANDOM_WEIGHTS:
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1, f"{kind} map is constant"


def test_seg_uses_the_ade20k_palette(annotators, source):
    from controlnet_aux.util import ade_palette

    colours = {
        tuple(c)
        for c in np.unique(
            np.asarray(preprocess("seg", Image.open(source), annotators_dir=annotators)).reshape(-1, 3), axis=0
        )
    }
    assert colours <= {tuple(c) for c in ade_palette()}


def test_canny_matches_the_training_maps_and_follows_thresholds(source, tmp_path):
    from sdkit.data.shapes import read_metadata, write_dataset

    data = write_dataset(tmp_path / "data", 3, seed=1, conditioning=True)  # the maps shapes-canny was trained on
    for row in read_metadata(data):
        image = Image.open(data / str(row["file_name"]))
        made = np.asarray(Image.open(data / str(row["conditioning_image"])))
        assert np.array_equal(np.asarray(preprocess("canny", image)), made)
    image = Image.open(source)
    edges = np.asarray(preprocess("canny", image.convert("L").convert("RGBA")))  # any mode in, RGB out
    assert edges.shape == (SIZE[1], SIZE[0], 3)
    soft = Image.new("RGB", SIZE, (120, 120, 120))  # a faint square: the thresholds decide whether it has edges
    soft.paste((128, 128, 128), (20, 15, 50, 40))
    loose = np.asarray(preprocess("canny", soft, low_threshold=5, high_threshold=10)).sum()
    strict = np.asarray(preprocess("canny", soft, low_threshold=100, high_threshold=200)).sum()
    assert loose > strict


def test_shuffle_is_seeded(source):
    image = Image.open(source)
    a, b, c = (np.asarray(preprocess("shuffle", image, detect_resolution=64, cell=16, seed=s)) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_annotators_from_the_environment(annotators, source, tmp_path, monkeypatch):
    monkeypatch.setenv("SDKIT_ANNOTATORS", str(annotators))
    result = invoke("preprocess", "hed", source, "-o", tmp_path / "hed.png", "-p", "detect_resolution=64")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["cany", "{src}", "-o", "{out}"], ["unknown control type 'cany'", "canny, openpose"]),
        (["canny", "{src}", "-o", "{out}", "-p", "low=3"], ["no option 'low'", "low_threshold, high_threshold"]),
        (["canny", "{src}", "-o", "{out}", "-p", "low_threshold=220"], ["above high_threshold"]),
        (["canny", "{src}", "-o", "{out}", "-p", "nonsense"], ["not KEY=VALUE"]),
        (["hed", "{src}", "-o", "{out}"], ["ControlNetHED.pth", "lllyasviel/Annotators", "offline", "--annotators-dir"]),
        (["depth", "{src}", "-o", "{out}"], ["Intel/dpt-hybrid-midas", "--annotators-dir"]),
        (["hed", "{src}", "-o", "{out}", "--annotators-dir", "{empty}"], ["ControlNetHED.pth not found", "--annotators-dir"]),
        (["hed", "{src}", "-o", "{out}", "--annotators-dir", "{missing}"], ["--annotators-dir", "is not a folder"]),
        (["canny", "{txt}", "-o", "{out}"], ["IMAGE", "not a readable image"]),
        (["canny", "{missing}", "-o", "{out}"], ["IMAGE", "no such file"]),
        (["canny", "{src}", "-o", "{dir}/map.jpg"], ["ending in .png"]),
        (["canny", "{src}", "-o", "{existing}"], ["exists", "--overwrite"]),
    ],
    ids=["type", "option", "option-value", "option-syntax", "hub-offline", "hub-offline-transformers", "local-missing",
         "no-annotators-dir", "not-an-image", "no-image", "not-png", "existing-output"],
)  # fmt: skip
def test_errors_exit_2_with_one_line_and_write_nothing(args, fragments, source, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "existing.png").write_bytes(b"keep me")
    names = {
        "src": source, "out": tmp_path / "out.png", "empty": empty, "txt": tmp_path / "notes.txt", "dir": tmp_path,
        "missing": tmp_path / "missing.png", "existing": tmp_path / "existing.png",
    }  # fmt: skip
    before = snapshot(tmp_path, source.parent)
    result = invoke("preprocess", *[a.format(**names) for a in args])
    assert_user_error(result, *fragments)
    assert snapshot(tmp_path, source.parent) == before


def test_default_controlnets():
    assert default_controlnet("canny", "sd15") == "lllyasviel/control_v11p_sd15_canny"
    assert default_controlnet("depth", "sd15") == "lllyasviel/control_v11f1p_sd15_depth"
    assert default_controlnet("hed", "sd15") == "lllyasviel/control_v11p_sd15_softedge"
    assert default_controlnet("canny", "sdxl") == "diffusers/controlnet-canny-sdxl-1.0"
    assert default_controlnet("openpose", "sdxl") == "thibaud/controlnet-openpose-sdxl-1.0"
    assert default_controlnet("canny", "shapes") == "shapes-canny"
    for kind in CONTROL_TYPES:
        assert default_controlnet(kind, "sd15").startswith("lllyasviel/control_v11")
    with pytest.raises(UserError, match="no default seg ControlNet for sdxl.*--controlnet seg=MODEL"):
        default_controlnet("seg", "sdxl")
    with pytest.raises(UserError, match="unknown model family 'sd3'.*sd15, sdxl, shapes"):
        default_controlnet("canny", "sd3")
    with pytest.raises(UserError, match="unknown control type"):
        default_controlnet("pose", "sd15")


def test_table_lists_weights_for_every_weighted_type():
    assert tuple(DETECTORS) == CONTROL_TYPES
    for kind, detector in DETECTORS.items():
        assert (detector.repo is None) == (kind in ("canny", "shuffle")), kind
        assert detector.files or detector.repo is None, kind
