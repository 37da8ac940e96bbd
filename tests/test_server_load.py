"""Many clients at once, and a crash: 20 concurrent A1111 requests each answered with its own seed's image and none
lost; `kill -9` of the server with jobs queued, then a restart: every job done exactly once, the running one marked
interrupted, and a training job resumed from its last checkpoint."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import pixels
from serverkit import SHAPES_PROMPT, Server, make_library, pixels_of, wait_job

pytestmark = pytest.mark.slow
SETTINGS = {"steps": 4, "cfg": 5.0, "width": 64, "height": 64}


def test_twenty_concurrent_requests_each_get_their_own_seed(tmp_path: Path) -> None:
    import sdkit

    seeds = list(range(100, 120))
    with Server(tmp_path / "out") as server:

        def request(seed: int) -> dict:
            with server.client() as client:
                body = {"prompt": SHAPES_PROMPT, "sampler_name": "Euler", "cfg_scale": 5, "steps": 4, "width": 64,
                        "height": 64, "seed": seed}  # fmt: skip
                response = client.post("/sdapi/v1/txt2img", json=body)
                assert response.status_code == 200, response.text
                return response.json()

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(request, seeds))
        with server.client() as client:
            jobs = client.get("/sdkit/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert len(jobs) == 20 and all(job["status"] == "done" for job in jobs)
    for seed, answer in zip(seeds, answers, strict=True):
        assert json.loads(answer["info"])["all_seeds"] == [seed] and len(answer["images"]) == 1
        (reference,) = sdkit.generate(prompt=SHAPES_PROMPT, scheduler="Euler", seed=seed, out=tmp_path / "ref", **SETTINGS)
        assert np.array_equal(pixels_of(answer["images"][0]), pixels(reference.path)), seed


def test_kill_9_with_jobs_queued_then_restart(tmp_path: Path) -> None:
    """Six generate jobs; the server is killed while one runs and the others wait. After a restart every queued job
    is done exactly once (one image per seed, no seed twice) and the one that ran is marked interrupted."""
    out = tmp_path / "out"
    seeds = [201, 202, 203, 204, 205, 206]
    server = Server(out).start()
    with server.client() as client:
        ids = [client.post("/sdkit/v1/jobs", json={"task": "generate", "prompt": SHAPES_PROMPT, "steps": 300, "seed": seed,
                                                   "out": "fault"}).json()["id"] for seed in seeds]  # fmt: skip
        while not (client.get(f"/sdkit/v1/jobs/{ids[0]}").json()["progress"] or {}).get("step"):
            time.sleep(0.05)
        before = {job_id: client.get(f"/sdkit/v1/jobs/{job_id}").json()["status"] for job_id in ids}
    server.kill9()
    assert before[ids[0]] == "running" and all(before[i] == "queued" for i in ids[1:]), before
    with Server(out) as again, again.client() as client:
        jobs = [wait_job(client, job_id, timeout=900) for job_id in ids]
    assert jobs[0]["status"] == "interrupted" and jobs[0]["error"] == "the server stopped while this job ran"
    assert all(job["status"] == "done" and job["attempts"] == 1 for job in jobs[1:]), jobs
    files = sorted(p.name for p in (out / "generate" / "fault").glob("*.png"))
    made = [int(name.split("-")[1].removesuffix(".png")) for name in files]
    assert sorted(made) == seeds[1:], files  # each queued job's image once; the interrupted job wrote nothing


def test_kill_9_during_training_resumes_from_the_checkpoint(tmp_path: Path, tiny_sd_dir: Path) -> None:
    library = make_library(tmp_path / "library", tiny_sd_dir)
    out = tmp_path / "out"
    recipe = {"task": "train-lora", "model": "shapes", "data_dir": "tiny", "max_steps": 60, "train_batch_size": 2,
              "checkpointing_steps": 10, "log_every": 5, "threads": 1}  # fmt: skip
    server = Server(out, "--models-dir", library).start()
    with server.client() as client:
        job_id = client.post("/sdkit/v1/jobs", json={**recipe, "output_dir": "lora-run"}).json()["id"]
    run = out / "train-lora" / "lora-run"
    deadline = time.monotonic() + 600
    while not list((run / "checkpoints").glob("step-*/checkpoint.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    server.kill9()
    with Server(out, "--models-dir", library) as again, again.client() as client:
        job = wait_job(client, job_id, timeout=900)
    assert job["status"] == "done" and job["attempts"] == 2, job
    log = (out / ".sdkit-server" / "jobs" / str(job_id) / "log.txt").read_text()
    assert "resumed from" in log and (run / "pytorch_lora_weights.safetensors").is_file()
