"""The synthetic shapes world: determinism, splits, metadata, conditioning files, atomic writing, schema checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from sdkit.data import shapes
from sdkit.data.shapes import (
    BASE_SHAPES,
    COLOR_NAMES,
    HELD_OUT,
    MORE_SHAPES,
    SHAPES,
    Sample,
    caption,
    read_metadata,
    render,
    render_mask,
    sample_world,
    vocabulary_words,
    write_dataset,
)
from sdkit.errors import UserError
from sdkit.schema.data import ShapesDataRecipe
from sdkit.tasks import data_shapes


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_writes_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", 12, seed=3, conditioning=True)
    b = write_dataset(tmp_path / "b", 12, seed=3, conditioning=True)
    c = write_dataset(tmp_path / "c", 12, seed=4, conditioning=True)
    assert _digest(a) == _digest(b)
    assert len(_digest(a)) == 1 + 3 * 12
    assert _digest(a)["metadata.jsonl"] != _digest(c)["metadata.jsonl"]
    assert _digest(a)["images/00000.png"] != _digest(c)["images/00000.png"]


def test_metadata_columns_captions_and_images(tmp_path: Path) -> None:
    out = write_dataset(tmp_path / "ds", 20, seed=0, size=48)
    rows = read_metadata(out)
    assert len(rows) == 20
    words = set(vocabulary_words())
    for row in rows:
        assert set(row) == {"file_name", "text", "shape", "color", "background", "x", "y", "size", "pattern"}
        sample = Sample(**{k: row[k] for k in ("shape", "color", "background", "x", "y", "size", "pattern")}, canvas=48)
        assert row["text"] == sample.text
        assert set(str(row["text"]).split()) <= words
        assert row["shape"] in BASE_SHAPES and row["pattern"] == "solid"
        assert row["color"] != row["background"]
        with Image.open(out / str(row["file_name"])) as img:
            assert img.size == (48, 48) and img.mode == "RGB"
            assert np.array_equal(np.asarray(img), np.asarray(render(sample)))
        lo, hi = round(0.35 * 48), round(0.65 * 48)
        assert lo <= int(row["size"]) <= hi


def test_caption_noise_names_wrong_attributes_at_its_rate_and_keeps_the_truth(tmp_path: Path) -> None:
    clean = read_metadata(write_dataset(tmp_path / "clean", 400, seed=5))
    noisy_dir = write_dataset(tmp_path / "noisy", 400, seed=5, caption_noise=0.3)
    noisy = read_metadata(noisy_dir)
    assert read_metadata(write_dataset(tmp_path / "again", 400, seed=5, caption_noise=0.3)) == noisy
    with Image.open(noisy_dir / "images/00007.png") as a, Image.open(tmp_path / "clean/images/00007.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # the noise touches captions only
    held = {f"{c} {s}" for c, s in HELD_OUT}
    wrong = {"shape": 0, "color": 0, "background": 0}
    for c, n in zip(clean, noisy, strict=True):
        assert n["true_text"] == c["text"] and {k: n[k] for k in c if k != "text"} == {k: c[k] for k in c if k != "text"}
        words = str(n["text"]).split()
        said = {"color": words[1], "shape": words[2], "background": words[5]}
        assert said["color"] != said["background"] and f"{said['color']} {said['shape']}" not in held
        assert said["shape"] in BASE_SHAPES
        for key in wrong:
            wrong[key] += said[key] != n[key]
    for key, count in wrong.items():  # 30 % each; binomial sd 2.3 % at n=400
        assert 0.22 < count / 400 < 0.38, (key, count)


def test_generic_noun_replaces_the_shape_name_at_its_rate_and_keeps_the_truth(tmp_path: Path) -> None:
    clean = read_metadata(write_dataset(tmp_path / "clean", 400, seed=5, shapes=[*BASE_SHAPES, *MORE_SHAPES]))
    generic = read_metadata(write_dataset(tmp_path / "noun", 400, seed=5, shapes=[*BASE_SHAPES, *MORE_SHAPES], generic_noun=0.25))
    said = 0
    for c, g in zip(clean, generic, strict=True):
        assert g["true_text"] == c["text"] and g["shape"] == c["shape"]
        if g["text"] != c["text"]:
            assert g["text"] == caption("shape", str(c["color"]), str(c["background"]))
            said += 1
    assert 0.17 < said / 400 < 0.33, said  # 25 %; binomial sd 2.2 % at n=400
    # caption noise and the generic noun combine; without the noun, noisy captions are what they were
    both = read_metadata(write_dataset(tmp_path / "both", 400, seed=5, caption_noise=0.3, generic_noun=0.25))
    noisy = read_metadata(write_dataset(tmp_path / "noisy", 400, seed=5, caption_noise=0.3))
    assert [r["text"] for r in noisy] == [r["text"] for r in read_metadata(write_dataset(tmp_path / "n2", 400, seed=5, caption_noise=0.3, generic_noun=0.0))]
    for n, b in zip(noisy, both, strict=True):
        words_n, words_b = str(n["text"]).split(), str(b["text"]).split()
        assert words_b[2] in (words_n[2], "shape") and words_b[:2] + words_b[3:] == words_n[:2] + words_n[3:]


def test_more_shapes_render_as_distinct_outlines() -> None:
    """Each shape's mask differs from every other's at the same place and size (no two outlines coincide)."""
    masks = {shape: np.asarray(render_mask(Sample(shape, "red", "blue", 32, 32, 40))) > 0 for shape in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.9, (a, b, iou)
    assert masks["cross"][32, 14:50].all() and not masks["cross"][15, 15:20].any()  # an arm spans the box, corners empty
    assert masks["crescent"][32, 14:28].all() and not masks["crescent"][32, 36:44].any()  # the bite is on the right
    assert masks["heart"][45, 30:34].all() and masks["heart"][17, 20:24].all() and not masks["heart"][17, 30:34].any()


def test_captions_are_regular() -> None:
    assert Sample("circle", "red", "blue", 32, 32, 30).text == "a red circle on a blue background"
    assert (
        Sample("star", "orange", "white", 32, 32, 30, "striped").text == "an orange striped star on a white background"
    )
    words = vocabulary_words()
    assert words == sorted(words)
    assert {"sks", "shape", "star", "striped", "an", *COLOR_NAMES, *SHAPES} <= set(words)


def test_held_out_combinations_are_absent_from_train_and_only_in_heldout() -> None:
    rng = np.random.default_rng(0)
    train = sample_world(rng, 3000)
    pairs = {(s.color, s.shape) for s in train}
    assert not pairs & set(HELD_OUT)
    # every colour and every shape is still seen in training, and every other combination occurs
    assert {s.color for s in train} == set(COLOR_NAMES)
    assert {s.shape for s in train} == set(BASE_SHAPES)
    assert len(pairs) == len(COLOR_NAMES) * len(BASE_SHAPES) - len(HELD_OUT)
    held = sample_world(rng, 200, split="heldout")
    assert {(s.color, s.shape) for s in held} == set(HELD_OUT)
    assert "star" not in {s.shape for s in train}


def test_samples_stay_inside_the_canvas_and_cover_a_sane_area() -> None:
    for canvas in (32, 64, 128):
        for s in sample_world(np.random.default_rng(1), 300, shapes=SHAPES, split="all", pattern="any", canvas=canvas):
            mask = np.asarray(render_mask(s)) > 0
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            assert 0.03 < mask.mean() < 0.5


def test_striped_fill_uses_colour_and_its_shade() -> None:
    s = Sample("square", "blue", "white", 32, 32, 36, "striped")
    rgb = np.asarray(render(s)).reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in rgb}
    assert shapes.COLORS["blue"] in colours and shapes.shade("blue") in colours
    solid = {
        tuple(int(v) for v in c)
        for c in np.asarray(render(Sample("square", "blue", "white", 32, 32, 36))).reshape(-1, 3)
    }
    assert shapes.shade("blue") not in solid


def test_conditioning_files_are_edge_maps_and_masks(tmp_path: Path) -> None:
    out = write_dataset(tmp_path / "cn", 6, seed=1, conditioning=True)
    for row in read_metadata(out):
        edges = np.asarray(Image.open(out / str(row["conditioning_image"])))
        mask = np.asarray(Image.open(out / str(row["mask_image"])))
        assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255}
        assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
        edge = edges[:, :, 0] > 0
        # edges lie on the mask boundary (within one pixel), and the boundary is mostly found
        m = mask > 0
        grown = np.zeros_like(m)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= np.roll(np.roll(m, dy, 0), dx, 1)
        shrunk = ~np.zeros_like(m)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shrunk &= np.roll(np.roll(m, dy, 0), dx, 1)
        boundary = grown & ~shrunk
        assert edge.sum() > 0.5 * (m & ~shrunk).sum()
        assert (edge & boundary).sum() >= 0.95 * edge.sum()


def test_refuses_non_empty_directory_and_leaves_no_temp_dirs(tmp_path: Path) -> None:
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty directory"):
        write_dataset(target, 3)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    write_dataset(empty, 2)
    assert (empty / "metadata.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(shapes, "_write_files", boom)
    with pytest.raises(OSError):
        write_dataset(tmp_path / "x", 3)
    assert list(tmp_path.iterdir()) == []


def test_bad_names_raise_one_line_user_errors() -> None:
    with pytest.raises(UserError, match="unknown shape 'octagon': choose from circle, square"):
        sample_world(np.random.default_rng(0), 1, shapes=["octagon"])
    with pytest.raises(UserError, match="both red"):
        Sample("circle", "red", "red", 32, 32, 20)
    with pytest.raises(UserError, match="leaves the 64 px canvas"):
        Sample("circle", "red", "blue", 5, 32, 20)
    with pytest.raises(UserError, match="no colour x shape"):
        sample_world(np.random.default_rng(0), 1, shapes=["star"], split="heldout")


def test_schema_defaults_and_run(tmp_path: Path) -> None:
    recipe = ShapesDataRecipe(out=tmp_path / "r", n=4, colors=["red", "blue"], pattern="any", split="all")
    assert recipe.size == 64 and recipe.seed == 0 and recipe.shapes is None and not recipe.conditioning
    out = data_shapes.run(recipe)
    rows = read_metadata(out)
    assert len(rows) == 4 and {r["color"] for r in rows} <= {"red", "blue"}
    assert recipe.generic_noun == 0.0 and all("true_text" not in r for r in rows)
    rows = read_metadata(data_shapes.run(ShapesDataRecipe(out=tmp_path / "noun", n=4, shapes=["heart"], generic_noun=1.0)))
    assert {r["shape"] for r in rows} == {"heart"} and all(str(r["text"]).split()[2] == "shape" for r in rows)
    assert all(field.description for field in ShapesDataRecipe.model_fields.values())


def test_the_task_keeps_the_same_dataset_and_refuses_another(tmp_path: Path) -> None:
    """Running a recipe file again keeps a dataset written from the same recipe; another recipe into the same folder
    (another seed) is refused, never taken as done: the rows are compared, not just counted."""
    recipe = ShapesDataRecipe(out=tmp_path / "d", n=3, seed=1, conditioning=True)
    out = data_shapes.run(recipe)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    assert data_shapes.run(recipe) == out
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    with pytest.raises(UserError, match="already exists and is not an empty directory"):
        data_shapes.run(recipe.model_copy(update={"seed": 2}))
    (out / "masks" / "00001.png").unlink()  # the same rows, a file missing: not the dataset the recipe describes
    with pytest.raises(UserError, match="already exists"):
        data_shapes.run(recipe)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"shapes": ["circle", "octagon"]},
            "unknown shape 'octagon': choose from circle, square, triangle, diamond, pentagon, hexagon, cross, heart, crescent, arrow, star",
        ),
        ({"colors": ["teal"]}, "unknown colour 'teal': choose from red, orange"),
        ({"backgrounds": ["red"], "colors": ["red"]}, "no background differs from red"),
        ({"size": 60}, "multiple of 8"),
        ({"size": 1024}, "less than or equal to 512"),
        ({"n": 0}, "greater than or equal to 1"),
        ({"pattern": "dotted"}, "solid"),
        ({"caption_noise": 1.0}, "less than or equal to 0.9"),
        ({"colour": ["red"]}, "Extra inputs are not permitted"),
    ],
)
def test_schema_rejects_bad_values(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"out": tmp_path / "o", "n": 1}
    with pytest.raises(ValidationError) as err:
        ShapesDataRecipe(**{**base, **kwargs})
    first = err.value.errors()[0]["msg"]
    assert message in str(err.value)
    assert "\n" not in first
