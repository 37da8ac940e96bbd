"""The model library: a fake A1111 installation and a fake ComfyUI one (folders laid out as those tools do), models
found by name and short hash, `<lora:...>` tags and embedding names in prompts, `sdkit models`, ambiguous and missing
names. Every model is the shipped shapes model (as a single file) or an adapter made for it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, generated, invoke, pixels

FAST = ["--steps", "3", "--seed", "4", "--scheduler", "Euler"]
PROMPT = "a red circle on a blue background"


def _random_lora(out: Path, *, text_encoder: bool, seed: int, kohya_name: str) -> list[Path]:
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    from sdkit.lora_io import lora_metadata, save_lora
    from sdkit.models import ALIASES

    pipe = StableDiffusionPipeline.from_pretrained(ALIASES["shapes"])
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    if text_encoder:
        pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, p in module.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    meta = lora_metadata(task="test", base_model="shapes", rank=4, alpha=2, trigger_word="sks", recipe={})
    meta["ss_tag_frequency"] = json.dumps({"1_img": {"striped": 7, "circle": 3}})
    return save_lora(out, unet=pipe.unet, text_encoder=pipe.text_encoder if text_encoder else None, metadata=meta,
                     kohya_name=kohya_name)  # fmt: skip


def _copy_with(src: Path, dst: Path, tag: str) -> Path:
    """The same tensors and header with one more header entry: another sha256 (so hashes stay unique)."""
    from safetensors.torch import load_file, save_file

    from sdkit.lora_io import read_metadata

    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(src)), str(dst), metadata={**read_metadata(src), "copy": tag})
    return dst


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> dict[str, Path]:
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("lib")
    assert invoke("convert", "shapes", "-o", root / "shapes.safetensors").exit_code == 0
    assert invoke("convert", Path(__file__).parents[1] / "sdkit/assets/shapes/vae", "-o", root / "vae.safetensors").exit_code == 0
    peft, kohya = _random_lora(root / "styl", text_encoder=True, seed=1, kohya_name="styl")
    unet_peft, _ = _random_lora(root / "unetonly", text_encoder=False, seed=2, kohya_name="unetonly")
    zig = root / "zig.safetensors"
    save_file({"emb_params": torch.randn(2, 128, generator=torch.Generator().manual_seed(3))}, zig)

    a1111 = root / "stable-diffusion-webui"  # A1111's own folders (webui root: models/..., embeddings/)
    (a1111 / "webui.py").parent.mkdir(parents=True)
    (a1111 / "webui.py").write_text("")
    _copy_with(root / "shapes.safetensors", a1111 / "models/Stable-diffusion/shapes-sd.safetensors", "a")
    _copy_with(root / "shapes.safetensors", a1111 / "models/Stable-diffusion/sub1/dup.safetensors", "b")
    _copy_with(root / "shapes.safetensors", a1111 / "models/Stable-diffusion/sub2/dup.safetensors", "c")
    _copy_with(kohya, a1111 / "models/Lora/styl.safetensors", "a")
    (a1111 / "models/Lora/styl.json").write_text(json.dumps({"activation text": "stripey"}))
    _copy_with(unet_peft, a1111 / "models/Lora/unetonly.safetensors", "a")
    _copy_with(zig, a1111 / "embeddings/zig.safetensors", "a")
    _copy_with(root / "vae.safetensors", a1111 / "models/VAE/shapes.vae.safetensors", "a")
    (a1111 / "models/ControlNet").mkdir(parents=True)

    comfy = root / "ComfyUI"
    _copy_with(root / "shapes.safetensors", comfy / "models/checkpoints/shapes-comfy.safetensors", "d")
    _copy_with(peft, comfy / "models/loras/styl-peft.safetensors", "a")
    _copy_with(zig, comfy / "models/embeddings/zig.safetensors", "a")
    _copy_with(root / "vae.safetensors", comfy / "models/vae/shapes-vae.safetensors", "a")
    return {"root": root, "a1111": a1111, "comfy": comfy, "styl": a1111 / "models/Lora/styl.safetensors", "zig": zig}


def _gen(tmp: Path, name: str, *args) -> np.ndarray:
    return generated(tmp / name, *args, *FAST)


def _infotext(out: Path) -> str:
    from PIL import Image

    with Image.open(next(out.glob("*.png"))) as image:
        return image.text["parameters"]


def test_vae_is_part_of_the_pipeline_cache_key(lib) -> None:
    """Jobs of one run that differ only in --vae load the model twice; the same VAE again reuses it."""
    from sdkit.pipelines import PipelineCache
    from sdkit.schema.generate import GenerateRecipe
    from sdkit.tasks.generate import run

    cache = PipelineCache()
    out = lib["root"] / "cache-key"
    for vae in (None, lib["root"] / "vae.safetensors", lib["root"] / "vae.safetensors"):
        run(GenerateRecipe(prompt="x", steps=1, seed=1, out=out, vae=str(vae) if vae else None), cache)
    assert cache.loads == 2


def test_a1111_names_and_hashes(lib, tmp_path: Path) -> None:
    from sdkit.models import content_hash

    a1111 = ["--models-dir", lib["a1111"]]
    base = _gen(tmp_path, "base", PROMPT, "-m", "shapes")
    assert (_gen(tmp_path, "name", PROMPT, "-m", "shapes-sd", *a1111) == base).all()
    short = content_hash(lib["a1111"] / "models/Stable-diffusion/shapes-sd.safetensors")[:10]
    assert (_gen(tmp_path, "hash", PROMPT, "-m", short, *a1111) == base).all()
    assert (_gen(tmp_path, "vae", PROMPT, "--vae", "shapes.vae", *a1111) == base).all()
    vae_sha = content_hash(lib["a1111"] / "models/VAE/shapes.vae.safetensors")[:10]
    assert f"VAE hash: {vae_sha}, VAE: shapes.vae.safetensors" in _infotext(tmp_path / "vae")  # A1111's order
    by_path = _gen(tmp_path, "lora-path", PROMPT, "--lora", f"{lib['styl']}:0.8")
    assert not (by_path == base).all()
    assert (_gen(tmp_path, "lora-name", PROMPT, "--lora", "styl:0.8", *a1111) == by_path).all()
    addnet = content_hash(lib["styl"], "addnet")[:12]  # A1111's "Lora hashes" value
    assert (_gen(tmp_path, "lora-hash", PROMPT, "--lora", f"{addnet}:0.8", *a1111) == by_path).all()


def test_lora_tags_in_the_prompt(lib, tmp_path: Path) -> None:
    """`<lora:NAME:W>` gives the pixels of `--lora NAME:W` (the tag never reaches the text encoder); the three-part
    form weights the text encoder and the UNet apart (a UNet-only LoRA: only the UNet's weight counts)."""
    a1111 = ["--models-dir", lib["a1111"]]
    flag = _gen(tmp_path, "flag", PROMPT, "--lora", "styl:0.8", *a1111)
    tag = _gen(tmp_path, "tag", f"{PROMPT} <lora:styl:0.8>", *a1111)
    assert (tag == flag).all()
    assert (_gen(tmp_path, "named", f"<LORA:styl:te=0.8:unet=0.8>{PROMPT}", *a1111) == flag).all()
    split = _gen(tmp_path, "split", f"{PROMPT} <lora:unetonly:1:0.5>", *a1111)
    assert (split == _gen(tmp_path, "half", PROMPT, "--lora", "unetonly:0.5", *a1111)).all()
    assert not (split == _gen(tmp_path, "one", PROMPT, "--lora", "unetonly:1", *a1111)).all()
    text = _infotext(tmp_path / "tag")
    assert text.startswith(f"{PROMPT} <lora:styl:0.8>\n")  # recorded as written, as A1111 does
    from sdkit.models import content_hash

    assert f'Lora hashes: "styl: {content_hash(lib["styl"], "addnet")[:12]}"' in text


def test_embedding_named_in_the_prompt(lib, tmp_path: Path) -> None:
    """A library embedding applies where its file name is a word of the prompt (any case), as in A1111."""
    prompt = "a red Zig on a blue background"
    named = _gen(tmp_path, "named", prompt, "--models-dir", lib["a1111"])
    explicit = _gen(tmp_path, "explicit", prompt.replace("Zig", "zig"), "--embedding", f"{lib['zig']}:zig")
    assert (named == explicit).all()
    assert not (named == _gen(tmp_path, "plain", prompt)).all()
    by_name = _gen(tmp_path, "by-name", prompt.replace("Zig", "zig"), "--embedding", "zig:zig", "--models-dir", lib["comfy"])
    assert (by_name == explicit).all()
    assert 'TI hashes: "zig: ' in _infotext(tmp_path / "named")


def test_comfyui_layout(lib, tmp_path: Path) -> None:
    comfy = ["--models-dir", lib["comfy"]]
    base = _gen(tmp_path, "base", PROMPT, "-m", "shapes")
    assert (_gen(tmp_path, "name", PROMPT, "-m", "shapes-comfy", "--vae", "shapes-vae", *comfy) == base).all()
    kohya = _gen(tmp_path, "kohya", PROMPT, "--lora", f"{lib['styl']}:0.7")
    assert (_gen(tmp_path, "peft", f"{PROMPT}<lora:styl-peft:0.7>", *comfy) == kohya).all()


def test_ambiguous_and_missing_names(lib, tmp_path: Path) -> None:
    a1111 = ["--models-dir", lib["a1111"], "-o", tmp_path / "o"]
    line = assert_user_error(invoke("generate", "x", "-m", "dup", *a1111), "'dup' matches 2 checkpoints")
    assert "sub1/dup.safetensors" in line and "sub2/dup.safetensors" in line
    assert_user_error(invoke("generate", "x", "-m", "nothere", *a1111), "model 'nothere' not found", "models/Stable-diffusion")
    assert_user_error(invoke("generate", "x", "--lora", "nothere:0.5", *a1111), "LoRA 'nothere' not found", "models/Lora")
    assert_user_error(invoke("generate", "x <lora:nothere:1>", *a1111), "LoRA 'nothere' not found")
    assert_user_error(invoke("generate", "x <lora:styl:1:2:3>", *a1111), "at most two weights")
    assert_user_error(invoke("generate", "x <lora:styl:dyn=4>", *a1111), "dyn= is not supported")
    assert_user_error(invoke("generate", "x", "--vae", "nothere", *a1111), "VAE 'nothere' not found")
    assert_user_error(invoke("generate", "x", "-m", "dup", "--models-dir", tmp_path / "none", "-o", tmp_path / "o"),
                      "no such folder")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_find_api(lib) -> None:
    """`sdkit.library.find(kind, name=None, short_hash=None)`: what infotext readers call with A1111's fields."""
    from sdkit.library import find
    from sdkit.models import content_hash

    dirs = [lib["a1111"]]
    styl = lib["styl"]
    assert find("loras", short_hash=content_hash(styl, "addnet")[:12], explicit=dirs) == styl
    assert find("loras", "STYL", explicit=dirs) == styl  # any case when no exact match
    sub1 = lib["a1111"] / "models/Stable-diffusion/sub1/dup.safetensors"
    assert find("checkpoints", "sub1/dup", explicit=dirs) == sub1
    assert find("checkpoints", "dup", short_hash=content_hash(sub1)[:10], explicit=dirs) == sub1  # the hash decides
    assert find("checkpoints", "shapes-sd", short_hash=content_hash(sub1)[:10], explicit=dirs) == sub1  # renamed file
    assert find("vae", "nothing", explicit=dirs) is None
    assert find("embeddings", "zig.safetensors", explicit=dirs) == lib["a1111"] / "embeddings/zig.safetensors"


def test_library_folders_from_env_and_config(lib, tmp_path: Path, monkeypatch) -> None:
    from sdkit.errors import UserError
    from sdkit.library import roots

    monkeypatch.delenv("SDKIT_MODELS", raising=False)
    monkeypatch.setenv("SDKIT_CONFIG", str(tmp_path / "config.yaml"))
    assert roots() == []
    (tmp_path / "config.yaml").write_text(f"models_dir: {lib['comfy']}\n")
    assert [(r.path, r.layout) for r in roots()] == [(lib["comfy"], "comfyui")]
    monkeypatch.setenv("SDKIT_MODELS", f"{lib['a1111']}:{lib['comfy'] / 'models'}")
    assert [r.layout for r in roots()] == ["a1111", "sdkit"]  # ComfyUI's models/ folder is sdkit's own layout
    assert [r.layout for r in roots([lib["a1111"] / "models"])] == ["a1111-models"]
    (tmp_path / "config.yaml").write_text("model_dir: x\n")
    monkeypatch.delenv("SDKIT_MODELS")
    with pytest.raises(UserError, match="the only setting is models_dir"):
        roots()


def test_models_listing(lib, tmp_path: Path) -> None:
    from sdkit.models import content_hash

    result = invoke("models", "--models-dir", lib["a1111"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    sha = content_hash(lib["a1111"] / "models/Stable-diffusion/shapes-sd.safetensors")[:10]
    assert re.search(rf"^  shapes-sd +shapes \(sdkit's embedded model\) +16\.\d MB +{sha}$", out, re.M), out
    assert re.search(r"^  sub1/dup +shapes", out, re.M)
    assert re.search(r"^  styl +cross-attention 128 +\S+ kB +[0-9a-f]{10} +sks, stripey, striped, circle$", out, re.M), out
    assert re.search(r"^  zig +width 128 ", out, re.M) and re.search(r"^  shapes\.vae +VAE ", out, re.M)
    assert "controlnet (0)" in out and f"library {lib['a1111']} (a1111 layout)" in result.stderr
    only = invoke("models", "loras", "--no-hash", "--models-dir", lib["comfy"])
    assert only.exit_code == 0 and "checkpoints" not in only.stdout and "styl-peft" in only.stdout
    assert_user_error(invoke("models", "lora", "--models-dir", lib["comfy"]), "unknown kind 'lora'")


def test_a1111_image_finds_its_models_in_the_library(lib, tmp_path: Path, monkeypatch) -> None:
    """`sdkit replay` and `generate --from-png` of an A1111 image whose model, LoRA and VAE carry other names than the
    library's files: found by their short hashes (the infotext's Model hash, Lora hashes, VAE hash), and the image
    replays to the pixels of the same settings given by name; a hash in no library exits 2 naming it."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from sdkit.models import content_hash

    a1111 = lib["a1111"]
    model_hash = content_hash(a1111 / "models/Stable-diffusion/shapes-sd.safetensors")[:10]
    lora_hash = content_hash(lib["styl"], "addnet")[:12]
    vae_hash = content_hash(a1111 / "models/VAE/shapes.vae.safetensors")[:10]
    text = (f"{PROMPT} <lora:renamed-style:0.8>\nSteps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, "
            f"Seed: 4, Size: 64x64, Model hash: {model_hash}, Model: my-model, VAE hash: {vae_hash}, VAE: my.vae.pt, "
            f'RNG: CPU, Lora hashes: "renamed-style: {lora_hash}", Version: v1.10.1')  # fmt: skip
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64), "gray").save(tmp_path / "a1111.png", pnginfo=info)
    monkeypatch.setenv("SDKIT_MODELS", str(a1111))
    replay = invoke("replay", tmp_path / "a1111.png", "-o", tmp_path / "replayed")
    assert replay.exit_code == 0, replay.output
    expected = _gen(tmp_path, "named", PROMPT, "-m", "shapes-sd", "--lora", "styl:0.8", "--vae", "shapes.vae",
                    "--models-dir", a1111)  # fmt: skip
    assert (pixels(next((tmp_path / "replayed").glob("*.png"))) == expected).all()
    from_png = _gen(tmp_path, "from-png", "--from-png", tmp_path / "a1111.png")
    assert (from_png == expected).all()
    monkeypatch.delenv("SDKIT_MODELS")
    lost = invoke("replay", tmp_path / "a1111.png", "-o", tmp_path / "lost")
    assert_user_error(lost, "my-model", model_hash)
