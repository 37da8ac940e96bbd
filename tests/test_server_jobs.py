"""sdkit's job API and the gallery on a real `sdkit serve`: outputs written exactly as `sdkit generate` writes them,
progress as server-sent events, cancelling, other tasks (run as `sdkit run` children), and files named only by the
library and the gallery, never by a client's path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import pixels
from PIL import Image
from serverkit import SHAPES_PROMPT, Server, b64png, make_library, wait_job

pytestmark = pytest.mark.slow  # a server process per module
GEN = {"task": "generate", "prompt": SHAPES_PROMPT, "steps": 6, "cfg": 5, "scheduler": "Euler"}


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_sd_dir: Path) -> Path:
    return make_library(tmp_path_factory.mktemp("library"), tiny_sd_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory, library: Path):
    with Server(tmp_path_factory.mktemp("jobs") / "out", "--models-dir", library) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def submit(client, **fields) -> int:
    response = client.post("/sdkit/v1/jobs", json={**GEN, **fields})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def refused(client, *loc, **fields) -> str:
    response = client.post("/sdkit/v1/jobs", json={**GEN, **fields})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert tuple(detail["loc"][1:]) == loc, detail
    return detail["msg"]


def test_generate_job_writes_what_the_cli_writes(server, client, library: Path, tmp_path: Path) -> None:
    job = wait_job(client, submit(client, seed=11, num_images=2, out="cli-compare"))
    assert job["status"] == "done" and job["outputs"] == ["generate/cli-compare/00001-11.png", "generate/cli-compare/00002-12.png"]
    cli = subprocess.run([sys.executable, "-m", "sdkit", "generate", SHAPES_PROMPT, "--steps", "6", "--cfg", "5", "--scheduler",
                          "Euler", "--seed", "11", "--num-images", "2", "--models-dir", str(library), "-o", str(tmp_path / "cli")],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    for name in ("00001-11.png", "00002-12.png"):
        served, made = server.out / "generate" / "cli-compare" / name, tmp_path / "cli" / name
        assert np.array_equal(pixels(served), pixels(made))
        with Image.open(served) as a, Image.open(made) as b:
            assert a.info["parameters"] == b.info["parameters"]
            ours, theirs = json.loads(a.info["sdkit"]), json.loads(b.info["sdkit"])
        assert {**ours["recipe"], "out": None} == {**theirs["recipe"], "out": None} and ours["model"] == theirs["model"]
        assert oct(served.stat().st_mode & 0o777) == oct(made.stat().st_mode & 0o777)


def test_events_stream_progress_then_done(client) -> None:
    job_id = submit(client, seed=5, steps=30)
    events = []
    with client.stream("GET", f"/sdkit/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind == "done":
                    break
    steps = [data["progress"]["step"] for kind, data in events if kind == "progress" and data["progress"]]
    assert steps == sorted(steps) and max(steps) > 1
    assert events[-1][0] == "done" and events[-1][1]["status"] == "done" and events[-1][1]["outputs"]


def test_cancel_queued_and_running_jobs(client) -> None:
    running = submit(client, seed=1, steps=1000)
    queued = submit(client, seed=2)
    wait_job(client, running, until=("running",))
    assert client.delete(f"/sdkit/v1/jobs/{queued}").json()["status"] == "cancelled"
    assert client.delete(f"/sdkit/v1/jobs/{running}").json()["status"] == "running"
    job = wait_job(client, running)
    assert job["status"] == "cancelled" and job["outputs"] == []
    assert wait_job(client, queued)["status"] == "cancelled"
    assert client.delete("/sdkit/v1/jobs/99999").status_code == 404


def test_library_names_and_uploads_instead_of_paths(client, library: Path) -> None:
    lora = wait_job(client, submit(client, seed=3, lora=["star:0.8"], out="with-lora"))
    assert lora["status"] == "done", lora
    assert lora["recipe"]["lora"] == [{"path": str((library / "loras" / "star.safetensors").resolve()), "weight": 0.8, "unet_weight": None}]
    source = Image.new("RGB", (64, 64), (20, 40, 200))
    init = wait_job(client, submit(client, seed=3, init_image="data:image/png;base64," + b64png(source), strength=0.6,
                                   out="img2img"))  # fmt: skip
    assert init["status"] == "done" and Path(init["recipe"]["init_image"]).parent.name == "uploads"
    again = wait_job(client, submit(client, seed=3, init_image=f"gallery:{lora['outputs'][0]}", strength=0.6, out="img2img"))
    assert again["status"] == "done" and again["recipe"]["init_image"] == str(Path(lora["result"]["images"][0]).resolve())
    tagged = wait_job(client, submit(client, seed=3, prompt=f"{SHAPES_PROMPT} <lora:star:0.8>", vae="bright", out="tagged"))
    assert tagged["status"] == "done", tagged
    assert tagged["recipe"]["lora"] == [{"path": str((library / "loras" / "star.safetensors").resolve()), "weight": 0.8, "unet_weight": None}]
    assert tagged["recipe"]["vae"] == str((library / "vae" / "bright").resolve()) and "<lora" not in tagged["recipe"]["prompt"]


@pytest.mark.parametrize("fields, loc", [
    ({"model": "/etc/passwd"}, ("model",)), ({"model": "../shapes"}, ("model",)),
    ({"init_image": "/etc/hosts"}, ("init_image",)), ({"init_image": "gallery:../../etc/passwd.png"}, ("init_image",)),
    ({"init_image": "file:///etc/hosts"}, ("init_image",)), ({"out": "../escape"}, ("out",)), ({"out": "a/b"}, ("out",)),
    ({"out": "/tmp"}, ("out",)), ({"lora": ["/tmp/x.safetensors"]}, ("lora", 0)), ({"allow_pickle": True}, ("allow_pickle",)),
    ({"annotators_dir": "/tmp"}, ("annotators_dir",)), ({"device": "cuda:3"}, ("device",)), ({"task": "rm-rf"}, ("task",)),
    ({"stepz": 3}, ("stepz",)), ({"cfg": -1}, ("cfg",)), ({"num_images": 101}, ("num_images",)),
    ({"control": [{"type": "canny", "image": "/etc/hosts"}]}, ("control", 0, "image")),
    ({"prompt": "x <lora:/tmp/x.safetensors:1>"}, ("prompt",)), ({"vae": "/tmp/vae"}, ("vae",)),
    ({"refiner": "/tmp/refiner"}, ("refiner",)), ({"models_dir": ["/"]}, ("models_dir",)), ({"config": "/tmp/x.yaml"}, ("config",)),
    ({"task": "eval-clip-score", "images": "x", "clip_model": "/tmp/clip"}, ("clip_model",)),
])  # fmt: skip
def test_paths_and_bad_fields_are_refused(client, fields: dict, loc: tuple) -> None:
    refused(client, *loc, **fields)


def test_training_data_by_name(client, library: Path) -> None:
    refused(client, "data_dir", task="train-lora", model="shapes", data_dir="/etc")
    msg = refused(client, "data_dir", task="train-lora", model="shapes", data_dir="nope")
    assert "tiny" in msg  # the error lists what the library holds


def test_other_tasks_run_as_the_cli_runs_them(server, client) -> None:
    job = wait_job(client, client.post("/sdkit/v1/jobs", json={"task": "data-shapes", "n": 4, "size": 32}).json()["id"])
    assert job["status"] == "done", job
    folder = Path(job["result"]["output"])
    assert folder.parent == (server.out / "data-shapes").resolve() and (folder / "metadata.jsonl").is_file()
    assert len((folder / "metadata.jsonl").read_text().splitlines()) == 4
    bad = wait_job(client, client.post("/sdkit/v1/jobs", json={"task": "eval", "n": 1, "steps": 1, "cfg": [1],
                                                               "scheduler": "Bogus"}).json()["id"])  # fmt: skip
    assert bad["status"] == "failed" and "Bogus" in bad["error"]


def test_gallery_pages_thumbnails_and_settings(client) -> None:
    for seed in (41, 42, 43):
        wait_job(client, submit(client, seed=seed, out="gallery"))
    first = client.get("/sdkit/v1/gallery", params={"per_page": 2}).json()
    assert [item["name"] for item in first["items"]] == ["generate/gallery/00003-43.png", "generate/gallery/00002-42.png"]
    second = client.get("/sdkit/v1/gallery", params={"per_page": 2, "page": 2}).json()
    assert second["items"][0]["name"] == "generate/gallery/00001-41.png" and second["total"] == first["total"]
    names = [item["name"] for item in client.get("/sdkit/v1/gallery", params={"per_page": 200}).json()["items"]]
    assert not any(".sdkit-server" in n or ".control-" in n for n in names)
    thumb = client.get("/sdkit/v1/gallery/thumb/generate/gallery/00001-41.png")
    assert thumb.headers["content-type"] == "image/png"
    info = client.get("/sdkit/v1/gallery/info/generate/gallery/00001-41.png").json()
    assert "Seed: 41" in info["parameters"] and info["parsed"]["Seed"] == "41"
    assert info["form"]["model"] == "shapes" and info["form"]["seed"] == 41 and info["form"]["scheduler"] == "Euler"
    image = client.get("/sdkit/v1/gallery/image/generate/gallery/00001-41.png")
    assert image.content.startswith(b"\x89PNG")
    for bad in ("../../etc/passwd", ".sdkit-server/queue.sqlite3", "generate/gallery/99999-1.png"):
        assert client.get(f"/sdkit/v1/gallery/info/{bad}").status_code in (400, 404)
    assert client.get("/sdkit/v1/gallery/image/%2e%2e/%2e%2e/etc/passwd").status_code in (400, 404)


def test_job_list_and_library(client) -> None:
    jobs = client.get("/sdkit/v1/jobs", params={"status": "done", "limit": 3}).json()["jobs"]
    assert len(jobs) == 3 and all(j["status"] == "done" for j in jobs) and jobs[0]["id"] > jobs[-1]["id"]
    assert [e["name"] for e in client.get("/sdkit/v1/library/loras").json()] == ["star"]
    assert client.get("/sdkit/v1/library/secrets").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and "<title>sdkit</title>" in page.text
    assert client.get("/static/app.js").status_code == 200
