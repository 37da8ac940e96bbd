"""Seeds stay in 0..2^32 - 1 and every written seed replays; `--seed -1` is random. `sdkit run --dry-run` checks
input folders and files and that hub models can be had offline, instead of saying "ok"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import pixels, snapshot
from PIL import Image
from untrusted_helpers import assert_refused, sdkit

TOP = 2**32 - 1


def recorded_seed(path: Path) -> int:
    with Image.open(path) as img:
        return json.loads(img.text["sdkit"])["recipe"]["seed"]


def test_seed_past_the_range_is_refused_up_front(tmp_path: Path, tiny_sd_dir: Path) -> None:
    proc = sdkit("generate", "a cat", "-m", tiny_sd_dir, "--steps", "2", "--seed", 2**63 - 1, "--num-images", "2",
                 "-o", tmp_path / "o", cwd=tmp_path)
    assert_refused(proc, "--seed", "0..4294967295", "-1 for a random one", str(2**63 - 1))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("how", ["generate", "run"])
def test_seeds_wrap_past_the_top_and_every_image_replays(how: str, tmp_path: Path, tiny_sd_dir: Path) -> None:
    """--seed 4294967295 --num-images 2 writes seeds 4294967295 and 0; replaying each gives the same pixels."""
    out = tmp_path / "o"
    if how == "generate":
        proc = sdkit("generate", "a cat", "-m", tiny_sd_dir, "--steps", "2", "--seed", TOP, "--num-images", "2",
                     "-o", out, cwd=tmp_path)
    else:  # sdkit run plans seeds itself (jobs.run_generate_group)
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"prompt: a cat\nmodel: {tiny_sd_dir}\nsteps: 2\nseed: {TOP}\nnum_images: 2\nout: {out}\n")
        proc = sdkit("run", recipe, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = [out / f"00001-{TOP}.png", out / "00002-0.png"]
    assert sorted(out.iterdir()) == written
    assert [recorded_seed(p) for p in written] == [TOP, 0]
    for n, image in enumerate(written):
        again = sdkit("replay", image, "-o", tmp_path / f"replay{n}", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        (replayed,) = (tmp_path / f"replay{n}").iterdir()
        assert (pixels(replayed) == pixels(image)).all()


def test_seed_minus_one_is_random(tmp_path: Path, tiny_sd_dir: Path) -> None:
    import sdkit as api

    proc = sdkit("generate", "a cat", "-m", tiny_sd_dir, "--steps", "2", "--seed", "-1", "-o", tmp_path / "o", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (image,) = (tmp_path / "o").iterdir()
    assert 0 <= recorded_seed(image) <= TOP and image.name == f"00001-{recorded_seed(image)}.png"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prompt: x\nseed: -1\n")
    assert sdkit("run", recipe, "--dry-run", cwd=tmp_path).returncode == 0
    assert api.load_recipe("generate", {"seed": -1}).seed is None
    assert api.load_recipe("generate", recipe).seed is None


def dry_run(work: Path, text: str, env: dict[str, str] | None = None):
    recipe = work / "recipe.yaml"
    recipe.write_text(text)
    before = snapshot(work)
    proc = sdkit("run", recipe, "--dry-run", cwd=work, env=env)
    assert snapshot(work) == before
    return proc


TRAIN_CASES = {
    "lora data_dir": ("task: train-lora\nmodel: {m}\ndata_dir: {w}/no-data\noutput_dir: {w}/run\n", "data_dir"),
    "text-to-image data_dir": ("task: train-text-to-image\npreset: shapes\ndata_dir: {w}/no-data\noutput_dir: {w}/run\n",
                               "data_dir"),
    "dreambooth instance_data_dir": ("task: train-dreambooth\nmodel: {m}\ninstance_data_dir: {w}/no-data\n"
                                     "instance_prompt: a sks dog\noutput_dir: {w}/run\n", "instance_data_dir"),
    "preprocess image": ("task: preprocess\ntype: canny\nimage: {w}/no-data\noutput: {w}/map.png\n", "image"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_dry_run_checks_input_folders(case: str, tmp_path: Path, tiny_sd_dir: Path) -> None:
    text, field = TRAIN_CASES[case]
    text = text.replace("{w}", str(tmp_path)).replace("{m}", str(tiny_sd_dir))
    proc = dry_run(tmp_path, text)
    assert_refused(proc, f"{field} {tmp_path}/no-data does not exist", "fix the path")
    assert not (tmp_path / "run").exists()


def test_dry_run_accepts_a_folder_an_earlier_job_writes(tmp_path: Path, tiny_sd_dir: Path) -> None:
    text = (f"jobs:\n  - task: data-shapes\n    out: {tmp_path}/data\n    n: 4\n"
            f"  - task: train-lora\n    model: {tiny_sd_dir}\n    data_dir: {tmp_path}/data\n    output_dir: {tmp_path}/run\n")
    proc = dry_run(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "ok: 2 job(s) valid"


def test_dry_run_refuses_a_hub_model_that_is_not_cached_offline(tmp_path: Path) -> None:
    proc = dry_run(tmp_path, "prompt: x\nmodel: some-org/not-cached\n", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert_refused(proc, "model 'some-org/not-cached'", "not in the local Hugging Face cache", "HF_HUB_OFFLINE=1",
                   "hf download some-org/not-cached", "local folder")


def test_dry_run_accepts_a_cached_hub_model_offline(tmp_path: Path) -> None:
    """A model in the Hugging Face cache (its documented layout: refs/main names a snapshot folder) passes offline."""
    cache = tmp_path / "hub"
    commit = "0" * 40
    snapshot_dir = cache / "models--some-org--cached" / "snapshots" / commit
    snapshot_dir.mkdir(parents=True)
    (snapshot_dir / "model_index.json").write_text("{}")
    (cache / "models--some-org--cached" / "refs").mkdir()
    (cache / "models--some-org--cached" / "refs" / "main").write_text(commit)
    proc = dry_run(tmp_path, "prompt: x\nmodel: some-org/cached\n", env={"HF_HUB_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
