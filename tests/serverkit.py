"""Helpers of the server tests: a real `sdkit serve` process on a free loopback port, driven with httpx, and a small
model library (a LoRA and an embedding for the shapes model, the tiny SD 1.x model as a second checkpoint)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

SHAPES_PROMPT = "a red circle on a blue background"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m sdkit serve` in a child process; `client()` talks to it. Use as a context manager."""

    def __init__(self, out: Path, *args: str, env: dict[str, str] | None = None, auth: tuple[str, str] | None = None):
        self.out, self.args, self.auth = Path(out), [str(a) for a in args], auth
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.out.parent / f"{self.out.name}-server.log"

    def start(self, timeout: float = 120) -> Server:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "sdkit", "serve", "--port", str(self.port), "-o", str(self.out),
                                          *self.args], stdout=log, stderr=subprocess.STDOUT, env=self.env)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sdkit serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.client().get("/sdapi/v1/samplers", timeout=2).status_code in (200, 401):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"sdkit serve did not answer within {timeout} s:\n{self.log.read_text()}")

    def client(self, timeout: float = 300, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, auth=kwargs.pop("auth", self.auth), **kwargs)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_job(client: httpx.Client, job_id: int, timeout: float = 300, until=("done", "failed", "interrupted", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/sdkit/v1/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def pixels_of(b64: str) -> np.ndarray:
    return np.asarray(decode(b64).convert("RGB")).astype(int)


def circle_map(size: int = 64) -> Image.Image:
    """A ready canny-style map: a white circle outline on black."""
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline="white", width=2)
    return image


def make_shapes_lora(path: Path, seed: int = 0) -> Path:
    """A LoRA for the shipped shapes model with random (non-zero) weights on the UNet's attention: it changes the image."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from sdkit.lora_io import save_lora
    from sdkit.models import ASSETS

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(ASSETS / "shapes" / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.mul_(3.0)
    (written,) = save_lora(path.parent / f".{path.stem}", unet=unet, metadata={"sdkit.trigger_word": "star"})
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(written, path)
    shutil.rmtree(written.parent)
    return path


def make_embedding(path: Path, width: int, vectors: int = 2) -> Path:
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(vectors, width, generator=torch.Generator().manual_seed(1))}, str(path))
    return path


def make_bright_vae(folder: Path) -> Path:
    """The shapes model's VAE with its decoder's output bias raised: a VAE that visibly changes the picture."""
    from safetensors.torch import load_file, save_file

    from sdkit.models import ASSETS

    shutil.copytree(ASSETS / "shapes" / "vae", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors["decoder.conv_out.bias"] += 0.5
    save_file(tensors, str(weights))
    return folder


def make_library(root: Path, tiny_sd_dir: Path, tiny_sdxl_dir: Path | None = None) -> Path:
    """MODELS/ with loras/star.safetensors, embeddings/zig.safetensors (shapes' text width), checkpoints/tiny-sd
    (and tiny-sdxl when given), vae/bright (the shapes VAE, brighter), datasets/tiny (8 shapes images at 32 px)."""
    import json

    from sdkit.data.shapes import write_dataset
    from sdkit.models import ASSETS

    make_shapes_lora(root / "loras" / "star.safetensors")
    width = json.loads((ASSETS / "shapes" / "text_encoder" / "config.json").read_text())["hidden_size"]
    make_embedding(root / "embeddings" / "zig.safetensors", width)
    shutil.copytree(tiny_sd_dir, root / "checkpoints" / "tiny-sd")
    if tiny_sdxl_dir is not None:
        shutil.copytree(tiny_sdxl_dir, root / "checkpoints" / "tiny-sdxl")
    make_bright_vae(root / "vae" / "bright")
    write_dataset(root / "datasets" / "tiny", 8, seed=0, size=32)
    return root


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds no pixel data (its header is all a size check may read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
