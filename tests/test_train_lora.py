"""`sdkit train lora` on the tiny SD pipeline: outputs, file formats that reproduce the in-memory adapter, metadata,
LoRA-only checkpoints, exact resume, `accelerate launch` with two processes, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import FAST, assert_user_error, generate, in_memory, invoke, shapes_dataset, snapshot, tensors

from sdkit.lora_io import LORA_FILE, read_metadata
from sdkit.schema.finetune import TrainLoraRecipe
from sdkit.tasks.train_lora import run

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return shapes_dataset(tmp_path_factory.mktemp("lora") / "shapes")


def recipe(model: Path, data: Path, out: Path, **fields) -> TrainLoraRecipe:
    return TrainLoraRecipe(model=str(model), data_dir=data, output_dir=out, **{**FAST, "train_batch_size": 2, **fields})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sd_dir: Path, data: Path):
    """UNet + text-encoder LoRA with alpha != rank (so a lost alpha shows), on attention and the resnets' convolutions
    (a file mixing diffusers' attention keys with peft's conv keys loses its attention part in load_lora_weights),
    saved in both formats."""
    out = tmp_path_factory.mktemp("lora") / "run"
    fields = {"max_steps": 3, "rank": 4, "alpha": 2.0, "train_text_encoder": True, "save_format": "kohya",
              "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
              "trigger_word": "sks", "learning_rate": 0.05, "checkpointing_steps": 2}  # fmt: skip
    return run(recipe(tiny_sd_dir, data, out, **fields))


def test_files_reproduce_the_in_memory_adapter(trained, tiny_sd_dir: Path, tmp_path: Path) -> None:
    assert [p.name for p in trained.files] == [LORA_FILE, "run.safetensors"]
    memory = in_memory(trained.pipeline, PROMPT)
    base = generate(tmp_path / "base", tiny_sd_dir, PROMPT)
    assert np.abs(memory - base).mean() > 1  # the LoRA changes the image
    for path in trained.files:  # diffusers format and kohya keys: exactly the in-memory adapter's image
        assert (generate(tmp_path / path.stem, tiny_sd_dir, PROMPT, "--lora", path) == memory).all(), path.name
    assert (generate(tmp_path / "zero", tiny_sd_dir, PROMPT, "--lora", f"{trained.files[0]}:0") == base).all()


def test_file_contents_and_metadata(trained, tiny_sd_dir: Path) -> None:
    unet_keys = [k for k in tensors(trained.files[0]) if k.startswith("unet.")]
    assert any(".conv1." in k for k in unet_keys) and any(".to_q." in k for k in unet_keys)
    assert all(".lora_A." in k or ".lora_B." in k for k in unet_keys)  # one key format (see sdkit.lora_io.save_lora)
    kohya = tensors(trained.files[1])
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in kohya)  # A1111's text-encoder naming
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {2.0}  # the true alpha, not the rank
    for path in trained.files:
        meta = read_metadata(path)
        assert (meta["sdkit.rank"], meta["sdkit.alpha"], meta["sdkit.trigger_word"]) == ("4", "2", "sks")
        assert meta["sdkit.base_model"] == str(tiny_sd_dir) and meta["ss_network_dim"] == "4"
        assert TrainLoraRecipe.model_validate(json.loads(meta["sdkit.recipe"])).rank == 4  # the resolved recipe
    assert "lora_adapter_metadata" in read_metadata(trained.files[0])  # diffusers' own entry survives
    out = trained.output_dir
    for name in ("recipe.yaml", "loss.png", "loss.json", "loss.csv", "run.json"):
        assert (out / name).is_file(), name
    checkpoint = tensors(out / "checkpoints/step-2/model.safetensors")  # LoRA weights only, not the frozen UNet
    assert checkpoint and all(".lora_" in k for k in checkpoint)


def test_cli_run_with_validation_and_resume_equality(tiny_sd_dir: Path, data: Path, tmp_path: Path) -> None:
    args = ["train", "lora", "-m", tiny_sd_dir, "--data", data, "--max-steps", "4", "--train-batch-size", "2",
            "--learning-rate", "0.05", "--checkpointing-steps", "2", "--threads", "1", "--use-ema",
            "--lr-scheduler", "cosine", "--validation-prompts", PROMPT, "--validation-inference-steps", "2"]  # fmt: skip
    full = invoke(*args, "-o", tmp_path / "full")
    assert full.exit_code == 0, full.output
    assert full.stdout.split() == [str(tmp_path / "full" / LORA_FILE)]
    assert (tmp_path / "full/validation/step-4.png").is_file() and (tmp_path / "full/loss.png").is_file()
    assert yaml.safe_load((tmp_path / "full/recipe.yaml").read_text())["use_ema"] is True
    resumed = invoke(*args, "-o", tmp_path / "resumed", "--resume", tmp_path / "full/checkpoints/step-2")
    assert resumed.exit_code == 0, resumed.output
    a, b = tensors(tmp_path / "full" / LORA_FILE), tensors(tmp_path / "resumed" / LORA_FILE)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "resumed LoRA differs from the uninterrupted run"
    again = invoke(*args, "-o", tmp_path / "full", "--resume", "latest")
    assert again.exit_code == 0 and "nothing to do" in again.stderr


def test_errors_are_one_line(tiny_sd_dir: Path, data: Path, tmp_path: Path, trained) -> None:
    base = ["train", "lora", "-m", tiny_sd_dir, "--max-steps", "1"]
    before = snapshot(tmp_path)
    assert_user_error(invoke(*base, "--data", tmp_path / "nowhere", "-o", tmp_path / "o"), "does not exist")
    assert_user_error(invoke(*base, "--data", data, "-o", tmp_path / "o", "--target-modules", "nope"), "target_modules")
    assert_user_error(invoke(*base, "--data", data, "-o", tmp_path / "o", "--rank", "0"), "--rank")
    assert_user_error(invoke(*base, "--data", data, "-o", tmp_path / "o", "--resume", tmp_path / "none"), "does not exist")
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()
    assert_user_error(invoke(*base, "--data", data, "-o", trained.output_dir), "already holds")  # never overwritten


@pytest.mark.slow  # multi-process or end to end
def test_accelerate_launch_two_processes(tiny_sd_dir: Path, data: Path, tmp_path: Path) -> None:
    job = {"task": "train-lora", "model": str(tiny_sd_dir), "data_dir": str(data), "output_dir": str(tmp_path / "run"),
           "max_steps": 2, "train_batch_size": 2, "checkpointing_steps": 2, "threads": 1, "device": "cpu"}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_cpu_threads_per_process", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "sdkit", "train", "lora", "--recipe", str(tmp_path / "job.yaml")]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "run/run.json").read_text())
    assert info["distributed_type"] == "MULTI_CPU" and info["num_processes"] == 2  # really two processes (gloo)
    assert sorted(p.name for p in (tmp_path / "run/checkpoints/step-2").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]  # fmt: skip
    assert done.stdout.split() == [str(tmp_path / "run" / LORA_FILE)]  # printed once, by the main process
    assert tensors(tmp_path / "run" / LORA_FILE)
