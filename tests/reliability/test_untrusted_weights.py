"""Weight files from other people, through the real CLI in subprocesses: the format is read from the bytes (a pickle
needs --allow-pickle whatever its name), a pickle holding code is refused with exit 2 before its payload runs, files
that are not weights and embeddings without vectors are named as such, and a LoRA that does not fit says so in one
line (the libraries' own logging is silenced while it loads).

Each case checks the exit status, the one-line message, no traceback, and that nothing was written.
"""

from __future__ import annotations

import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import snapshot

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def sdkit(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdkit", *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, timeout=600)  # fmt: skip


def assert_refused(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, exactly one line on stderr (`error: ...`) holding every fragment, no traceback, nothing on stdout."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert done.stdout == ""
    return lines[0]


class Payload:
    """Unpickling this runs a shell command that creates `marker`: the test proves it never ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def write_payload(path: Path, marker: Path, kind: str) -> Path:
    """A pickle with code in it: torch's zip format, a raw pickle (protocol 2), or torch's legacy format."""
    import torch

    state = {"weight": Payload(marker)}
    if kind == "zip":
        torch.save(state, path)
    elif kind == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
    return path


@pytest.fixture(scope="module")
def lora_state(tiny_sd_dir: Path) -> dict:
    """A UNet + text-encoder LoRA for tiny-sd (diffusers' naming, random non-zero weights)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, p in module.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    state = {f"unet.{k}": v for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)).items()}
    te = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
    return state | {f"text_encoder.{k}": v for k, v in te.items()}


# 1. pickle by content, not by name


@pytest.mark.parametrize("flag,name", [("--lora", "lora"), ("--lora", "lora.bin"), ("--lora", "lora.safetensors"),
                                       ("--embedding", "embedding"), ("-m", "model"), ("-m", "model.safetensors")])  # fmt: skip
def test_a_pickle_needs_allow_pickle_whatever_its_name(flag: str, name: str, tmp_path: Path, tiny_sd_dir: Path) -> None:
    import torch

    path = tmp_path / name
    torch.save({"<thing>": torch.ones(32)} if flag == "--embedding" else {"unet.w": torch.ones(4, 4)}, path)
    before = snapshot(tmp_path)
    model = [] if flag == "-m" else ["-m", tiny_sd_dir]
    line = assert_refused(sdkit("generate", "x", *model, flag, path, "--steps", "2", "-o", tmp_path / "o"), str(path))
    if path.suffix == ".safetensors":
        assert "pickled torch file renamed .safetensors" in line
    else:
        assert "is a pickle file" in line and "--allow-pickle" in line
    assert snapshot(tmp_path) == before


def test_pickled_lora_without_extension_loads_with_allow_pickle(tmp_path: Path, tiny_sd_dir: Path, lora_state) -> None:
    """With --allow-pickle the same LoRA, pickled and unnamed, gives the image its safetensors file gives."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in lora_state.items()}, tmp_path / "lora.safetensors")
    torch.save(lora_state, tmp_path / "lora")
    common = ["generate", "a red circle", "-m", tiny_sd_dir, "--steps", "2", "--seed", "3", "--allow-pickle"]
    images = []
    for name in ("lora.safetensors", "lora"):
        done = sdkit(*common, "--lora", tmp_path / name, "-o", tmp_path / f"out-{name}")
        assert done.returncode == 0, done.stderr
        with Image.open(tmp_path / f"out-{name}" / "00001-3.png") as img:
            images.append(np.asarray(img))
    assert (images[0] == images[1]).all()


def test_safetensors_named_for_a_pickle_loader_says_rename(tmp_path: Path, tiny_sd_dir: Path) -> None:
    """A folder component's .bin that holds safetensors: diffusers would unpickle it by its name; say to rename it."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    before = snapshot(tmp_path)
    done = sdkit("generate", "x", "-m", folder, "--allow-pickle", "--steps", "2", "-o", tmp_path / "o")
    assert_refused(done, "diffusion_pytorch_model.bin holds safetensors", "rename it to diffusion_pytorch_model.safetensors")
    assert snapshot(tmp_path) == before


# 2. a pickle with code in it, even with --allow-pickle: exit 2 naming the file, the payload never runs

CODE_CASES = {
    "model-ckpt": ("-m", "model.ckpt", "zip"),
    "model-no-extension": ("-m", "model", "zip"),
    "folder-unet-bin": ("-m", "unet/diffusion_pytorch_model.bin", "zip"),
    "folder-text-encoder-bin": ("-m", "text_encoder/pytorch_model.bin", "zip"),
    "lora-ckpt": ("--lora", "lora.ckpt", "zip"),
    "lora-pt-raw-pickle": ("--lora", "lora.pt", "raw"),
    "lora-legacy-no-extension": ("--lora", "lora", "legacy"),
    "embedding-pt": ("--embedding", "embedding.pt", "zip"),
}


@pytest.mark.parametrize("case", sorted(CODE_CASES))
def test_code_in_a_pickle_is_refused_and_never_runs(case: str, tmp_path: Path, tiny_sd_dir: Path) -> None:
    flag, name, kind = CODE_CASES[case]
    marker = tmp_path / "pwned"
    model = tiny_sd_dir
    if "/" in name:  # a diffusers folder whose component has only a .bin
        model = tmp_path / "model"
        shutil.copytree(tiny_sd_dir, model)
        for weights in (model / name).parent.glob("*.safetensors"):
            weights.unlink()
        path = write_payload(model / name, marker, kind)
        args = ["-m", model]
    else:
        path = write_payload(tmp_path / name, marker, kind)
        args = ["-m", path] if flag == "-m" else ["-m", model, flag, path]
    before = snapshot(tmp_path)
    done = sdkit("generate", "x", *args, "--allow-pickle", "--steps", "2", "-o", tmp_path / "o")
    line = assert_refused(done, f"refused: {path} contains code, not just tensors", "system", "from a trusted source")
    assert "internal error" not in line
    assert not marker.exists()
    assert snapshot(tmp_path) == before


def test_code_in_an_annotator_file_is_refused_and_never_runs(tmp_path: Path) -> None:
    """Annotator weights (.pth) are pickles by nature, loaded by controlnet-aux with torch's weights_only default."""
    from PIL import Image

    marker = tmp_path / "pwned"
    annotators = tmp_path / "annotators"
    annotators.mkdir()
    for name in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"):
        write_payload(annotators / name, marker, "zip")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "red.png")
    before = snapshot(tmp_path)
    done = sdkit("preprocess", "openpose", tmp_path / "red.png", "--annotators-dir", annotators, "-o", tmp_path / "pose.png")
    assert_refused(done, f"refused: {annotators / 'body_pose_model.pth'} contains code, not just tensors",
                   "lllyasviel/Annotators")  # fmt: skip
    assert not marker.exists()
    assert snapshot(tmp_path) == before


# 3. files that are not weights; 4. embeddings without vectors


@pytest.mark.parametrize("flag", ["--lora", "--embedding"])
def test_a_file_that_is_not_weights_is_named(flag: str, tmp_path: Path, tiny_sd_dir: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "picture.safetensors", format="PNG")
    passwd = Path("/etc/passwd") if Path("/etc/passwd").is_file() else tmp_path / "passwd"
    passwd.exists() or passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    before = snapshot(tmp_path)
    for path, what in ((passwd, "text"), (tmp_path / "picture.safetensors", "not a safetensors file (it is a PNG image)")):
        done = sdkit("generate", "x", "-m", tiny_sd_dir, flag, path, "--allow-pickle", "-o", tmp_path / "o")
        assert_refused(done, f"{flag} {path}", what)
    done = sdkit("generate", "x", "-m", tiny_sd_dir, flag, passwd, "-o", tmp_path / "o")
    assert_refused(done, "is not a weights file (it is text, neither safetensors nor a torch pickle)")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("layout", ["a1111", "diffusers"])
def test_an_embedding_with_no_vectors_is_refused(layout: str, tmp_path: Path, tiny_sd_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "empty.safetensors"
    save_file({"emb_params" if layout == "a1111" else "<e>": torch.zeros(0, 32)}, path)
    before = snapshot(tmp_path)
    done = sdkit("generate", "x", "-m", tiny_sd_dir, "--embedding", f"{path}:<e>", "--steps", "2", "-o", tmp_path / "o")
    assert_refused(done, f"--embedding {path} has 0 vectors", "(0, 32)")
    assert snapshot(tmp_path) == before


# 5. a LoRA that does not fit: one line, whatever the libraries would log


def test_a_misfit_lora_prints_one_line(tmp_path: Path, tiny_sd_dir: Path, tiny_sdxl_dir: Path, lora_state) -> None:
    """tiny-sd's LoRA on tiny-sdxl (cross-attention 32 vs 64), with the libraries' logging turned up as a user might:
    diffusers logs every mismatched layer and transformers a LOAD REPORT table; only sdkit's line may show."""
    import torch
    from safetensors.torch import save_file

    unet_lora = tmp_path / "sd-lora.safetensors"
    save_file({k: v.contiguous() for k, v in lora_state.items()}, unet_lora)
    wide = {k: torch.randn(*(48 if n == 32 else n for n in v.shape)) for k, v in lora_state.items() if k.startswith("text_encoder.")}
    te_lora = tmp_path / "wide-te-lora.safetensors"  # a text-encoder LoRA for hidden size 48 on tiny-sd's 32
    save_file(wide, te_lora)
    env = {**ENV, "DIFFUSERS_VERBOSITY": "info", "TRANSFORMERS_VERBOSITY": "info"}
    before = snapshot(tmp_path)
    done = sdkit("generate", "x", "-m", tiny_sdxl_dir, "--lora", unet_lora, "--steps", "2", "-o", tmp_path / "o", env=env)
    assert_refused(done, f"--lora {unet_lora} does not fit this model", "attn2.to_k is [4, 32] in the file, [4, 64] in this model")
    done = sdkit("generate", "x", "-m", tiny_sd_dir, "--lora", te_lora, "--steps", "2", "-o", tmp_path / "o", env=env)
    assert_refused(done, f"--lora {te_lora} does not fit this model", "text-encoder layers have other sizes")
    assert snapshot(tmp_path) == before


# 6. embedding tokens: one word, no ':'


@pytest.mark.parametrize("token", ["my tok", "a:b", ""])
def test_an_embedding_token_must_be_one_word(token: str, tmp_path: Path, tiny_sd_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"emb_params": torch.ones(1, 32)}, tmp_path / "e.safetensors")
    before = snapshot(tmp_path)
    done = sdkit("generate", "x", "-m", tiny_sd_dir, "--embedding", f"{tmp_path / 'e.safetensors'}:{token}", "-o", tmp_path / "o")
    assert_refused(done, "--embedding", "a token must be one word without spaces or ':'", f"(got {token!r})")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("token", ["my tok", "<a:b>"])
def test_the_textual_inversion_trainer_keeps_the_same_token_rule(token: str, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "data").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "data" / "a.png")
    before = snapshot(tmp_path)
    done = sdkit("train", "textual-inversion", "-d", tmp_path / "data", "--token", token, "--init-token", "dog",
                 "--max-steps", "1", "-o", tmp_path / "o")  # fmt: skip
    assert_refused(done, "--token", "a token must be one word without spaces or ':'", f"(got {token!r})")
    assert snapshot(tmp_path) == before
