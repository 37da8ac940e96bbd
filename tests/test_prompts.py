"""A1111's prompt language (sdkit.prompts): the parser against A1111's documented examples, the refused syntax, chunking
(75 tokens, BREAK, comma wrap, multi-vector tokens), weights with mean restoration, negative padding, clip skip, and
bit-identical embeddings to diffusers' own encoding for prompts without syntax, on tiny SD 1.x and SDXL pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_user_error, invoke, pixels, snapshot

from sdkit import prompts
from sdkit.errors import UserError

FAST = ["--steps", "2", "--width", "32", "--height", "32", "--seed", "1"]


# A1111 1.10 modules/prompt_parser.py, parse_prompt_attention's docstring: input -> (text, weight) list
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES)
def test_parse_attention_gives_a1111s_documented_lists(text: str, expected) -> None:
    assert prompts.parse_attention(text) == expected  # floats compared exactly: the same multiplication order


def test_parse_attention_break_escapes_and_extra_network_tags() -> None:
    assert prompts.parse_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    assert prompts.parse_attention("[blurry] \\\\ (x: 2 )") == [("blurry", 1 / 1.1), (" \\ ", 1.0), ("x", 2.0)]
    assert prompts.parse_attention("<lora:my:0.8> a cat") == [("<lora:my:0.8> a cat", 1.0)]  # left to the LoRA loader
    assert prompts.parse_attention("") == [("", 1.0)]


@pytest.mark.parametrize(("text", "named"), [
    ("a [cat:dog:5] on a mat", "prompt editing [cat:dog:5]"),
    ("a [dog: 0.5]", "prompt editing [dog: 0.5]"),
    ("a[b:[c:d:2]:1]e", "prompt editing [c:d:2]"),
    ("a [cat|dog]", "alternation [cat|dog]"),
    ("[fe|]male", "alternation [fe|]"),
    ("cats AND dogs", "AND (composable diffusion)"),
])  # fmt: skip
def test_unsupported_syntax_is_refused_by_name(text: str, named: str) -> None:
    with pytest.raises(UserError, match="A1111 syntax sdkit does not run") as err:
        prompts.check(text)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_ordinary_brackets_pass_the_check() -> None:
    for text in ("a [blurry] cat", "[(red:1.5)]", "\\[a:3\\]", "a (cat:1.2)", "black and white", "a | b", "[unbalanced"):
        prompts.check(text)
    prompts.check("cats AND dogs", "negative prompt")  # A1111 splits AND in the prompt only


def test_cli_refuses_prompt_editing_before_loading(tmp_path: Path, tiny_sd_dir: Path) -> None:
    before = snapshot(tmp_path)
    result = invoke("generate", "a [cat:dog:0.5]", "-m", tiny_sd_dir, *FAST, "-o", tmp_path / "out")
    assert_user_error(result, "prompt editing [cat:dog:0.5]")
    assert snapshot(tmp_path) == before
    ok = invoke("generate", "a [cat:dog:0.5]", "--prompt-syntax", "plain", "-m", tiny_sd_dir, *FAST, "-o", tmp_path / "out")
    assert ok.exit_code == 0, ok.output  # plain: the brackets are text


# --- chunking ---


@pytest.fixture(scope="module")
def sd(tiny_sd_dir: Path):
    from sdkit.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_sd_dir)), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir: Path):
    from sdkit.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_sdxl_dir)), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lengths(tokenizer, text: str) -> list[int]:
    return [len(c.tokens) for c in prompts.chunks(tokenizer, prompts.parse_attention(text))]


def test_chunks_of_75_tokens_break_and_comma_wrap(sd) -> None:
    tok = sd.tokenizer
    assert tok.model_max_length == 77
    assert lengths(tok, " ".join(["cat"] * 100)) == [75, 25]
    assert lengths(tok, " ".join(["cat"] * 75)) == [75]
    assert lengths(tok, "a cat BREAK a dog") == [2, 2]
    assert lengths(tok, "") == [0]
    # a full chunk moves the words after its last comma to the next one when the comma is within 20 tokens ...
    assert lengths(tok, " ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 20)) == [61, 20]
    # ... and cuts at 75 when the comma is farther back
    assert lengths(tok, " ".join(["cat"] * 10) + ", " + " ".join(["dog"] * 70)) == [75, 6]
    ids = prompts.token_ids(tok, prompts.chunks(tok, [("cat", 1.0)])[0])
    assert ids == tok("cat", padding="max_length", max_length=77).input_ids  # start, token, end, padding


def test_a_multi_vector_embedding_is_never_split_across_chunks(tiny_sd_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_sd_dir / "tokenizer"))
    tok.add_tokens(["<t>", "<t>_1", "<t>_2"])
    parsed = [(" ".join(["cat"] * 73) + " <t> <t>_1 <t>_2", 1.0)]
    assert [len(c.tokens) for c in prompts.chunks(tok, parsed)] == [73, 3]
    assert prompts.units(tok, tok("cat <t> <t>_1 <t>_2 dog", add_special_tokens=False).input_ids)[1] == \
        tok.convert_tokens_to_ids(["<t>", "<t>_1", "<t>_2"])


# --- embeddings ---


def test_prompt_without_syntax_is_bit_identical_to_diffusers_sd(sd) -> None:
    for prompt, negative in (("a red cat on a mat", "blurry"), ("a cat", ""), (" ".join(["dog"] * 75), "ugly dog")):
        ours = prompts.encode(sd, prompt, negative)
        theirs = sd.encode_prompt(prompt, "cpu", 1, True, negative)
        assert torch.equal(ours["prompt_embeds"], theirs[0]) and torch.equal(ours["negative_prompt_embeds"], theirs[1])
    # clip skip 2: the layer before the last, through the final layer norm (A1111's encode_with_transformers; diffusers'
    # own clip_skip=1 fails on transformers 5, whose CLIPTextModel has no .text_model)
    skipped = prompts.encode(sd, "a red cat", "", clip_skip=2)
    ids = sd.tokenizer("a red cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = sd.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(skipped["prompt_embeds"], sd.text_encoder.final_layer_norm(hidden))
    assert not torch.equal(skipped["prompt_embeds"], prompts.encode(sd, "a red cat", "")["prompt_embeds"])
    # plain syntax: brackets are words, as diffusers reads them
    plain = prompts.encode(sd, "a (red) cat", "", syntax="plain")["prompt_embeds"]
    assert torch.equal(plain, sd.encode_prompt("a (red) cat", "cpu", 1, True, "")[0])


def test_prompt_without_syntax_is_bit_identical_to_diffusers_sdxl(sdxl) -> None:
    for negative in ("blurry", ""):
        ours = prompts.encode(sdxl, "a red cat on a mat", negative)
        theirs = sdxl.encode_prompt("a red cat on a mat", negative_prompt=negative or None, device="cpu")
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        for name, tensor in zip(names, theirs, strict=True):
            assert torch.equal(ours[name], tensor), name
    assert not ours["negative_prompt_embeds"].any()  # empty negative on SDXL: zeros, as A1111 and diffusers do


def test_weights_scale_tokens_and_restore_the_mean(sd) -> None:
    z = prompts.encode(sd, "a red cat", "")["prompt_embeds"]
    weighted = prompts.encode(sd, "a (red:1.5) cat", "")["prompt_embeds"]
    w = torch.ones(77)
    w[2] = 1.5  # start token, "a", "red"
    expected = z * w[None, :, None]
    expected = expected * (z.mean() / expected.mean())
    assert torch.allclose(weighted, expected, rtol=1e-5, atol=1e-6)
    assert torch.isclose(weighted.mean(), z.mean(), rtol=1e-5)


def test_long_prompts_negative_padding_and_pooled_from_the_first_chunk(sd, sdxl) -> None:
    long = " ".join(["cat"] * 80)
    out = prompts.encode(sd, long, "blurry")
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (1, 154, 32)
    empty = prompts.encode(sd, "", "")["prompt_embeds"]
    blurry = prompts.encode(sd, "blurry", "")["prompt_embeds"]
    assert torch.equal(out["negative_prompt_embeds"], torch.cat([blurry, empty], dim=1))
    assert torch.equal(out["prompt_embeds"][:, :77], prompts.encode(sd, " ".join(["cat"] * 75), "")["prompt_embeds"])
    swapped = prompts.encode(sd, "blurry", long)  # the shorter prompt is padded too
    assert swapped["prompt_embeds"].shape == (1, 154, 32)
    xl = prompts.encode(sdxl, f"{long} BREAK a dog", "blurry")
    assert xl["prompt_embeds"].shape == xl["negative_prompt_embeds"].shape == (1, 231, 64)
    first = prompts.encode(sdxl, " ".join(["cat"] * 75), "")["pooled_prompt_embeds"]
    assert torch.equal(xl["pooled_prompt_embeds"], first)


def test_clip_skip_is_ignored_on_sdxl_and_too_deep_is_refused(sd, sdxl, tmp_path: Path, tiny_sdxl_dir: Path) -> None:
    assert torch.equal(prompts.encode(sdxl, "a cat", "", clip_skip=2)["prompt_embeds"], prompts.encode(sdxl, "a cat", "")["prompt_embeds"])
    layers = sd.text_encoder.config.num_hidden_layers
    with pytest.raises(UserError, match=f"--clip-skip {layers + 1} is more than this text encoder's {layers} layers"):
        prompts.encode(sd, "a cat", "", clip_skip=layers + 1)
    result = invoke("generate", "a cat", "-m", tiny_sdxl_dir, *FAST, "--clip-skip", "2", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "--clip-skip 2 is ignored for SD 2.x and SDXL models, as A1111 ignores it" in result.stderr


def test_generate_reads_weights_and_long_prompts(tmp_path: Path, tiny_sd_dir: Path) -> None:
    def made(name: str, *args: str):
        result = invoke("generate", *args, "-m", tiny_sd_dir, *FAST, "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert "warning" not in result.stderr
        return pixels(tmp_path / name / "00001-1.png")

    weighted, plain = made("a1111", "a (red:1.8) cat"), made("plain", "a (red:1.8) cat", "--prompt-syntax", "plain")
    assert not (weighted == plain).all()
    long = made("long", " ".join(["cat"] * 75) + " BREAK a red dog")
    assert not (long == made("short", " ".join(["cat"] * 75))).all()  # the second chunk is read, not dropped
