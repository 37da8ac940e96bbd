"""bench/a1111_prompts.py runs end to end (a few prompts per condition) and reports the figures the README quotes."""

from __future__ import annotations

import json
from pathlib import Path


def test_a1111_prompts_bench_runs(tmp_path: Path) -> None:
    from bench import a1111_prompts

    figures = a1111_prompts.run(n=3, out=tmp_path)
    names = [f.name for f in figures]
    assert names[0] == "caption alone (all)" and "known filler BREAK caption, chunked (all)" in names
    assert "'second at 2': first colour" in names
    exact = next(f for f in figures if f.name.startswith("max abs difference"))
    assert exact.value == 0.0 and exact.met  # sdkit's embeddings of plain captions are diffusers' own
    report = json.loads((tmp_path / "a1111_prompts.json").read_text())
    assert report["n"] == 3 and set(report["rates"]) >= {"caption", "known chunked", "known truncated", "second at 1.6"}
