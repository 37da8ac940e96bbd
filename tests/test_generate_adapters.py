"""LoRAs and embeddings at generation: formats round-trip exactly, weights and stacks work, misfits are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, generated, invoke, pixels, snapshot

FAST = ["--steps", "3", "--seed", "2", "--scheduler", "Euler"]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _lora_state(model_dir: Path, cls_name: str, seed: int, targets=TARGETS):
    """A peft LoRA on the UNet with random (non-zero) A and B, in diffusers' naming; also returns the pipeline."""
    import diffusers
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = getattr(diffusers, cls_name).from_pretrained(model_dir)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return pipe, convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, tiny_sd_dir: Path, tiny_sdxl_dir: Path) -> dict[str, Path]:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from sdkit.lora_io import PEFT_NAMES

    root = tmp_path_factory.mktemp("loras")
    files = {}
    for name, seed in (("a", 1), ("b", 2)):
        pipe, state = _lora_state(tiny_sd_dir, "StableDiffusionPipeline", seed)
        StableDiffusionPipeline.save_lora_weights(root / name, unet_lora_layers=state)
        files[name] = root / name / "pytorch_lora_weights.safetensors"
        if name == "a":
            from peft.utils import get_peft_model_state_dict

            peft_state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(pipe.unet).items()}
            save_file(convert_state_dict_to_kohya(peft_state), root / "a_kohya.safetensors")
            files["a_kohya"] = root / "a_kohya.safetensors"
    _, xl_state = _lora_state(tiny_sdxl_dir, "StableDiffusionXLPipeline", 3)
    StableDiffusionXLPipeline.save_lora_weights(root / "xl", unet_lora_layers=xl_state)
    files["xl"] = root / "xl" / "pytorch_lora_weights.safetensors"
    _, part = _lora_state(tiny_sd_dir, "StableDiffusionPipeline", 4)
    keys = sorted(part)
    partial = {"unet." + (k.replace("down_blocks", "nonexistent_blocks") if i % 4 >= 2 else k): part[k] for i, k in enumerate(keys)}
    save_file({k: v.contiguous() for k, v in partial.items()}, root / "partial.safetensors")
    files["partial"] = root / "partial.safetensors"
    save_file({f"unet.nothing_here.{k}": v.contiguous() for k, v in part.items()}, root / "nothing.safetensors")
    files["nothing"] = root / "nothing.safetensors"
    # file "a" with its first UNet layer in peft's names (lora_A) and the rest in diffusers' (lora.down), as sdkit wrote
    # LoRAs on attention + convolutions before: diffusers reads the format off the first key
    state = load_file(files["a"])
    first = min(k for k in state if k.startswith("unet.")).removesuffix(".lora.down.weight").removesuffix(".lora.up.weight")
    mixed = {next((k.removesuffix(s) + n for s, n in PEFT_NAMES.items() if k.startswith(first) and k.endswith(s)), k): v
             for k, v in state.items()}  # fmt: skip
    assert mixed != state
    save_file(mixed, root / "mixed.safetensors", metadata=safe_open(str(files["a"]), "pt").metadata())
    files["mixed"] = root / "mixed.safetensors"
    return files


def _gen(tmp: Path, model: Path, name: str, *extra) -> np.ndarray:
    return generated(tmp / name, "a red circle", "-m", model, *FAST, *extra)


def test_lora_formats_weights_and_stacks(tmp_path: Path, tiny_sd_dir: Path, lora_files) -> None:
    base = _gen(tmp_path, tiny_sd_dir, "base")
    a = _gen(tmp_path, tiny_sd_dir, "a", "--lora", lora_files["a"])
    assert np.abs(a - base).mean() > 1  # the adapter changes the image
    assert (_gen(tmp_path, tiny_sd_dir, "kohya", "--lora", lora_files["a_kohya"]) == a).all()  # kohya file == diffusers file
    assert (_gen(tmp_path, tiny_sd_dir, "zero", "--lora", f"{lora_files['a']}:0") == base).all()  # weight 0 == no LoRA
    half = _gen(tmp_path, tiny_sd_dir, "half", "--lora", f"{lora_files['a']}:0.5")
    assert 0 < np.abs(half - base).mean() < np.abs(a - base).mean()
    both = _gen(tmp_path, tiny_sd_dir, "both", "--lora", lora_files["a"], "--lora", f"{lora_files['b']}:0.7")
    assert np.abs(both - a).mean() > 0.5
    fused = _gen(tmp_path, tiny_sd_dir, "fused", "--lora", lora_files["a"], "--fuse-lora")
    assert np.abs(fused - a).max() <= 2  # fusing changes rounding only


