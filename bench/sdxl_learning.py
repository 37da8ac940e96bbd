"""SDXL learning against issue 24's goals: the SDXL shapes model and its fine-tunes (bench/finetune_shapes_sdxl.py).

    python -m bench sdxl_learning

Reads bench/results/finetune_shapes_sdxl.json; when it is missing, runs the fine-tune bench first (it trains the
LoRA, DreamBooth LoRA, textual inversion and the two aspect-ratio fine-tunes: about an hour of one CPU core, after the
base model of recipes/train/shapes-sdxl.yaml).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import HERE, Figure

RESULTS = HERE / "results" / "finetune_shapes_sdxl.json"


def run(results: Path = RESULTS) -> list[Figure]:
    if not results.is_file():
        from bench.finetune_shapes_sdxl import main

        main(["--results", str(results)])
    data = json.loads(results.read_text())
    ev = data["eval"]
    base, db_world = ev["base/world"], ev["dreambooth_lora/world"]
    drop = 100 * (base["all"] - db_world["all"])
    figures = [
        Figure("sdxl", "base colour @cfg5", 100 * base["color"], "%", "≥ 90 %", base["color"] >= 0.90, f"n={base['n']}"),
        Figure("sdxl", "base shape @cfg5", 100 * base["shape"], "%", "≥ 85 %", base["shape"] >= 0.85, f"n={base['n']}"),
        Figure("sdxl", "base background @cfg5", 100 * base["background"], "%", "≥ 90 %", base["background"] >= 0.90, f"n={base['n']}"),
    ]
    striped1, striped0 = ev["lora_striped@1/striped"]["pattern"], ev["lora_striped@0/striped"]["pattern"]
    figures += [
        Figure("sdxl", "striped LoRA @1", 100 * striped1, "%", "≥ 80 %", striped1 >= 0.80, "striped prompts read as striped"),
        Figure("sdxl", "striped LoRA @0", 100 * striped0, "%", "≤ 5 %", striped0 <= 0.05, ""),
    ]
    star = ev["dreambooth_lora/sks_star"]["shape"]
    figures += [
        Figure("sdxl", "DreamBooth LoRA sks→star", 100 * star, "%", "≥ 80 %", star >= 0.80, f"base {100 * ev['base/sks_star']['shape']:.1f} %"),
        Figure("sdxl", "DreamBooth base-prompt drop", drop, "points", "≤ 5 points", drop <= 5, f"n={db_world['n']}"),
    ]
    zig = ev["textual_inversion/zig_triangle"]["shape"]
    figures.append(Figure("sdxl", "textual inversion <zig>→triangle", 100 * zig, "%", "≥ 60 %", zig >= 0.60,
                          f"base {100 * ev['base/zig_triangle']['shape']:.1f} %"))  # fmt: skip
    for aspect in ("64x96", "96x64"):
        shape, crop = ev[f"buckets@{aspect}/world"]["shape"], ev[f"center_crop@{aspect}/world"]["shape"]
        figures.append(Figure("sdxl", f"buckets shape @{aspect}", 100 * shape, "%", "≥ 80 %", shape >= 0.80,
                              f"centre-crop baseline {100 * crop:.1f} %, base {100 * ev[f'base@{aspect}/world']['shape']:.1f} %"))  # fmt: skip
    for name, t in data["training"].items():
        files = ", ".join(f"{f} {size / 2**20:.2f} MB" if size >= 2**20 else f"{f} {size / 1024:.1f} kB" for f, size in t["file_bytes"].items())
        figures.append(Figure("sdxl", f"train {name}", t["wall_seconds"], "s", "reported", None,
                              f"{t['steps']} steps on 1 CPU thread · peak RSS {t['peak_rss_mb']:.0f} MB · {files}"))  # fmt: skip
    return figures
