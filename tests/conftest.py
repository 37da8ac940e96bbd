"""Shared fixtures: tiny SD 1.x and SDXL pipelines, built once per session from real diffusers/transformers classes
(`sdkit.architectures` presets "tiny-sd" / "tiny-sdxl", random weights, seed 0) and saved as ordinary diffusers
folders, so tests load them through the same code a user's model folder goes through. Nothing touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_SEED = 0


def pytest_configure(config: pytest.Config) -> None:
    # Set before huggingface_hub is imported: a stray hub lookup then fails at once instead of retrying for ~24 s.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One intra-op thread, read by torch at import here and inherited by CLI subprocesses (same numerics in both).
    # Tiny models gain nothing from a second thread, and on the shared 2-core box tests/test_architectures.py took
    # 18.5 s with 2 threads vs 5.5-8.2 s with 1 (load ~2-3 from other work).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Model hashes are remembered in a cache file: the suite (and its CLI subprocesses) keeps its own, not the user's.
    import tempfile

    os.environ["SDKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="sdkit-test-cache-")


@pytest.fixture(scope="session", autouse=True)
def _single_thread_torch() -> None:
    """Apply OMP_NUM_THREADS even if a plugin imported torch before pytest_configure could set it."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _build_and_save(preset: str, out_dir: Path) -> Path:
    from sdkit.architectures import build_pipeline, save_pipeline

    return save_pipeline(build_pipeline(preset, seed=TINY_SEED), out_dir)


@pytest.fixture(scope="session")
def tiny_seed() -> int:
    """The seed the tiny pipeline folders were built with (`build_pipeline(preset, seed=tiny_seed)` rebuilds them)."""
    return TINY_SEED


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny SD 1.x pipeline folder (model_index.json, safetensors; PNDM; 32 px default). Do not modify it."""
    return _build_and_save("tiny-sd", tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny SDXL pipeline folder (two text encoders; Euler; 32 px default). Do not modify it."""
    return _build_and_save("tiny-sdxl", tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIPModel + CLIPProcessor folder trained on the shapes world (tests/tiny_clip.py; ~12 s). Do not modify it."""
    from tiny_clip import train_tiny_clip

    return train_tiny_clip(tmp_path_factory.mktemp("models"))
