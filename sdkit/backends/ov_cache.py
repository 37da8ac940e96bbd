"""The on-disk cache of converted OpenVINO models: one folder per (module, weights, input shapes, precision, version).

    ~/.cache/sdkit/openvino/<key>/model.xml, model.bin   the converted IR (weights stored fp16 under a bf16/fp16 hint)
                                  manifest.json          the key, each file's size and sha256, the conversion time
                                  compiled/              OpenVINO's own compile cache (CACHE_DIR)

The key is the sha256 of a JSON object naming the module, the model's sha256, the fused LoRA set (file sha256 and
weight), the embeddings (file sha256 and token), the input names/shapes/types, the precision hint, the speed switches
that change the module's graph and the OpenVINO version. An entry is written into a temporary folder and renamed into
place (sdkit.atomic.staged_dir), so a half-written entry never has the final name; an entry whose manifest or files do
not match (truncated, changed, damaged) is removed and converted again, never used.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdkit.progress import warn

FORMAT = 1  # bump when the conversion changes what an entry holds
FILES = ("model.xml", "model.bin")


def root() -> Path:
    """$SDKIT_CACHE_DIR/openvino (the folder of sdkit's hash cache)."""
    from sdkit.models import hash_cache_file

    return hash_cache_file().parent / "openvino"


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **key}, sort_keys=True).encode()).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(2**22):
            digest.update(chunk)
    return digest.hexdigest()


def problem(entry: Path, key: dict[str, Any]) -> str | None:
    """Why the entry cannot be used (None when it is complete and matches its manifest)."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        return f"manifest unreadable ({type(err).__name__})"
    if not isinstance(manifest, dict) or manifest.get("key") != json.loads(json.dumps({"format": FORMAT, **key})):
        return "manifest names another key"
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(FILES):
        return "manifest lists other files"
    for name in FILES:
        path = entry / name
        size, sha = files[name] if isinstance(files[name], list) and len(files[name]) == 2 else (None, None)
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or has the wrong size"
        if file_sha256(path) != sha:
            return f"{name} does not match its sha256"
    return None


def entry_for(key: dict[str, Any], convert: Callable[[], Any], what: str) -> Path:
    """The folder of a valid entry for `key`: the cached one, or a new conversion (`convert()` returns an ov.Model),
    reported on stderr with its time. A damaged entry is removed and converted again."""
    import openvino as ov

    entry = root() / key_hash(key)
    if entry.exists():
        why = problem(entry, key)
        if why is None:
            return entry
        warn(f"OpenVINO cache entry {entry} is damaged ({why}): converting {what} again")
        shutil.rmtree(entry, ignore_errors=True)
    from sdkit.atomic import staged_dir

    start = time.perf_counter()
    model = convert()
    seconds = time.perf_counter() - start
    compress = key.get("precision") != "f32"
    with staged_dir(entry) as tmp:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=compress)
        files = {name: [(tmp / name).stat().st_size, file_sha256(tmp / name)] for name in FILES}
        manifest = {"key": {"format": FORMAT, **key}, "files": files, "convert_s": round(seconds, 2)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    del model
    gc.collect()  # the traced graph and its weight copies go before the IR is compiled
    print(f"openvino: converted {what} in {seconds:.1f} s (cached in {entry})", file=sys.stderr, flush=True)
    return entry


def compile_entry(entry: Path, device: str, config: dict[str, Any]):
    """Compile an entry's IR for `device`, with OpenVINO's compile cache in the entry; should the compile cache be
    damaged, it is dropped and the IR compiled without it."""
    import openvino as ov

    core = ov.Core()
    xml = str(entry / "model.xml")
    try:
        return core.compile_model(xml, device, {**config, "CACHE_DIR": str(entry / "compiled")})
    except RuntimeError as err:
        warn(f"OpenVINO compile cache in {entry} failed ({str(err).strip().splitlines()[0][:120]}): compiling without it")
        shutil.rmtree(entry / "compiled", ignore_errors=True)
        return ov.Core().compile_model(xml, device, config)
