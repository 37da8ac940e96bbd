"""`sdkit eval clip-score`, `clip-directional` and `fid`: each number checked against its definition computed here by
other means (transformers' CLIPModel forward; torchmetrics' own FID/KID on a small feature network), on a tiny CLIP
trained on the shapes world (tests/tiny_clip.py) and on shapes-world renders."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import SDKIT, assert_user_error, in_terminal, invoke, snapshot
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_terminal import assert_clean_run, assert_progress

RED = "a red circle on a blue background"
GREEN = "a green square on a white background"
A1111 = "a yellow triangle on a purple background"


def reference_scores(clip_dir: Path, images: list[Path], prompts: list[str]) -> list[float]:
    """100 x max(cos, 0) from the image_embeds / text_embeds of CLIPModel's own forward, one image at a time."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    out = []
    for path, prompt in zip(images, prompts, strict=True):
        with Image.open(path) as img, torch.no_grad():
            embeds = model(**processor(text=[prompt], images=[img.convert("RGB")], return_tensors="pt", padding=True))
        image, text = embeds.image_embeds[0].numpy(), embeds.text_embeds[0].numpy()
        cos = float(image @ text / np.linalg.norm(image) / np.linalg.norm(text))
        out.append(100 * max(cos, 0.0))
    return out


def report_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_clip_score_is_the_formula_on_the_models_own_embeddings(tmp_path: Path, tiny_clip_dir: Path) -> None:
    out = tmp_path / "images"
    for prompt, n in ((RED, 2), (GREEN, 1)):
        assert invoke("generate", prompt, "--steps", "8", "--cfg", "5", "--seed", "1", "--num-images", n, "-o", out).exit_code == 0
    info = PngInfo()  # an image A1111 wrote: the prompt comes from its infotext
    info.add_text("parameters", f"{A1111}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1")
    Image.new("RGB", (64, 64), (160, 40, 170)).save(out / "a1111.png", pnginfo=info)

    report = report_of(invoke("eval", "clip-score", out, "--clip-model", tiny_clip_dir, "--json"))

    images = sorted(p for p in out.glob("*.png"))
    prompts = [RED, RED, GREEN, A1111]  # 00001-1.png, 00002-2.png, 00003-1.png, a1111.png
    assert [r["file"] for r in report["images"]] == [p.name for p in images]
    assert [r["prompt"] for r in report["images"]] == prompts
    expected = reference_scores(tiny_clip_dir, images, prompts)
    assert np.allclose([r["score"] for r in report["images"]], expected, atol=1e-4, rtol=0)
    assert max(expected) > 10  # a trained CLIP: the scores are not all clamped to 0
    assert report["mean"] == pytest.approx(np.mean(expected), abs=1e-4)
    by_prompt = {r["prompt"]: (r["n"], r["mean"]) for r in report["prompts"]}
    assert by_prompt[RED] == (2, pytest.approx(np.mean(expected[:2]), abs=1e-4))
    assert json.loads((out / "clip-score.json").read_text()) == report


def test_a_matching_caption_scores_higher_than_a_wrong_one(tmp_path: Path, tiny_clip_dir: Path) -> None:
    from sdkit.data.shapes import write_dataset

    world = write_dataset(tmp_path / "world", 40, seed=7, size=64)  # unseen scenes: the CLIP trained on seed 0
    captions = [json.loads(line)["text"] for line in (world / "metadata.jsonl").read_text().splitlines()]
    (tmp_path / "wrong.txt").write_text("\n".join(captions[1:] + captions[:1]) + "\n")  # each image gets its neighbour's

    right = report_of(invoke("eval", "clip-score", world / "images", "--prompts", world / "metadata.jsonl",
                             "--clip-model", tiny_clip_dir, "--json"))  # fmt: skip
    wrong = report_of(invoke("eval", "clip-score", world / "images", "--prompts", tmp_path / "wrong.txt",
                             "--clip-model", tiny_clip_dir, "--json"))  # fmt: skip
    assert right["mean"] > wrong["mean"] + 20, (right["mean"], wrong["mean"])
    pairs = zip(right["images"], wrong["images"], strict=True)
    assert np.mean([r["score"] > w["score"] for r, w in pairs]) >= 0.8


