"""bench/finetune_shapes.py's caches: a trained run is redone when its recipe changes, a merged model when its LoRA
file or weight changes; scores at several eval seeds pool into one."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import FAST, shapes_dataset

from bench.finetune_shapes import merged
from sdkit.schema.finetune import TrainLoraRecipe
from sdkit.tasks.train_lora import run


def test_merged_copy_is_reused_only_for_the_same_files_and_weights(tiny_sd_dir: Path, tmp_path: Path) -> None:
    data = shapes_dataset(tmp_path / "shapes", n=2)
    recipe = TrainLoraRecipe(model=str(tiny_sd_dir), data_dir=data, output_dir=tmp_path / "run",
                             **{**FAST, "max_steps": 1, "learning_rate": 0.05})  # fmt: skip
    lora = run(recipe).files[0]
    out = tmp_path / "merged"

    def built(weight: float) -> int:
        merged(str(tiny_sd_dir), out, [(lora, weight)])
        return (out / "model_index.json").stat().st_mtime_ns

    first = built(1.0)
    assert built(1.0) == first  # same file, same weight: reused
    second = built(0.5)
    assert second != first  # another weight: rebuilt
    os.utime(lora, ns=(lora.stat().st_atime_ns, lora.stat().st_mtime_ns + 10**9))  # the LoRA was retrained
    assert built(0.5) != second


def test_a_run_is_retrained_when_its_recipe_changes(tiny_sd_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import json

    from bench import finetune_shapes as bench

    zig = shapes_dataset(tmp_path / "zig", n=2)
    meta = zig / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    meta.write_text("".join(json.dumps({**r, "text": r["text"].replace(r["shape"], bench.TI_TOKEN)}) + "\n" for r in rows))
    out = tmp_path / "out"

    def trained() -> int:
        bench.train("textual_inversion", str(tiny_sd_dir), {"zig": zig}, out, quick=True)
        return (out / "textual_inversion/run.json").stat().st_mtime_ns

    first = trained()
    assert trained() == first  # the same recipe: the finished run is reused
    command, fields = bench.RECIPES["textual_inversion"]
    monkeypatch.setitem(bench.RECIPES, "textual_inversion", (command, {**fields, "learning_rate": 1e-3}))
    assert trained() != first  # another recipe: trained again
    assert "learning_rate: 0.001" in (out / "textual_inversion.yaml").read_text()


def test_scores_at_several_eval_seeds_pool_into_one() -> None:
    from bench.finetune_shapes import pooled

    a = {"cfg": 5.0, "n": 200, "shape": 0.8, "all": 0.845, "heldout_n": 200, "heldout_all": 0.86}
    b = {"cfg": 5.0, "n": 200, "shape": 0.815, "all": 0.925, "heldout_n": 200, "heldout_all": 0.8}
    both = pooled({1234: a, 4321: b})
    assert {k: both[k] for k in a} == {"cfg": 5.0, "n": 400, "shape": 0.8075, "all": 0.885, "heldout_n": 400, "heldout_all": 0.83}
    assert both["seeds"] == {"1234": a, "4321": b}
