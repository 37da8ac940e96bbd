"""bench/sdxl_learning.py and bench/finetune_shapes_sdxl.py's data and scoring helpers (the hour-long run itself is
`python -m bench sdxl_learning`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from bench import sdxl_learning
from bench.finetune_shapes_sdxl import ASPECTS, mixed_aspect_world, square


def test_mixed_aspect_world_has_both_aspects_and_the_scene_inside(tmp_path: Path) -> None:
    out = mixed_aspect_world(tmp_path / "mixed", n=6, seed=3)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and not (tmp_path / "mixed.tmp").exists()
    sizes = [Image.open(out / r["file_name"]).size for r in rows]
    assert sizes[0::2] == [ASPECTS["64x96"]] * 3 and sizes[1::2] == [ASPECTS["96x64"]] * 3
    assert all((r["width"], r["height"]) == s for r, s in zip(rows, sizes, strict=True)) and all(r["text"] for r in rows)


def test_square_pads_with_the_border_colour() -> None:
    image = Image.new("RGB", (64, 96), (10, 20, 200))
    image.paste((255, 0, 0), (20, 40, 40, 60))
    padded = np.asarray(square(image))
    assert padded.shape == (96, 96, 3)
    assert (padded[:, :16] == (10, 20, 200)).all() and (padded[40:60, 36:56] == (255, 0, 0)).all()


def results(tmp_path: Path, **rates: float) -> Path:
    """A results file in finetune_shapes_sdxl's layout, every rate `rates.get(name, 0.9)`."""
    keys = ["base/world", "lora_striped@1/striped", "lora_striped@0/striped", "dreambooth_lora/sks_star",
            "dreambooth_lora/world", "base/sks_star", "textual_inversion/zig_triangle", "base/zig_triangle"]  # fmt: skip
    keys += [f"{m}@{a}/world" for m in ("base", "buckets", "center_crop") for a in ASPECTS]
    ev = {k: {"n": 200, **{f: rates.get(k.replace("/", "_").replace("@", "_"), 0.9)
                           for f in ("color", "shape", "background", "pattern", "all")}} for k in keys}  # fmt: skip
    training = {"lora_striped": {"steps": 40, "wall_seconds": 1.5, "peak_rss_mb": 900.0,
                                 "file_bytes": {"pytorch_lora_weights.safetensors": 1823048}}}  # fmt: skip
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"eval": ev, "training": training}))
    return path


def test_figures_hold_their_goals(tmp_path: Path) -> None:
    figures = {f.name: f for f in sdxl_learning.run(results(tmp_path, lora_striped_0_striped=0.01, dreambooth_lora_world=0.88))}
    assert figures["striped LoRA @1"].met and figures["striped LoRA @0"].met
    assert abs(figures["DreamBooth base-prompt drop"].value - 2.0) < 1e-9 and figures["DreamBooth base-prompt drop"].met
    assert figures["buckets shape @64x96"].met and "centre-crop baseline 90.0 %" in figures["buckets shape @64x96"].detail
    assert figures["train lora_striped"].value == 1.5 and "1.74 MB" in figures["train lora_striped"].detail
    failing = {f.name: f for f in sdxl_learning.run(results(tmp_path, lora_striped_0_striped=0.2, dreambooth_lora_world=0.8,
                                                            buckets_96x64_world=0.5))}  # fmt: skip
    assert not failing["striped LoRA @0"].met and not failing["DreamBooth base-prompt drop"].met
    assert not failing["buckets shape @96x64"].met and failing["buckets shape @64x96"].met
