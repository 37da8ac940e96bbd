"""The embedded shapes model: loads with plain diffusers, is the offline default, and still scores (small n).

The full 200-prompt figures are `python -m bench shapes_eval`; this guards the shipped files and the wiring."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import invoke

from sdkit.models import ASSETS

MODEL = ASSETS / "shapes"


def test_shipped_folder_is_small_safetensors_and_plain_diffusers() -> None:
    from diffusers import StableDiffusionPipeline

    files = [p for p in MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
    pipe = StableDiffusionPipeline.from_pretrained(MODEL)
    assert len(pipe.tokenizer) == pipe.text_encoder.config.vocab_size
    assert (MODEL / "README.md").read_text().startswith("# shapes")


def test_shipped_tokenizer_reads_the_same_from_the_legacy_files(tmp_path: Path) -> None:
    # transformers 4's slow CLIPTokenizer reads vocab.json + merges.txt + added_tokens.json, never tokenizer.json;
    # the six words v6 added must be single tokens there too
    import shutil

    from sdkit.tokenizer import load_tokenizer

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json"):
        shutil.copy(MODEL / "tokenizer" / name, tmp_path / name)
    full, legacy = load_tokenizer(MODEL / "tokenizer"), load_tokenizer(tmp_path)
    for prompt in ("a red pentagon on a blue background", "an orange heart and a white crescent", "a green arrow"):
        assert legacy(prompt).input_ids == full(prompt).input_ids
    assert len(full.encode("hexagon", add_special_tokens=False)) == 1


def test_default_model_generates_offline(tmp_path: Path) -> None:
    from sdkit.eval.scorer import score_image

    result = invoke("generate", "a red circle on a blue background", "--seed", "1", "--num-images", "6", "--cfg", "5",
                    "-o", tmp_path)
    assert result.exit_code == 0, result.output
    paths = sorted(tmp_path.glob("*.png"))
    record = json.loads(__import__("PIL.Image").Image.open(paths[0]).text["sdkit"])
    assert record["model"]["ref"] == "shapes" and len(record["model"]["sha256"]) == 64
    from PIL import Image

    seen = [score_image(Image.open(p)) for p in paths]
    assert sum(d.background == "blue" for d in seen) >= 5
    assert sum(d.color == "red" for d in seen) >= 4


def test_eval_smoke_on_the_shipped_model() -> None:
    result = invoke("eval", "shapes", "--n", "24", "--cfg", "5", "--json")
    assert result.exit_code == 0, result.output
    score = json.loads(result.stdout)["scores"][0]
    assert score["background"] >= 0.8 and score["color"] >= 0.7
