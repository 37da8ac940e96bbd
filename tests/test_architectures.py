"""Architecture presets and the word-level tokenizer: real classes, tiny sizes, no network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdkit.architectures import PRESETS, build_components, build_pipeline, get_preset, main, parameter_counts
from sdkit.errors import UserError
from sdkit.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    GENERIC_WORDS,
    check_vocab_size,
    default_words,
    load_tokenizer,
    word_vocabulary,
    words_in,
    write_word_tokenizer,
)

PROMPTS = ("a red circle on a blue background", "An Orange striped STAR, on a white background!", "xyzzy 42 café")


@pytest.fixture(scope="module")
def word_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_word_tokenizer(default_words(), tmp_path_factory.mktemp("tok"), model_max_length=24)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- tokenizer -------------------------------------------------------------------------------------------------


def test_known_words_are_one_token_each(word_tokenizer_dir: Path) -> None:
    tok = load_tokenizer(word_tokenizer_dir)
    words = default_words()
    assert set(GENERIC_WORDS) <= set(words) and {"circle", "triangle", "striped", "background"} <= set(words)
    ids = {}
    for word in words:
        encoded = tok(word).input_ids
        assert encoded[0] == tok.bos_token_id and encoded[-1] == tok.eos_token_id
        assert len(encoded) == 3, (word, tok.convert_ids_to_tokens(encoded))
        ids[word] = encoded[1]
    assert len(set(ids.values())) == len(words)
    assert tok.convert_ids_to_tokens(tok(PROMPTS[0]).input_ids) == [
        BOS_TOKEN, "a</w>", "red</w>", "circle</w>", "on</w>", "a</w>", "blue</w>", "background</w>", EOS_TOKEN,
    ]  # fmt: skip
    assert tok.model_max_length == 24 and (tok.bos_token, tok.eos_token, tok.pad_token) == (
        BOS_TOKEN,
        EOS_TOKEN,
        EOS_TOKEN,
    )


def test_unknown_words_split_into_characters_without_unknown_tokens(word_tokenizer_dir: Path) -> None:
    tok = load_tokenizer(word_tokenizer_dir)
    pieces = tok.convert_ids_to_tokens(tok("xyzzy").input_ids)[1:-1]
    assert pieces == ["x", "y", "z", "z", "y</w>"]
    for prompt in PROMPTS:  # upper case, punctuation, digits and non-ASCII all tokenize, none to the unknown id
        ids = tok(prompt).input_ids[1:-1]
        assert tok.unk_token_id not in ids
    assert tok.decode(tok("a red xyzzy circle").input_ids, skip_special_tokens=True) == "a red xyzzy circle"


def test_words_never_block_each_other() -> None:
    # "an" and "and" would split "triangle"/"android" early with left-to-right merges; suffix merges cannot clash.
    words = ["an", "and", "triangle", "android", "nd", "tri", "angle", "gle", "e", "ee", "eee"]
    vocab, merges = word_vocabulary(words)
    assert all(b.endswith("</w>") for _, b in merges)
    assert BOS_TOKEN in vocab and EOS_TOKEN in vocab and len(set(vocab.values())) == len(vocab)


def test_words_never_block_each_other_when_loaded(tmp_path: Path) -> None:
    words = ["an", "and", "triangle", "android", "nd", "tri", "angle", "gle", "e", "ee", "eee"]
    tok = load_tokenizer(write_word_tokenizer(words, tmp_path))
    for word in words:
        assert len(tok(word).input_ids) == 3, tok.tokenize(word)


def test_vocab_size_is_checked(word_tokenizer_dir: Path) -> None:
    from transformers import CLIPTokenizer

    written = len(json.loads((word_tokenizer_dir / "vocab.json").read_text()))
    assert len(load_tokenizer(word_tokenizer_dir)) == written
    keyword_built = CLIPTokenizer(
        vocab_file=str(word_tokenizer_dir / "vocab.json"), merges_file=str(word_tokenizer_dir / "merges.txt")
    )
    if len(keyword_built) == written:
        pytest.skip("this transformers version reads vocab_file=/merges_file= keywords correctly")
    with pytest.raises(UserError, match=f"{len(keyword_built)} tokens but its files define {written}"):
        check_vocab_size(keyword_built, word_tokenizer_dir)


def test_words_in_captions() -> None:
    captions = ["A red circle, on a BLUE background.", "the cat's 2nd café-table", "a red circle"]
    assert words_in(captions) == ["a", "red", "circle", "on", "blue", "background", "the", "cat", "s", "nd", "table"]


def test_bad_words_and_missing_folders_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ASCII letters only"):
        write_word_tokenizer(["red", "t-shirt"], tmp_path / "tok")
    with pytest.raises(UserError, match="no tokenizer in"):
        load_tokenizer(tmp_path)


# --- presets ---------------------------------------------------------------------------------------------------


def test_unknown_preset_lists_the_valid_names() -> None:
    with pytest.raises(UserError, match="unknown architecture preset 'sd99': choose one of tiny-sd, tiny-sdxl, shapes"):
        build_pipeline("sd99")


def test_specs_check_their_own_consistency() -> None:
    import dataclasses

    with pytest.raises(ValueError, match="cross_attention_dim"):
        dataclasses.replace(PRESETS["shapes"], unet={**PRESETS["shapes"].unet, "cross_attention_dim": 64})
    with pytest.raises(ValueError, match="image_size"):
        dataclasses.replace(PRESETS["tiny-sd"], image_size=64)


def test_shapes_preset_sizes_and_init() -> None:
    spec = get_preset("shapes")
    components = build_components(spec, words=default_words(), seed=3)
    counts = parameter_counts(components)
    low, high = spec.unet_param_range
    assert low <= counts["unet"] <= high
    assert 0.5e6 <= counts["vae"] <= 1.0e6 and counts["text_encoder"] <= 1.0e6
    assert counts["total"] * 4 <= 20e6  # ships inside the package: at most ~20 MB of fp32 safetensors
    vae, unet, text_encoder, tok = (components[k] for k in ("vae", "unet", "text_encoder", "tokenizer"))
    assert vae.config.block_out_channels == (16, 32, 64) and vae.config.norm_num_groups == 4
    assert torch.all(vae.quant_conv.bias[4:] == -6.0)
    assert text_encoder.config.vocab_size == len(tok) and unet.config.cross_attention_dim == 128
    assert text_encoder.config.max_position_embeddings == tok.model_max_length == spec.model_max_length
    assert text_encoder.config.eos_token_id == tok.eos_token_id
    with torch.no_grad():  # 64 px -> 16x16x4 latents -> 64 px
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        assert latents.shape == (1, 4, 16, 16) and vae.decode(latents).sample.shape == (1, 3, 64, 64)
    assert type(components["scheduler"]).__name__ == "DPMSolverMultistepScheduler"
    assert components["scheduler"].config.prediction_type == "epsilon"


def test_build_is_deterministic_per_seed_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_components("tiny-sd", words=GENERIC_WORDS, seed=1)
    assert torch.equal(torch.rand(3), expected)
    b = build_components("tiny-sd", words=GENERIC_WORDS, seed=1)
    c = build_components("tiny-sd", words=GENERIC_WORDS, seed=2)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(a[name], b[name])
    assert not torch.equal(a["unet"].conv_in.weight, c["unet"].conv_in.weight)


def test_tokenizer_dir_and_words_conflict(word_tokenizer_dir: Path) -> None:
    with pytest.raises(UserError, match="either words or tokenizer_dir"):
        build_components("tiny-sd", words=["red"], tokenizer_dir=word_tokenizer_dir)
    with pytest.raises(UserError, match="needs 77"):  # written with 24
        build_components("tiny-sd", tokenizer_dir=word_tokenizer_dir)
    components = build_components("shapes", tokenizer_dir=write_word_tokenizer(["red"], word_tokenizer_dir / "s", 32))
    assert components["tokenizer"].convert_ids_to_tokens(components["tokenizer"]("red").input_ids)[1] == "red</w>"


# --- saved tiny pipelines ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny-sd", "tiny-sdxl"])
def test_saved_pipeline_reloads_identically_and_runs(
    preset: str, tiny_seed: int, request: pytest.FixtureRequest
) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = request.getfixturevalue("tiny_sd_dir" if preset == "tiny-sd" else "tiny_sdxl_dir")
    pipeline_class = StableDiffusionPipeline if preset == "tiny-sd" else StableDiffusionXLPipeline
    loaded = pipeline_class.from_pretrained(folder)
    built = build_pipeline(preset, seed=tiny_seed)
    assert type(loaded) is type(built) and type(loaded.scheduler) is type(built.scheduler)
    modules = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if preset == "tiny-sdxl" else [])
    for name in modules:
        _assert_same_weights(getattr(built, name), getattr(loaded, name))
    for name in ["tokenizer"] + (["tokenizer_2"] if preset == "tiny-sdxl" else []):
        assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in (folder / name).iterdir()}
        assert len(getattr(loaded, name)) == len(getattr(built, name))
        for prompt in PROMPTS:
            assert getattr(loaded, name)(prompt).input_ids == getattr(built, name)(prompt).input_ids
    assert loaded.scheduler.config.clip_sample is False  # kept for DDIM & co. built from this config

    images = loaded(
        "a red circle", num_inference_steps=2, height=32, width=32,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images  # fmt: skip
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_vocab_files_alone_give_the_same_ids(tiny_sd_dir: Path, tmp_path: Path) -> None:
    # What a transformers 4 slow CLIPTokenizer would read: vocab.json + merges.txt + tokenizer_config.json only.
    import shutil

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(tiny_sd_dir / "tokenizer" / name, tmp_path / name)
    full, legacy = load_tokenizer(tiny_sd_dir / "tokenizer"), load_tokenizer(tmp_path)
    assert len(full) == len(legacy)
    for prompt in PROMPTS:
        assert full(prompt).input_ids == legacy(prompt).input_ids


def test_tiny_sdxl_runs_through_auto_pipelines(tiny_sdxl_dir: Path) -> None:
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
    from PIL import Image

    txt2img = AutoPipelineForText2Image.from_pretrained(tiny_sdxl_dir)
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    mask = Image.new("L", (32, 32), 255)
    img2img = AutoPipelineForImage2Image.from_pipe(txt2img)
    inpaint = AutoPipelineForInpainting.from_pipe(txt2img)
    assert img2img.unet is txt2img.unet and inpaint.unet is txt2img.unet
    out = img2img("a cat", image=init, strength=0.5, num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    kwargs = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}
    out = inpaint("a cat", image=init, mask_image=mask, **kwargs).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_module_command_writes_a_folder_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo-model"
    assert main(["tiny-sd", str(out), "--seed", "1"]) == 0
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["tiny-sd", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["nope", str(tmp_path / "other")]) == 2 and not (tmp_path / "other").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["demo-model"]  # no temporary folder left behind


def test_suite_runs_single_threaded() -> None:
    assert torch.get_num_threads() == int(__import__("os").environ["OMP_NUM_THREADS"])
