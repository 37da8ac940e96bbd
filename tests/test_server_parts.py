"""The server's parts without a server: the queue's crash recovery, the library's names, A1111's infotext reading,
client image references, and the settings check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serverkit import png_header

from sdkit.errors import UserError
from sdkit.server import catalog, pnginfo
from sdkit.server.config import ServerConfig, check, parse_auth
from sdkit.server.store import JobStore, QueueFull
from sdkit.server.uploads import NotFound, decode_base64, gallery_path, image_ref, open_image

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "a1111_api.json").read_text())


def test_queue_claims_in_order_and_never_twice(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    ids = [store.submit("task", "generate", {"fields": {"n": i}}, limit=10) for i in range(3)]
    first, second = store.claim("w0"), store.claim("w1")
    assert (first.id, second.id) == (ids[0], ids[1])
    assert first.status == second.status == "running"
    store.finish(first.id, "done", {"images": []})
    store.finish(first.id, "failed", None, "late")  # a job already final is not changed again
    assert store.get(first.id).status == "done"
    assert store.claim("w0").id == ids[2]
    assert store.claim("w0") is None


def test_queue_limit_says_when_to_retry(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    store.submit("task", "generate", {}, limit=2)
    store.submit("task", "generate", {}, limit=2)
    with pytest.raises(QueueFull) as full:
        store.submit("task", "generate", {}, limit=2)
    assert full.value.queued == 2 and full.value.retry_after >= 1


def test_recovery_after_a_crash(tmp_path: Path) -> None:
    """A job left running is interrupted, a training job queued again; queued jobs stay queued, finished ones finished."""
    path = tmp_path / "q.sqlite3"
    store = JobStore(path)
    done = store.submit("task", "generate", {}, limit=10)
    running = store.submit("task", "generate", {}, limit=10)
    training = store.submit("task", "train-lora", {"_resumable": True}, limit=10)
    queued = store.submit("task", "generate", {}, limit=10)
    store.finish(store.claim("w").id, "done")
    store.claim("w")
    store.claim("w")
    store.db.close()  # the process dies: nothing more is written

    again = JobStore(path)
    assert again.recover() == {"interrupted": [running], "queued": [training]}
    status = {job_id: again.get(job_id).status for job_id in (done, running, training, queued)}
    assert status == {done: "done", running: "interrupted", training: "queued", queued: "queued"}
    assert [again.claim("w").id, again.claim("w").id] == [training, queued]
    assert again.get(training).attempts == 2


def test_cancel_only_touches_queued_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    a, b = store.submit("task", "generate", {}, 10), store.submit("task", "generate", {}, 10)
    store.claim("w")
    assert store.cancel(b) == "cancelled"
    assert store.cancel(a) == "running"
    assert store.cancel(999) is None


def test_catalog_names_titles_and_hashes(tmp_path: Path) -> None:
    """The server's names are sdkit.library's (an A1111 models/ folder here) plus the shipped models, A1111 titles and
    datasets; pickles are refused by name."""
    (tmp_path / "Stable-diffusion").mkdir()
    (tmp_path / "Lora" / "styles").mkdir(parents=True)
    (tmp_path / "Lora" / "styles" / "ink.safetensors").write_bytes(b"x")
    (tmp_path / "Lora" / "old.ckpt").write_bytes(b"y")  # pickles are never listed
    (tmp_path / "datasets" / "tiny").mkdir(parents=True)
    (tmp_path / "datasets" / "tiny" / "metadata.jsonl").write_text("")
    shapes = catalog.find("checkpoints", "shapes", tmp_path)
    assert catalog.find("checkpoints", shapes.title, tmp_path) == shapes
    assert catalog.find("checkpoints", shapes.short_hash, tmp_path) == shapes
    assert [e.name for e in catalog.entries("loras", tmp_path)] == ["styles/ink"]
    ink = catalog.find("loras", "styles/ink.safetensors", tmp_path)
    assert ink.path == (tmp_path / "Lora/styles/ink.safetensors").resolve() and catalog.model_name(ink) == "styles_ink"
    assert catalog.find("loras", "ink", tmp_path) == ink == catalog.find("loras", f"ink [{ink.short_hash}]", tmp_path)
    assert catalog.find("loras", ink.sha256[:12], tmp_path) == ink
    assert catalog.find("datasets", "tiny", tmp_path).path == (tmp_path / "datasets" / "tiny").resolve()
    with pytest.raises(UserError, match="'old' is a pickle"):
        catalog.find("loras", "old", tmp_path)
    for bad in ("/etc/passwd", "../Lora/styles/ink.safetensors", str(ink.path)):
        with pytest.raises(UserError, match="not in the library"):
            catalog.find("loras" if "ink" in bad else "checkpoints", bad, tmp_path)


def test_infotext_read_as_a1111_reads_it() -> None:
    parsed = pnginfo.parse(FIXTURES["infotext"])
    for key, value in FIXTURES["infotext_parsed"].items():
        assert parsed[key] == value, key
    assert pnginfo.parse("just a prompt")["Prompt"] == "just a prompt"


def test_client_images_are_bytes_never_paths_or_urls(tmp_path: Path) -> None:
    import base64

    with pytest.raises(UserError, match="does not fetch URLs"):
        decode_base64("https://example.com/a.png", "init_images.0")
    with pytest.raises(UserError, match="not valid base64"):
        decode_base64("/etc/hosts", "init_images.0")
    with pytest.raises(UserError, match="more than the limit of 67,108,864"):
        open_image(png_header(9000, 9000), "init_images.0")
    out, state = tmp_path / "out", tmp_path / "out" / ".sdkit-server"
    (out / "a").mkdir(parents=True)
    state.mkdir()
    (out / "a" / "00001-1.png").write_bytes(png_header(8, 8))
    (state / "x.png").write_bytes(png_header(8, 8))
    assert gallery_path("a/00001-1.png", out, state) == (out / "a" / "00001-1.png").resolve()
    for bad in ("../out/a/00001-1.png", "/etc/passwd", "a/../../x.png", ".sdkit-server/x.png", "a/00001-1.txt"):
        with pytest.raises(UserError):
            gallery_path(bad, out, state)
    with pytest.raises(NotFound):
        gallery_path("a/00002-1.png", out, state)
    (out / "link.png").symlink_to("/etc/hostname")
    with pytest.raises(UserError):
        gallery_path("link.png", out, state)
    stored = image_ref("data:image/png;base64," + base64.b64encode(_tiny_png()).decode(), "init_image", out, state)
    assert stored.parent == (state / "uploads").resolve()


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def test_settings_check() -> None:
    with pytest.raises(UserError, match="--api-auth"):
        check(ServerConfig(host="0.0.0.0"))
    check(ServerConfig(host="0.0.0.0", api_auth="me:secret"))
    check(ServerConfig(host="0.0.0.0", insecure=True))
    check(ServerConfig(host="::1"))
    assert parse_auth("a:b, c:d:e") == {"a": "b", "c": "d:e"}
    with pytest.raises(UserError, match="USER:PASSWORD"):
        parse_auth("nopassword")
    with pytest.raises(UserError, match="cors"):
        check(ServerConfig(cors_allow_origins=("example.com",)))


@pytest.mark.parametrize("bound", ["count", "memory"])
def test_warm_pipelines_within_the_bound(bound: str, tiny_sd_dir: Path, tiny_sdxl_dir: Path) -> None:
    """The least recently used pipeline is dropped past --max-loaded-models or --memory-limit-mb; hits stay warm."""
    from sdkit import device
    from sdkit.models import resolve_model
    from sdkit.server.runs import BoundedCache, loaded_bytes

    placement = device.resolve("cpu")
    sd, xl = resolve_model(str(tiny_sd_dir)), resolve_model(str(tiny_sdxl_dir))
    probe = BoundedCache(max_models=2)
    sizes = [loaded_bytes(probe.get(m, placement).pipe) for m in (sd, xl)]
    assert probe.dropped == 0 and len(probe.entries) == 2 and all(sizes)
    cache = BoundedCache(max_models=1) if bound == "count" else BoundedCache(max_models=5, memory_mb=max(sizes) * 1.5 / 2**20)
    first = cache.get(sd, placement)
    assert cache.get(sd, placement) is first and cache.loads == 1  # a hit: still warm
    cache.get(xl, placement)
    assert cache.dropped == 1 and len(cache.entries) == 1 and cache.loads == 2
    assert cache.get(sd, placement) is not first and cache.loads == 3  # it was dropped, so it loads again
    roomy = BoundedCache(max_models=5, memory_mb=sum(sizes) * 2 / 2**20)
    for model in (sd, xl, sd, xl):
        roomy.get(model, placement)
    assert roomy.loads == 2 and roomy.dropped == 0


def test_compiled_graphs_within_the_bound() -> None:
    """The OpenVINO graphs a server keeps: at most GRAPHS_PER_MODEL per warm pipeline, least recently used out first,
    all of them out when a pipeline is dropped (requests choosing new sizes cannot grow memory without bound)."""
    from sdkit.server.runs import GRAPHS_PER_MODEL, BoundedCache

    cache = BoundedCache(max_models=1)
    for size in range(GRAPHS_PER_MODEL):
        cache.converted[("unet", size)] = object()
    assert ("unet", 0) in cache.converted
    cache.converted[("unet", 0)]  # read: now the most recent
    cache.converted[("unet", "new")] = object()
    assert len(cache.converted) == GRAPHS_PER_MODEL and ("unet", 1) not in cache.converted and ("unet", 0) in cache.converted
    cache.entries[("a model",)] = object()
    cache._drop(("a model",))
    assert not cache.converted and cache.dropped == 1
