"""The configs sdkit keeps for single-file checkpoints: the published architecture numbers, detection from keys as
diffusers detects them, the prediction type, and CLIP's tokenizer built offline. Real-size checkpoints are never
built: their key names and shapes come from the configs on the meta device (`sdkit.families.expected_shapes`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdkit.errors import UserError

# Parameter counts of the published models (diffusers' model cards / `num_parameters()` of the hub weights)
PUBLISHED = {
    "sd1": (859_520_964, [123_060_480]),
    "sd1-inpaint": (859_535_364, [123_060_480]),
    "sd2": (865_910_724, [340_387_840]),
    "sd2-v": (865_910_724, [340_387_840]),
    "sdxl": (2_567_463_684, [123_060_480, 694_659_840]),
    "sdxl-inpaint": (2_567_478_084, [123_060_480, 694_659_840]),
}
SD_VAE = 83_653_863
DIFFUSERS_TYPE = {"sd1": "v1", "sd1-inpaint": "inpainting", "sd2": "v2", "sd2-v": "v2", "sd2-inpaint": "inpainting_v2",
                  "sdxl": "xl_base", "sdxl-inpaint": "xl_inpaint"}  # fmt: skip


def _header(family: str, metadata: dict | None = None, extra: tuple[str, ...] = ()):
    from sdkit.families import FAMILIES, Header, expected_shapes

    shapes = {k: v for part in expected_shapes(FAMILIES[family].config_dir).values() for k, v in part.items()}
    return Header({**shapes, **{k: (0,) for k in extra}}, {}, metadata or {})


@pytest.mark.parametrize("family", list(PUBLISHED))
def test_configs_have_the_published_sizes(family: str) -> None:
    import math

    from sdkit.families import FAMILIES, expected_shapes

    shapes = expected_shapes(FAMILIES[family].config_dir)
    count = {part: sum(math.prod(s) for s in tensors.values()) for part, tensors in shapes.items()}
    unet, text = PUBLISHED[family]
    assert count["unet"] == unet
    assert [count[n] for n in ("text_encoder", "text_encoder_2") if n in count] == text
    assert count["vae"] == SD_VAE


@pytest.mark.parametrize("family", list(DIFFUSERS_TYPE))
def test_each_family_is_what_diffusers_detects(family: str) -> None:
    """The original-layout names sdkit writes for a family are the ones diffusers' own detector reads as that model."""
    from sdkit.families import best_fit, diffusers_type

    header = _header(family)
    assert diffusers_type(header) == DIFFUSERS_TYPE[family]
    assert best_fit(header, "x").name == ("sd2-v" if family == "sd2" else family)  # same tensors: v unless told


def test_prediction_type_from_yaml_header_or_config(tmp_path: Path) -> None:
    from sdkit.single_file import EPSILON, V_PREDICTION, choose

    ckpt = tmp_path / "model.safetensors"
    sd2 = _header("sd2")
    assert choose(ckpt, header=sd2).fit.name == "sd2-v"  # diffusers' default for SD 2.x
    assert choose(ckpt, "sd2", header=sd2).fit.name == "sd2"
    eps = choose(ckpt, header=_header("sd2", {"modelspec.prediction_type": "epsilon"}))
    assert (eps.fit.name, eps.prediction_type) == ("sd2", EPSILON)
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    parameterization: v\n")  # A1111's file beside it
    assert choose(ckpt, header=sd2).prediction_type == V_PREDICTION
    sd1_v = choose(ckpt, header=_header("sd1"))
    assert (sd1_v.fit.name, sd1_v.prediction_type) == ("sd1", V_PREDICTION)  # a v-prediction SD 1.x fine-tune
    (tmp_path / "model.yaml").unlink()
    comfy = choose(ckpt, header=_header("sdxl", extra=("v_pred", "ztsnr")))
    assert (comfy.fit.name, comfy.prediction_type, comfy.zero_snr) == ("sdxl", V_PREDICTION, True)
    assert choose(ckpt, header=_header("sd1")).prediction_type is None
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    with pytest.raises(UserError, match="not a readable YAML"):
        choose(ckpt, str(tmp_path / "bad.yaml"), header=sd2)


def test_partial_checkpoint_is_refused_naming_what_differs() -> None:
    from sdkit.families import Header, best_fit

    header = _header("sdxl")
    shapes = dict(header.shapes)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    shapes[key] = (320, 8, 3, 3)
    del shapes["conditioner.embedders.1.model.ln_final.weight"]
    with pytest.raises(UserError) as err:
        best_fit(Header(shapes), "odd.safetensors")
    text = str(err.value)
    assert "closest is SDXL base" in text and f"{key} is [320, 8, 3, 3] in the file, [320, 4, 3, 3]" in text
    assert "1 tensors missing (e.g. conditioner.embedders.1.model.ln_final.weight)" in text


def test_clip_tokenizer_from_the_shipped_merges() -> None:
    """CLIP's vocabulary, derived offline: token ids SD prompts are known to have (`a photo of a cat`), and the pad
    token of each family (SD 1.x: <|endoftext|>, SD 2.x and SDXL's second: "!" = id 0)."""
    from sdkit.families import FAMILIES, build_tokenizer

    sd1 = build_tokenizer(FAMILIES["sd1"].config_dir / "tokenizer")
    assert len(sd1) == 49408
    assert sd1("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert sd1.pad_token_id == 49407 and sd1.model_max_length == 77
    assert build_tokenizer(FAMILIES["sd2"].config_dir / "tokenizer").pad_token_id == 0
    assert build_tokenizer(FAMILIES["sdxl"].config_dir / "tokenizer_2").pad_token_id == 0


def test_config_files_are_small_json() -> None:
    from sdkit.families import CONFIGS, MERGES

    files = [p for p in CONFIGS.rglob("*") if p.is_file() and p != MERGES]
    assert files and all(p.suffix == ".json" and p.stat().st_size < 4096 for p in files)
    assert all(isinstance(json.loads(p.read_text()), dict) for p in files)
    assert MERGES.stat().st_size < 250_000


def test_layout_errors_are_user_errors() -> None:
    from sdkit.convert_keys import unet_to_original, vae_to_original

    config = {"layers_per_block": [1, 2], "down_block_types": ["DownBlock2D"] * 2, "up_block_types": ["UpBlock2D"] * 2}
    with pytest.raises(UserError, match="differs per block.*keep it as a diffusers folder"):
        unet_to_original({}, config)
    with pytest.raises(UserError, match="'encoder.extra.weight' has no place"):
        vae_to_original({"encoder.extra.weight": None}, {"down_block_types": ["DownEncoderBlock2D"]})
