"""The page in a real browser: Debian's chromium driven by Playwright's Python package (`executable_path`; Playwright
downloads no browser here). Open the page, fill the form (model, sampler, schedule, steps, size, seed, a LoRA with
its weight), generate, watch the progress bar and the preview, find the image in the gallery, open its settings, use
it as the init image and copy its settings; the screenshots go to $SDKIT_ARTIFACTS (default .ci/artifacts/), which
CI keeps.

Without chromium or Playwright the test is skipped, unless SDKIT_REQUIRE_BROWSER=1 (CI sets it): then it fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from serverkit import Server, make_library

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("SDKIT_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(os.environ.get("SDKIT_ARTIFACTS", Path(__file__).parent.parent / ".ci" / "artifacts"))


def browser_or_skip():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "Playwright's Python package is not installed (pip install playwright)"
    if missing is None and not shutil.which(CHROMIUM):
        missing = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("SDKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SDKIT_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture
def page(tmp_path: Path):
    sync_playwright = browser_or_skip()
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="sdkit-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=FLAGS, headless=True,
                                                                viewport={"width": 1280, "height": 1000},
                                                                http_credentials={"username": "ui", "password": "test-pass"})  # fmt: skip
        try:
            yield context.new_page()
        finally:
            context.close()


def test_generate_and_browse_in_a_browser(page, tmp_path: Path, tiny_sd_dir: Path) -> None:
    library = make_library(tmp_path / "library", tiny_sd_dir)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    with Server(tmp_path / "out", "--models-dir", library, "--api-auth", "ui:test-pass", auth=("ui", "test-pass")) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#status-line:has-text('ready')")
        page.fill("#prompt", "a red circle on a blue background")
        page.select_option("#model", "shapes")
        page.select_option("#sampler", "Euler a")
        page.select_option("#schedule", "Automatic")
        page.fill("#steps", "250")
        page.fill("#cfg", "5")
        page.fill("#width", "64")
        page.fill("#height", "64")
        page.fill("#seed", "1234")
        page.click("#add-lora")
        page.select_option(".lora-row .lora-name", "star")
        page.fill(".lora-row .lora-weight", "0.5")
        page.click("#generate")

        page.wait_for_function("Number(document.querySelector('#progress').getAttribute('aria-valuenow')) > 0", timeout=120_000)
        page.wait_for_selector("#preview:not([hidden])", timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "server-page-progress.png"), full_page=True)
        page.wait_for_selector("#result img.result-image", timeout=300_000)
        assert page.get_attribute("#progress", "aria-valuenow") == "100"
        name = page.get_attribute("#result img.result-image", "data-name")
        assert name == "generate/00001-1234.png"
        assert page.evaluate("document.querySelector('#result img').naturalWidth") == 64

        thumb = page.locator(f"#gallery .thumb[data-name='{name}']")
        thumb.wait_for(timeout=30_000)
        thumb.click()
        page.wait_for_selector("#details[open]")
        settings = page.inner_text("#details-settings")
        assert "Seed: 1234" in settings and "Steps: 250" in settings and "Sampler: Euler a" in settings
        page.screenshot(path=str(ARTIFACTS / "server-page-settings.png"), full_page=True)
        page.click("#copy")
        page.wait_for_selector("#copy-done:has-text('copied')")
        page.click("#use-init")
        assert page.inner_text("#init-chosen") == name
        assert page.locator("#queue tbody tr").count() >= 1
        assert "done" in page.inner_text("#queue tbody tr:first-child")

        with server.client() as client:
            job = client.get("/sdkit/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert job["recipe"]["scheduler"] == "Euler a" and job["recipe"]["lora"][0]["weight"] == 0.5
    assert all(url.startswith(server.url) for url in requests), [u for u in requests if not u.startswith(server.url)]
