"""Training across machines through accelerate only: two `accelerate launch --num_machines 2 --machine_rank R
--main_process_ip 127.0.0.1` launches on this box, one process each, train the same LoRA as one process with the same
global batch; `--use_fsdp` on a CPU machine says plainly that it runs plain DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import shapes_dataset, tensors

from sdkit.lora_io import LORA_FILE

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(tmp_path: Path, name: str, model: Path, data: Path, batch: int) -> Path:
    fields = {"task": "train-lora", "model": str(model), "data_dir": str(data), "output_dir": str(tmp_path / name),
              "max_steps": 3, "train_batch_size": batch, "learning_rate": 0.05, "train_text_encoder": True,
              "checkpointing_steps": None, "threads": 1, "device": "cpu", "caption_dropout": 0.3}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


@pytest.mark.slow  # multi-process
def test_two_machines_train_what_one_process_trains(tiny_sd_dir: Path, tmp_path: Path) -> None:
    data = shapes_dataset(tmp_path / "data", n=8)  # 8 images, global batch 4: 3 steps cross an epoch
    sdkit = [sys.executable, "-m", "sdkit", "train", "lora", "--recipe"]
    for name, batch in (("one", 4), ("half", 2)):
        done = subprocess.run([*sdkit, str(job(tmp_path, name, tiny_sd_dir, data, batch))], env=ENV, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    recipe, port = job(tmp_path, "two", tiny_sd_dir, data, 2), str(free_port())
    machines = [
        subprocess.Popen([ACCELERATE, "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
                          "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                          "--num_cpu_threads_per_process", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "sdkit", "train", "lora", "--recipe", str(recipe)],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [m.communicate(timeout=300) for m in machines]
    for machine, (_out, err) in zip(machines, outputs, strict=True):
        assert machine.returncode == 0, err[-3000:]
    info = json.loads((tmp_path / "two/run.json").read_text())
    assert info["distributed_type"] == "MULTI_CPU" and info["num_processes"] == 2  # really two processes (gloo)
    assert outputs[0][0].split() == [str(tmp_path / "two" / LORA_FILE)] and outputs[1][0].strip() == ""  # main writes
    one, two, half = (tensors(tmp_path / n / LORA_FILE) for n in ("one", "two", "half"))
    assert one.keys() == two.keys()
    assert all(torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-5) for k in one)  # same weights, up to reduction order
    assert not all(torch.allclose(one[k], half[k], rtol=1e-4, atol=1e-5) for k in one)  # half the batch: not the same


@pytest.mark.slow  # multi-process
def test_fsdp_on_a_cpu_machine_says_it_runs_plain_ddp(tiny_sd_dir: Path, tmp_path: Path) -> None:
    data = shapes_dataset(tmp_path / "data", n=4)
    recipe = job(tmp_path, "fsdp", tiny_sd_dir, data, 2)
    cmd = [ACCELERATE, "launch", "--use_fsdp", "--num_processes", "2", "--num_cpu_threads_per_process", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--fsdp_sharding_strategy", "FULL_SHARD",
           "--fsdp_auto_wrap_policy", "NO_WRAP", "--fsdp_state_dict_type", "FULL_STATE_DICT",
           "--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false",
           "-m", "sdkit", "train", "lora", "--recipe", str(recipe)]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "fsdp/run.json").read_text())["distributed_type"] == "MULTI_CPU"
    assert "warning: FSDP was asked for, but accelerate runs this job as MULTI_CPU" in done.stderr
