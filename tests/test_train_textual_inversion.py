"""`sdkit train textual-inversion` on the tiny SD pipeline: only the new rows train, the diffusers and A1111 files
reproduce the in-memory embedding, captions from metadata or templates, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, assert_user_error, generate, in_memory, invoke, shapes_dataset, snapshot, tensors

from sdkit.lora_io import read_metadata
from sdkit.schema.finetune import TrainTextualInversionRecipe
from sdkit.tasks.train_textual_inversion import run

PROMPT = "a <zig> on a blue background"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three 32 px images in a plain folder (captioned from the templates)."""
    return shapes_dataset(tmp_path_factory.mktemp("ti") / "shapes", n=3) / "images"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sd_dir: Path, images: Path):
    recipe = TrainTextualInversionRecipe(
        model=str(tiny_sd_dir), data_dir=images, token="<zig>", init_token="circle", num_vectors=2, max_steps=3,
        train_batch_size=2, learning_rate=0.5, adam_weight_decay=0.1, checkpointing_steps=2,
        output_dir=tmp_path_factory.mktemp("ti") / "run", **FAST,
    )  # fmt: skip
    return run(recipe)


def test_only_the_new_rows_train(trained, tiny_sd_dir: Path) -> None:
    base = tensors(next((tiny_sd_dir / "text_encoder").glob("*.safetensors")))
    tokenizer, encoder = trained.pipeline.tokenizer, trained.pipeline.text_encoder
    new_ids = tokenizer.convert_tokens_to_ids(["<zig>", "<zig>_1"])
    init_id = tokenizer.convert_tokens_to_ids("circle</w>")
    table = encoder.get_input_embeddings().weight.detach()
    old = len(table) - 2
    assert new_ids == [old, old + 1]
    (name,) = [k for k in base if k.endswith("token_embedding.weight")]
    assert (table[:old] == base[name]).all()  # weight decay and Adam left the old rows alone
    assert not (table[new_ids[0]] == base[name][init_id]).all()  # the new rows moved away from "circle"
    state = encoder.state_dict()
    assert all((state[k] == v).all() for k, v in base.items() if k != name)  # nothing else changed
    learned = tensors(trained.files[0])["<zig>"]
    assert learned.shape == (2, 32) and (learned == table[new_ids]).all()
    checkpoint = tensors(trained.output_dir / "checkpoints/step-2/model.safetensors")
    assert list(checkpoint) == [name]  # the embedding table only


def test_files_reproduce_the_in_memory_embedding(trained, tiny_sd_dir: Path, tmp_path: Path) -> None:
    diffusers_file, a1111_file = trained.files
    assert (diffusers_file.name, a1111_file.name) == ("learned_embeds.safetensors", "zig.safetensors")
    assert list(tensors(a1111_file)) == ["emb_params"]
    memory = in_memory(trained.pipeline, PROMPT)
    assert (generate(tmp_path / "d", tiny_sd_dir, PROMPT, "--embedding", diffusers_file) == memory).all()
    assert (generate(tmp_path / "a", tiny_sd_dir, PROMPT, "--embedding", f"{a1111_file}:<zig>") == memory).all()
    plain = generate(tmp_path / "p", tiny_sd_dir, "a circle on a blue background")
    assert np.abs(plain - memory).mean() > 0.5
    meta = read_metadata(a1111_file)
    assert (meta["sdkit.token"], meta["sdkit.init_token"], meta["sdkit.num_vectors"]) == ("<zig>", "circle", "2")
    assert TrainTextualInversionRecipe.model_validate(json.loads(meta["sdkit.recipe"])).token == "<zig>"


def test_cli_with_metadata_captions(tiny_sd_dir: Path, tmp_path: Path) -> None:
    import shutil

    data = shapes_dataset(tmp_path / "d", n=2)
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    (data / "metadata.jsonl").write_text("".join(json.dumps({**r, "text": f"a <zag> on a {r['background']} background"}) + "\n" for r in rows))
    args = ["train", "textual-inversion", "-m", tiny_sd_dir, "--data", data, "--token", "<zag>", "--init-token", "square",
            "--max-steps", "2", "--threads", "1", "--validation-prompts", "a <zag>", "--validation-inference-steps", "2"]  # fmt: skip
    result = invoke(*args, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(tmp_path / "run/learned_embeds.safetensors"), str(tmp_path / "run/zag.safetensors")]
    assert (tmp_path / "run/validation/step-2.png").is_file() and (tmp_path / "run/recipe.yaml").is_file()
    shutil.copy(data / "metadata.jsonl", tmp_path / "m.jsonl")
    (data / "metadata.jsonl").write_text(json.dumps({**rows[0], "text": "a red circle"}) + "\n")
    assert_user_error(invoke(*args, "-o", tmp_path / "bad"), "does not contain the token")


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--token", "circle", "--init-token", "square"], "already in the tokenizer's vocabulary"),
        (["--token", "<q>", "--init-token", "zzqx"], "is 4 tokens (z z q x</w>)"),
        (["--token", "two words", "--init-token", "square"], "one word"),
        (["--token", "<q>"], "init_token: required but missing"),
    ],
)
def test_errors_are_one_line(extra, fragment, tiny_sd_dir: Path, images: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    result = invoke("train", "textual-inversion", "-m", tiny_sd_dir, "--data", images, "-o", tmp_path / "o", *extra)
    assert_user_error(result, fragment)
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


def test_missing_data_folder(tiny_sd_dir: Path, tmp_path: Path) -> None:
    result = invoke("train", "textual-inversion", "-m", tiny_sd_dir, "--data", tmp_path / "none", "-o", tmp_path / "o",
                    "--token", "<q>", "--init-token", "square")  # fmt: skip
    assert_user_error(result, "does not exist")
