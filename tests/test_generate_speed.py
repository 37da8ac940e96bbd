"""Memory/speed switches: slicing, tiling and channels-last keep the image; a tiny VAE decodes; misfits are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, generated, invoke

FAST = ["--steps", "3", "--seed", "6", "--scheduler", "Euler"]


def _gen(tmp: Path, model: Path, name: str, *extra) -> np.ndarray:
    return generated(tmp / name, "a red circle", "-m", model, *FAST, *extra)


def _tiny_vae(out: Path, blocks: int) -> Path:
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny(encoder_block_out_channels=(16,) * blocks, decoder_block_out_channels=(16,) * blocks,
                          num_encoder_blocks=(1,) * blocks, num_decoder_blocks=(1,) * blocks, latent_channels=4)
    vae.save_pretrained(out)
    return out


@pytest.mark.parametrize("flag", ["--attention-slicing", "--vae-slicing", "--vae-tiling", "--channels-last"])
def test_switch_keeps_the_image(flag: str, tmp_path: Path, tiny_sd_dir: Path) -> None:
    base = _gen(tmp_path, tiny_sd_dir, "base")
    assert np.abs(_gen(tmp_path, tiny_sd_dir, "switched", flag) - base).max() <= 2


def test_tiny_vae(tmp_path: Path, tiny_sd_dir: Path) -> None:
    base = _gen(tmp_path, tiny_sd_dir, "base")
    fitting = _tiny_vae(tmp_path / "taesd-x2", blocks=2)  # tiny-sd's VAE downsamples 2x
    decoded = _gen(tmp_path, tiny_sd_dir, "tiny", "--tiny-vae", fitting)
    assert decoded.shape == base.shape and np.abs(decoded - base).mean() > 1  # another decoder drew it
    wrong = _tiny_vae(tmp_path / "taesd-x8", blocks=4)
    assert_user_error(invoke("generate", "x", "-m", tiny_sd_dir, *FAST, "--tiny-vae", wrong, "-o", tmp_path / "o"), "8x")
    assert_user_error(invoke("generate", "x", "-m", tiny_sd_dir, "--tiny-vae", tmp_path, "-o", tmp_path / "o"), "no config.json")
    assert not (tmp_path / "o").exists()
