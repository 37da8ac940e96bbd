"""PNGs from someone else: `sdkit replay` takes neither the output folder nor `allow_pickle` from the image and lists
the files it will use; a huge or malformed `sdkit` chunk, or a decompression-bomb header, exits 2 from `info` and
`replay` with one line, no traceback, nothing written."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from helpers import pixels, snapshot
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from untrusted_helpers import assert_refused, chunk, png_bytes, sdkit

SEED = 3


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_sd_dir: Path) -> Path:
    """An inpaint image written by sdkit (its recipe names an init image and a mask), in its own folder."""
    root = tmp_path_factory.mktemp("made")
    Image.new("RGB", (32, 32), "red").save(root / "init.png")
    Image.new("L", (32, 32), 255).save(root / "mask.png")
    proc = sdkit("generate", "a cat", "-m", tiny_sd_dir, "--steps", "2", "--seed", SEED, "--init-image",
                 root / "init.png", "--mask", root / "mask.png", "-o", root / "recorded-out")
    assert proc.returncode == 0, proc.stderr
    return root / "recorded-out" / f"00001-{SEED}.png"


def record_of(png: Path) -> dict:
    with Image.open(png) as img:
        return json.loads(img.text["sdkit"])


def write_with_text(source: Path, target: Path, text: str, *, zip_text: bool = False) -> Path:
    """`source`'s pixels with `text` as its sdkit chunk (tEXt, or zTXt when `zip_text`)."""
    info = PngInfo()
    info.add_text("sdkit", text, zip=zip_text)
    with Image.open(source) as img:
        img.save(target, pnginfo=info)
    return target