def test_clip_directional_similarity_is_the_formula(tmp_path: Path, tiny_clip_dir: Path) -> None:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from sdkit.data.shapes import Sample, render

    edits = [("red", "green", "circle"), ("blue", "yellow", "square"), ("white", "orange", "diamond")]
    lines = []
    for i, (before, after, shape) in enumerate(edits):
        render(Sample(shape, before, "purple", 32, 32, 30)).save(tmp_path / f"init{i}.png")
        render(Sample(shape, after, "purple", 30, 34, 28)).save(tmp_path / f"out{i}.png")
        source, edit = (f"a {c} {shape} on a purple background".replace("a orange", "an orange") for c in (before, after))
        lines.append(json.dumps({"init": f"init{i}.png", "output": f"out{i}.png", "source": source, "edit": edit}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")

    report = report_of(invoke("eval", "clip-directional", tmp_path / "pairs.jsonl", "--clip-model", tiny_clip_dir, "--json"))

    model, processor = CLIPModel.from_pretrained(tiny_clip_dir).eval(), CLIPProcessor.from_pretrained(tiny_clip_dir)
    expected = []
    for row in map(json.loads, lines):
        images = [Image.open(tmp_path / row[k]).convert("RGB") for k in ("init", "output")]
        with torch.no_grad():
            out = model(**processor(text=[row["source"], row["edit"]], images=images, return_tensors="pt", padding=True))
        image, text = out.image_embeds.numpy(), out.text_embeds.numpy()
        image_move, text_move = image[1] - image[0], text[1] - text[0]
        expected.append(float(image_move @ text_move / np.linalg.norm(image_move) / np.linalg.norm(text_move)))
    assert np.allclose([p["similarity"] for p in report["pairs"]], expected, atol=1e-4, rtol=0)
    assert report["mean"] > 0.2  # the images moved the way their captions did
    assert json.loads((tmp_path / "clip-directional.json").read_text()) == report


def test_clip_eval_errors(tmp_path: Path, tiny_clip_dir: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    Image.new("RGB", (16, 16)).save(bare / "x.png")
    (tmp_path / "two.txt").write_text("one\ntwo\n")
    (tmp_path / "pairs.jsonl").write_text('{"init": "x.png"}\n')
    (tmp_path / "one.txt").write_text("a\n")
    before = snapshot(tmp_path)
    assert_user_error(invoke("eval", "clip-score", bare, "--clip-model", tiny_clip_dir), "x.png has no prompt", "--prompts")
    assert_user_error(invoke("eval", "clip-score", bare, "--prompts", tmp_path / "two.txt"), "2 prompt(s) for 1 image(s)")
    assert_user_error(invoke("eval", "clip-score", tmp_path / "none"), "is not a folder")
    assert_user_error(invoke("eval", "clip-directional", tmp_path / "pairs.jsonl"), "pairs.jsonl:1", "init, output, source, edit")
    assert_user_error(invoke("eval", "clip-score", bare, "--prompts", tmp_path / "one.txt", "--clip-model", tmp_path / "no-clip"),
                      "could not load CLIP model", "--clip-model")  # fmt: skip
    assert snapshot(tmp_path) == before  # nothing written


def test_clip_score_at_a_terminal_shows_progress(tmp_path: Path, tiny_clip_dir: Path) -> None:
    from sdkit.data.shapes import write_dataset

    world = write_dataset(tmp_path / "world", 3, seed=1, size=64)
    screen = in_terminal([SDKIT, "eval", "clip-score", "world/images", "--prompts", "world/metadata.jsonl",
                          "--clip-model", tiny_clip_dir], tmp_path)  # fmt: skip
    assert_clean_run(screen, "CLIP score", "mean CLIP score")
    assert_progress(screen)
    assert (world / "images/clip-score.json").is_file()


# --- FID / KID ---------------------------------------------------------------------------------------------------


def small_feature_network():
    """A fixed random conv net from uint8 images to 16 features: the `feature` torchmetrics takes in place of Inception."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 5, stride=2), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.float() / 255)

    return Features().eval()


def renders(n: int, seed: int, brighten: int = 0) -> list[Image.Image]:
    from sdkit.data.shapes import render, sample_world

    scenes = sample_world(np.random.default_rng(seed), n)
    return [Image.fromarray(np.clip(np.asarray(render(s)).astype(int) + brighten, 0, 255).astype(np.uint8)) for s in scenes]


def torchmetrics_own(net, generated: list[Image.Image], reference: list[Image.Image], subsets: int, size: int) -> tuple[float, float]:
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    def batch(images):
        return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)

    fid, kid = FrechetInceptionDistance(feature=net), KernelInceptionDistance(feature=net, subsets=subsets, subset_size=size)
    for metric in (fid, kid):
        metric.update(batch(reference), real=True)
        metric.update(batch(generated), real=False)
    torch.manual_seed(0)  # KID's subsets: sdkit draws them from seed 0 too
    return float(fid.compute()), float(kid.compute()[0])


def test_fid_and_kid_are_torchmetrics_own_values(tmp_path: Path) -> None:
    import torch

    from sdkit.eval.fid import distances, features

    net = small_feature_network()
    reference, same_world, brighter = renders(60, 1), renders(60, 2), renders(60, 1, brighten=60)

    def ours(images):
        return features(net, images, 16, torch.device("cpu"), lambda image: image)

    ref = ours(reference)
    for generated in (same_world, brighter):
        mine = distances(ours(generated), ref, kid_subsets=10, kid_subset_size=30)
        fid, kid = torchmetrics_own(net, generated, reference, subsets=10, size=30)
        assert mine.fid == pytest.approx(fid, rel=1e-5) and mine.kid_mean == pytest.approx(kid, rel=1e-5, abs=1e-9)

    identical = distances(ref, ref, kid_subsets=10, kid_subset_size=30)
    other = distances(ours(same_world), ref, kid_subsets=10, kid_subset_size=30)
    shifted = distances(ours(brighter), ref, kid_subsets=10, kid_subset_size=30)
    assert abs(identical.fid) < 1e-6 * shifted.fid  # KID draws its subsets of each set apart: ~0 within its noise
    assert abs(identical.kid_mean) < 0.2 * shifted.kid_mean
    assert shifted.fid > 10 * other.fid and shifted.kid_mean > other.kid_mean + 3 * shifted.kid_std


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FID Inception network with random weights, as a safetensors file of the real file's keys and shapes."""
    import torch
    from safetensors.torch import save_file
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random initialisation
            return None

    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    torch.manual_seed(0)
    net = Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth"))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "inception.safetensors"))
    torch.save(net.state_dict(), folder / "inception.pth")
    return folder / "inception.safetensors"


def write_images(folder: Path, images: list[Image.Image]) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.slow  # Inception-v3 at 299 px on the CPU
def test_fid_command_with_given_weights_caches_the_reference(tmp_path: Path, random_inception: Path) -> None:
    generated = write_images(tmp_path / "gen", renders(6, 2))
    reference = write_images(tmp_path / "ref", renders(6, 1))
    args = ["eval", "fid", generated, "--reference", reference, "--inception-weights", random_inception,
            "--kid-subsets", "5", "--json"]  # fmt: skip
    first = invoke(*args)
    report = report_of(first)
    assert "a stable FID needs at least 10,000" in first.stderr
    assert report["n_images"] == report["n_reference"] == 6 and report["kid_subset_size"] == 6
    assert report["fid"] > 0 and not report["reference_features_cached"]
    again = report_of(invoke(*args))
    assert again["reference_features_cached"] and again["fid"] == report["fid"] and again["kid_mean"] == report["kid_mean"]
    assert json.loads((generated / "fid.json").read_text()) == again
    same = report_of(invoke("eval", "fid", reference, "--reference", reference, "--inception-weights", random_inception,
                            "--kid-subsets", "5", "--json"))  # fmt: skip
    assert abs(same["fid"]) < 1e-3 * report["fid"]
    pickled = random_inception.with_suffix(".pth")
    assert_user_error(invoke("eval", "fid", generated, "--reference", reference, "--inception-weights", pickled),
                      "is a pickle file", "--allow-pickle")  # fmt: skip
    assert report_of(invoke(*args[:6], pickled, "--allow-pickle", "--kid-subsets", "5", "--json"))["fid"] == pytest.approx(report["fid"])


def test_fid_errors(tmp_path: Path) -> None:
    generated = write_images(tmp_path / "gen", renders(2, 2))
    (tmp_path / "text.safetensors").write_text("not weights")
    before = snapshot(tmp_path)
    args = ["eval", "fid", generated, "--reference", generated, "--inception-weights"]
    assert_user_error(invoke(*args, tmp_path / "none.safetensors"), "none.safetensors: no such file")
    assert_user_error(invoke(*args, tmp_path / "text.safetensors"), "--inception-weights", "text.safetensors")
    assert_user_error(invoke("eval", "fid", generated, "--reference", tmp_path / "empty"), "--reference", "not a folder")
    assert snapshot(tmp_path) == before


@pytest.mark.slow  # real processes
@pytest.mark.parametrize("network", ["offline", "unreachable"])
def test_fid_without_weights_offline_names_the_flag(tmp_path: Path, network: str) -> None:
    generated = write_images(tmp_path / "gen", renders(2, 2))
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    if network == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    else:  # the download is tried and fails: nothing listens on the proxy's port
        env.update(HF_HUB_OFFLINE="0", https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    done = subprocess.run([SDKIT, "eval", "fid", generated, "--reference", generated], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--inception-weights PATH" in line and "Traceback" not in done.stderr
    assert not (generated / "fid.json").exists()