def test_mixed_key_format_lora_loads_fully(tmp_path: Path, tiny_sd_dir: Path, lora_files) -> None:
    from diffusers import StableDiffusionPipeline

    from sdkit.adapters import _tuned_modules

    plain = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    plain.load_lora_weights(str(lora_files["mixed"]), adapter_name="m")
    assert 0 < _tuned_modules(plain, "m") < len(TARGETS) * 2  # the file really trips diffusers: a partial load
    mixed = _gen(tmp_path, tiny_sd_dir, "mixed", "--lora", lora_files["mixed"])
    assert (mixed == _gen(tmp_path, tiny_sd_dir, "a", "--lora", lora_files["a"])).all()


def test_lora_file_equals_in_memory_adapter(tmp_path: Path, tiny_sd_dir: Path, lora_files) -> None:
    import torch

    from sdkit import schedulers

    pipe, _ = _lora_state(tiny_sd_dir, "StableDiffusionPipeline", 1)  # the same adapter as file "a", still in memory
    pipe.scheduler = schedulers.build("Euler", pipe.scheduler.config)
    out = pipe("a red circle", num_inference_steps=3, guidance_scale=7.0, width=32, height=32, output_type="np",
               generator=torch.Generator("cpu").manual_seed(2)).images
    in_memory = np.asarray(pipe.numpy_to_pil(out)[0]).astype(int)
    assert (in_memory == _gen(tmp_path, tiny_sd_dir, "file", "--lora", lora_files["a"])).all()


@pytest.mark.parametrize("name,fragment", [("xl", "does not fit this model"), ("nothing", "this model"),
                                           ("partial", "fits only")])
def test_misfit_lora_is_refused(name: str, fragment: str, tmp_path: Path, tiny_sd_dir: Path, lora_files) -> None:
    before = snapshot(tmp_path)
    assert_user_error(invoke("generate", "x", "-m", tiny_sd_dir, *FAST, "-o", tmp_path / "o", "--lora", lora_files[name]), fragment)
    assert snapshot(tmp_path) == before


def test_bad_lora_files(tmp_path: Path, tiny_sd_dir: Path) -> None:
    assert_user_error(invoke("generate", "x", "-m", tiny_sd_dir, "--lora", tmp_path / "none.safetensors"), "no such file")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert_user_error(invoke("generate", "x", "-m", tiny_sd_dir, "--lora", tmp_path / "empty.safetensors:0.5"), "is empty")
    (tmp_path / "old.ckpt").write_bytes(b"\x80\x04.")
    assert_user_error(invoke("generate", "x", "-m", tiny_sd_dir, "--lora", tmp_path / "old.ckpt"), "--allow-pickle")


def test_embeddings_diffusers_and_a1111(tmp_path: Path, tiny_sd_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    vector = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    save_file({"<thing>": vector[0]}, tmp_path / "diffusers.safetensors")
    save_file({"emb_params": vector}, tmp_path / "a1111.safetensors")
    prompt = ["generate", "a <thing> circle", "-m", tiny_sd_dir, *FAST, "-o", tmp_path / "out"]
    plain = _gen(tmp_path, tiny_sd_dir, "plain")
    d = invoke(*prompt[:-2], "-o", tmp_path / "d", "--embedding", tmp_path / "diffusers.safetensors")
    a = invoke(*prompt[:-2], "-o", tmp_path / "a", "--embedding", f"{tmp_path / 'a1111.safetensors'}:<thing>")
    assert d.exit_code == 0 and a.exit_code == 0, (d.output, a.output)
    da, aa = pixels(tmp_path / "d" / "00001-2.png"), pixels(tmp_path / "a" / "00001-2.png")
    assert (da == aa).all() and np.abs(da - plain).mean() > 0.1
    save_file({"<wide>": torch.randn(64)}, tmp_path / "wide.safetensors")
    assert_user_error(invoke(*prompt, "--embedding", tmp_path / "wide.safetensors"), "does not fit this text encoder")
    assert_user_error(invoke(*prompt, "--embedding", f"{tmp_path / 'a1111.safetensors'}:circle"), "already in the vocabulary")
    assert not (tmp_path / "out").exists()