def test_replay_writes_to_outputs_not_the_recorded_folder_and_lists_its_files(made: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    recorded_before = snapshot(made.parent)
    proc = sdkit("replay", made, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(made.parent) == recorded_before  # nothing written where the image says
    out = work / "outputs" / f"00001-{SEED}.png"
    assert proc.stdout.strip() == "outputs/00001-3.png"
    assert (pixels(out) == pixels(made)).all()
    listed = [line for line in proc.stderr.splitlines() if line.startswith("replay: ")]
    root = made.parent.parent
    assert listed[0].startswith("replay: uses model ")
    assert f"replay: uses init image {(root / 'init.png').resolve()}" in listed
    assert f"replay: uses mask {(root / 'mask.png').resolve()}" in listed
    assert listed[-1] == f"replay: writes into {(work / 'outputs').resolve()}"


class Payload:
    """Unpickling this creates the file named in it: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled_model(tiny: Path, target: Path, payload_marker: Path | None = None) -> Path:
    """A copy of the tiny model whose UNet weights are a pickle (.bin): the same tensors, or a payload."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny, target)
    weights = target / "unet" / "diffusion_pytorch_model.safetensors"
    if payload_marker is None:
        torch.save(load_file(weights), weights.with_suffix(".bin"))
    else:
        weights.with_suffix(".bin").write_bytes(pickle.dumps(Payload(payload_marker)))
    weights.unlink()
    return target


def crafted_recipe(made: Path, target: Path, **changes) -> Path:
    record = record_of(made)
    record["recipe"].update({k: str(v) if isinstance(v, Path) else v for k, v in changes.items()})
    return write_with_text(made, target, json.dumps(record))


def test_replay_never_takes_allow_pickle_or_out_from_the_image(made: Path, tmp_path: Path, tiny_sd_dir: Path) -> None:
    marker = tmp_path / "payload-ran"
    model = pickled_model(tiny_sd_dir, tmp_path / "evil-model", payload_marker=marker)
    work = tmp_path / "work"
    work.mkdir()
    png = crafted_recipe(made, work / "evil.png", model=model, allow_pickle=True, out=tmp_path / "elsewhere")
    before = snapshot(tmp_path)
    assert_refused(sdkit("replay", png, cwd=work), "pickle", "--allow-pickle")
    assert not marker.exists()
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "elsewhere").exists() and not (work / "outputs").exists()


def test_replay_allow_pickle_comes_from_the_command_line(made: Path, tmp_path: Path, tiny_sd_dir: Path) -> None:
    model = pickled_model(tiny_sd_dir, tmp_path / "pickled-model")
    png = crafted_recipe(made, tmp_path / "pickled.png", model=model, out=tmp_path / "elsewhere", num_images=3)
    assert_refused(sdkit("replay", png, "-o", tmp_path / "o", cwd=tmp_path), "pickle", "--allow-pickle")
    proc = sdkit("replay", png, "--allow-pickle", "-o", tmp_path / "o", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"replay: uses model {model.resolve()} (folder" in proc.stderr
    assert [p.name for p in (tmp_path / "o").iterdir()] == [f"00001-{SEED}.png"]  # one image, whatever num_images says
    assert (pixels(tmp_path / "o" / f"00001-{SEED}.png") == pixels(made)).all()  # the same weights, pickled
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "outputs").exists()


def test_files_used_names_every_kind_of_input(tmp_path: Path) -> None:
    from sdkit.cli.commands import files_used
    from sdkit.models import ModelRef
    from sdkit.schema.generate import GenerateRecipe

    recipe = GenerateRecipe(prompt="x", lora=["a.safetensors:0.5"], embedding=["e.safetensors:tok"],
                            init_image="i.png", mask="m.png", control=["canny=c.png", "depth=d.png"],
                            controlnet=["depth=org/depth-net"], annotators_dir="ann", tiny_vae="org/taesd", out="o")
    lines = files_used(recipe, ModelRef("m", "hub", "org/model"))
    here = Path.cwd().resolve()
    assert lines == [
        "uses model org/model (hub)",
        f"uses LoRA {here / 'a.safetensors'} (weight 0.5)",
        f"uses embedding {here / 'e.safetensors'} (token tok)",
        f"uses init image {here / 'i.png'}",
        f"uses mask {here / 'm.png'}",
        f"uses canny control image {here / 'c.png'} with ControlNet the default canny ControlNet",
        f"uses depth control image {here / 'd.png'} with ControlNet org/depth-net",
        f"uses annotator weights from {here / 'ann'}",
        "uses tiny VAE org/taesd",
        f"writes into {here / 'o'}",
    ]


def _recipe_text(made: Path, change) -> str:
    record = record_of(made)
    change(record)
    return json.dumps(record)


def _set(path: tuple, value):
    def change(record: dict) -> None:
        node = record
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


BAD_TEXT = {  # case -> (text of the sdkit chunk from the made image's record, fragments of the message)
    "30 MB chunk": (lambda made: _recipe_text(made, _set(("recipe", "prompt"), "x" * 30_000_000)),
                    ("30,00", "characters", "1,048,576")),
    "JSON list": (lambda made: "[1, 2, 3]", ("JSON list, not an object",)),
    "recipe not a mapping": (lambda made: _recipe_text(made, _set(("recipe",), "steps: 2")),
                             ("recipe is a JSON string, not an object",)),
    "no recipe": (lambda made: _recipe_text(made, lambda r: r.pop("recipe")), ("has no recipe",)),
    "field of the wrong type": (lambda made: _recipe_text(made, _set(("recipe", "steps"), "many")),
                                ("(sdkit metadata)", "steps")),
    "model not a mapping": (lambda made: _recipe_text(made, _set(("model",), ["x"])), ("model is a JSON list",)),
    "sha256 not a string": (lambda made: _recipe_text(made, _set(("model", "sha256"), 7)), ("model.sha256",)),
    "nested 100000 deep": (lambda made: "[" * 100_000 + "]" * 100_000, ("not valid JSON",)),
}


@pytest.mark.parametrize("command", ["info", "replay"])
@pytest.mark.parametrize("case", sorted(BAD_TEXT))
def test_malformed_sdkit_chunk(case: str, command: str, made: Path, tmp_path: Path) -> None:
    make_text, fragments = BAD_TEXT[case]
    png = write_with_text(made, tmp_path / "bad.png", make_text(made))
    before = snapshot(tmp_path)
    recorded_before = snapshot(made.parent)
    assert_refused(sdkit(command, png, cwd=tmp_path), str(png), *fragments)
    assert snapshot(tmp_path) == before and snapshot(made.parent) == recorded_before


@pytest.mark.parametrize("command", ["info", "replay"])
def test_compressed_text_bomb(command: str, made: Path, tmp_path: Path) -> None:
    """30 MB of text in a 30 kB zTXt chunk: Pillow stops at its 1 MiB MAX_TEXT_CHUNK."""
    png = write_with_text(made, tmp_path / "ztxt.png", "x" * 30_000_000, zip_text=True)
    assert png.stat().st_size < 100_000
    before = snapshot(tmp_path)
    assert_refused(sdkit(command, png, cwd=tmp_path), str(png), "too large to read")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["info", "replay"])
def test_decompression_bomb_header(command: str, made: Path, tmp_path: Path) -> None:
    """A 200-byte PNG whose header claims 30000x30000 pixels, with a valid sdkit chunk: refused, nothing decoded."""
    text = chunk(b"tEXt", b"sdkit\0" + json.dumps(record_of(made)).encode())
    png = tmp_path / "bomb.png"
    png.write_bytes(png_bytes(30000, 30000, [], colour_type=2, before=text))
    before = snapshot(tmp_path)
    assert_refused(sdkit(command, png, cwd=tmp_path), str(png), "900,000,000 pixels", "67,108,864")
    assert snapshot(tmp_path) == before
