"""Model references: aliases, hub ids, local folders, hashes, and pickle weights behind --allow-pickle."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke

from sdkit.models import ALIASES, resolve_model


@pytest.mark.parametrize("alias", ["sd15", "sd21", "sdxl", "sd-turbo", "sdxl-turbo"])
def test_hub_aliases(alias: str) -> None:
    ref = resolve_model(alias)
    assert ref.kind == "hub" and ref.location == ALIASES[alias] and "/" in ref.location and ref.sha256 is None


def test_hub_id_and_local_folder(tiny_sd_dir: Path, tmp_path: Path) -> None:
    assert resolve_model("someorg/some-model").kind == "hub"
    local = resolve_model(str(tiny_sd_dir))
    assert local.kind == "folder" and local.location == str(tiny_sd_dir.resolve())
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sd_dir, copy)
    assert resolve_model(str(copy)).sha256 == local.sha256  # content hash, not path
    (copy / "unet" / "config.json").write_text((copy / "unet" / "config.json").read_text() + " ")
    assert resolve_model(str(copy)).sha256 != local.sha256


def _pickled_copy(tiny: Path, root: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    folder = root / "pickled"
    shutil.copytree(tiny, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    return folder


def test_allow_pickle_loads_plain_tensors(tiny_sd_dir: Path, tmp_path: Path) -> None:
    folder = _pickled_copy(tiny_sd_dir, tmp_path)
    args = ["generate", "a cat", "-m", folder, "--steps", "2", "--seed", "1", "-o", tmp_path / "o"]
    assert_user_error(invoke(*args), "--allow-pickle")
    result = invoke(*args, "--allow-pickle")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "00001-1.png").is_file()


class Payload:
    """Unpickling this would create a marker file: the weights_only loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_even_with_opt_in(tiny_sd_dir: Path, tmp_path: Path) -> None:
    folder = _pickled_copy(tiny_sd_dir, tmp_path)
    marker = tmp_path / "pwned"
    with (folder / "unet" / "diffusion_pytorch_model.bin").open("wb") as f:
        pickle.dump({"weight": Payload(marker)}, f)
    result = invoke("generate", "a cat", "-m", folder, "--steps", "2", "--allow-pickle", "-o", tmp_path / "o")
    assert_user_error(result, f"refused: {folder / 'unet' / 'diffusion_pytorch_model.bin'}", "weights_only")
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


def test_content_hash_is_remembered_until_a_file_changes(tiny_sd_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import json
    import os

    from sdkit.models import content_hash, hash_cache_file

    monkeypatch.setenv("SDKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = shutil.copytree(tiny_sd_dir, tmp_path / "model")
    first = content_hash(folder)
    cache = json.loads(hash_cache_file().read_text())
    assert cache[str(folder.resolve())]["sha256"] == first
    # A remembered hash is used without reading the bytes: plant a marker and it comes back.
    cache[str(folder.resolve())]["sha256"] = "remembered"
    hash_cache_file().write_text(json.dumps(cache))
    assert content_hash(folder) == "remembered"
    # Any change of size or modification time means the bytes are read again.
    config = folder / "unet" / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 1_000_000))
    assert content_hash(folder) == first
    config.write_text(config.read_text() + " ")
    changed = content_hash(folder)
    assert changed not in (first, "remembered")
    # A damaged cache file is ignored (and rewritten), never an error.
    hash_cache_file().write_text("{not json")
    assert content_hash(folder) == changed and json.loads(hash_cache_file().read_text())


def test_weights_format_reads_the_bytes_not_the_name(tmp_path: Path) -> None:
    import tarfile
    import zipfile

    import torch
    from safetensors.torch import save_file

    from sdkit.weightfiles import PICKLE, SAFETENSORS, weights_format

    tensors = {"w": torch.ones(2, 2)}
    save_file(tensors, tmp_path / "st.ckpt")
    torch.save(tensors, tmp_path / "zip.safetensors")
    torch.save(tensors, tmp_path / "legacy", _use_new_zipfile_serialization=False)
    (tmp_path / "raw").write_bytes(pickle.dumps([1.0], protocol=2))
    with tarfile.open(tmp_path / "old.tar", "w") as tar:  # torch's pre-1.6 tar layout has a member named "pickle"
        (tmp_path / "pickle").write_bytes(pickle.dumps({}, protocol=2))
        tar.add(tmp_path / "pickle", arcname="pickle")
    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    (tmp_path / "text").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "page").write_text("<!DOCTYPE html><html><body>404</body></html>")
    (tmp_path / "noise").write_bytes(bytes(range(256)))
    expected = {
        "st.ckpt": SAFETENSORS, "zip.safetensors": PICKLE, "legacy": PICKLE, "raw": PICKLE, "old.tar": PICKLE,
        "docs.zip": "a zip archive without a torch pickle", "text": "text", "empty": "empty", "page": "an HTML page",
        "noise": "unrecognised bytes",
    }  # fmt: skip
    assert {name: weights_format(tmp_path / name) for name in expected} == expected
