"""`sdkit eval shapes`: the report, guidance comparison, adapters, errors (the shipped model's scores: test_shapes_model)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import assert_user_error, invoke
from test_generate_adapters import _lora_state


def test_eval_json_report_and_lora(tmp_path: Path, tiny_sd_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    _, state = _lora_state(tiny_sd_dir, "StableDiffusionPipeline", 1)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=state)
    lora = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    args = ["eval", "shapes", "-m", tiny_sd_dir, "--n", "3", "--steps", "2", "--cfg", "1", "--cfg", "5", "--json"]
    first = invoke(*args, "-o", tmp_path / "report", "--lora", f"{lora}:0.5")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert [s["cfg"] for s in report["scores"]] == [1.0, 5.0] and report["loras"] == [str(lora)]
    assert all(s["n"] == 3 and s["heldout_n"] == 3 and 0 <= s["all"] <= 1 for s in report["scores"])
    assert json.loads((tmp_path / "report" / "report.json").read_text())["scores"] == report["scores"]
    assert (tmp_path / "report" / "samples.png").is_file()
    again = json.loads(invoke(*args, "--lora", f"{lora}:0.5").stdout)
    assert again["scores"] == report["scores"]  # same seed, same numbers


def test_eval_errors(tmp_path: Path, tiny_sd_dir: Path) -> None:
    assert_user_error(invoke("eval", "shapes", "-m", tiny_sd_dir, "--cfg", "-1"), "cfg must be >= 0")
    assert_user_error(invoke("eval", "shapes", "-m", tiny_sd_dir, "--lora", tmp_path / "none.safetensors"), "no such file")
    assert_user_error(invoke("eval", "shapes", "-m", tiny_sd_dir, "--shapes", "octagon"), "octagon")
    assert_user_error(invoke("eval", "shapes", "-m", tmp_path / "nope"), "not found")


def test_eval_no_heldout_switches_a_true_default_off(tiny_sd_dir: Path) -> None:
    args = ["eval", "shapes", "-m", tiny_sd_dir, "--n", "2", "--steps", "1", "--json"]
    on = json.loads(invoke(*args, "--heldout").stdout)
    off = invoke(*args, "--no-heldout")
    assert off.exit_code == 0, off.output
    assert on["scores"][0]["heldout_n"] == 2
    assert json.loads(off.stdout)["scores"][0]["heldout_n"] == 0
