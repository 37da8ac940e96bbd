"""The server's limits and safety on real `sdkit serve` processes: HTTP basic auth on every route (the page too),
loopback-only unless authenticated, the body size limit (413), the image size limit, the queue limit (429 with
Retry-After), and CORS off unless asked for."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serverkit import SHAPES_PROMPT, Server, png_header, wait_job

pytestmark = pytest.mark.slow  # server processes
SMALL = {"width": 64, "height": 64, "steps": 4}


def test_auth_on_every_route(tmp_path: Path) -> None:
    with Server(tmp_path / "out", "--api-auth", "alice:s3cret,bob:hunter2") as server:
        routes = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/sdapi/v1/options"), ("GET", "/sdapi/v1/progress"),
                  ("POST", "/sdapi/v1/txt2img"), ("GET", "/sdkit/v1/jobs"), ("GET", "/sdkit/v1/gallery"), ("GET", "/docs"),
                  ("GET", "/controlnet/model_list")]  # fmt: skip
        with server.client(auth=None) as anonymous, server.client(auth=("alice", "wrong")) as wrong:
            for method, path in routes:
                for client in (anonymous, wrong):
                    response = client.request(method, path, json={} if method == "POST" else None)
                    assert response.status_code == 401, (path, response.status_code)
                    assert response.headers["www-authenticate"].startswith("Basic")
        with server.client(auth=("bob", "hunter2")) as bob:
            assert bob.get("/").status_code == 200 and bob.get("/sdapi/v1/options").status_code == 200
            answer = bob.post("/sdapi/v1/txt2img", json={"prompt": SHAPES_PROMPT, **SMALL, "seed": 1})
            assert answer.status_code == 200 and len(answer.json()["images"]) == 1
        second = subprocess.run([sys.executable, "-m", "sdkit", "serve", "--port", "1", "-o", str(server.out)],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert second.returncode == 2 and "another sdkit serve uses" in second.stderr  # one server per queue


def test_only_loopback_without_auth(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "sdkit", "serve", "--host", "0.0.0.0", "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: --host 0.0.0.0") and "--api-auth" in done.stderr
    assert not (tmp_path / ".sdkit-server").exists()


def test_body_image_and_queue_limits(tmp_path: Path) -> None:
    with Server(tmp_path / "out", "--max-body-mb", "1", "--queue-limit", "2") as server, server.client() as client:
        big = {"prompt": "x" * (2 * 2**20)}
        assert client.post("/sdapi/v1/txt2img", json=big).status_code == 413

        def chunks():
            for _ in range(40):
                yield b"x" * 65536

        streamed = client.post("/sdkit/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413

        import base64

        huge = base64.b64encode(png_header(9000, 9000)).decode()
        response = client.post("/sdapi/v1/img2img", json={"prompt": "x", **SMALL, "init_images": [huge]})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "init_images", 0]
        assert "67,108,864" in response.json()["detail"][0]["msg"]

        running = client.post("/sdkit/v1/jobs", json={"task": "generate", "prompt": "x", "steps": 1000, "seed": 1}).json()["id"]
        wait_job(client, running, until=("running",))
        for seed in (2, 3):
            assert client.post("/sdkit/v1/jobs", json={"task": "generate", "prompt": "x", "seed": seed}).status_code == 202
        full = client.post("/sdkit/v1/jobs", json={"task": "generate", "prompt": "x", "seed": 4})
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        full_a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
        assert full_a1111.status_code == 429
        for job in client.get("/sdkit/v1/jobs", params={"status": "queued,running"}).json()["jobs"]:
            client.delete(f"/sdkit/v1/jobs/{job['id']}")


def test_cors_is_off_unless_asked(tmp_path: Path) -> None:
    preflight = {"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"}
    with Server(tmp_path / "plain") as server, server.client() as client:
        assert "access-control-allow-origin" not in client.options("/sdapi/v1/txt2img", headers=preflight).headers
        assert "access-control-allow-origin" not in client.get("/sdapi/v1/options", headers={"Origin": "http://evil.test"}).headers
    with Server(tmp_path / "cors", "--cors-allow-origins", "http://app.test") as server, server.client() as client:
        allowed = client.options("/sdapi/v1/txt2img", headers={**preflight, "Origin": "http://app.test"})
        assert allowed.headers["access-control-allow-origin"] == "http://app.test"
        assert "access-control-allow-origin" not in client.options("/sdapi/v1/txt2img", headers=preflight).headers


def test_sigterm_stops_the_server_and_its_job(tmp_path: Path) -> None:
    """SIGTERM: uvicorn shuts down, the running job stops at its next step and is recorded as interrupted."""
    server = Server(tmp_path / "out").start()
    with server.client() as client:
        job = client.post("/sdkit/v1/jobs", json={"task": "generate", "prompt": "x", "steps": 1000, "seed": 1}).json()["id"]
        while not (client.get(f"/sdkit/v1/jobs/{job}").json()["progress"] or {}).get("step"):
            time.sleep(0.1)  # denoising: the job stops at its next step
    server.stop()
    assert server.proc.returncode in (0, -15), server.log.read_text()  # uvicorn re-raises the signal once it is done
    assert "Traceback" not in server.log.read_text()
    from sdkit.server.store import JobStore

    stored = JobStore(server.out / ".sdkit-server" / "queue.sqlite3").get(job)
    assert stored.status == "interrupted" and stored.error is None  # stopped by the shutdown, not found running later
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/sdapi/v1/options", timeout=2)
