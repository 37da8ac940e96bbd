"""Every trainer on the tiny SDXL pipeline (two text encoders, pooled embedding, micro-conditioning): LoRA files in both
formats that sdkit and plain diffusers load to the same pixels, textual inversion with one embedding per encoder,
DreamBooth (full with prior preservation, and LoRA), text-to-image, and what the loss feeds the SDXL UNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST, generate, in_memory, shapes_dataset, tensors

from sdkit.lora_io import LORA_FILE
from sdkit.schema.finetune import TrainDreamBoothRecipe, TrainLoraRecipe, TrainTextualInversionRecipe
from sdkit.schema.train import TrainTextToImageRecipe
from sdkit.tasks import train_dreambooth, train_lora, train_text_to_image, train_textual_inversion

PROMPT = "a red circle on a blue background"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return shapes_dataset(tmp_path_factory.mktemp("sdxl") / "shapes")


def plain_diffusers(model: Path):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(model)


def encoder_weights(folder: Path) -> dict:
    return tensors(next(folder.glob("*.safetensors")))


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_sdxl_dir: Path, data: Path):
    """UNet + both text encoders' LoRA, alpha != rank, on attention and convolutions, both formats."""
    recipe = TrainLoraRecipe(
        model=str(tiny_sdxl_dir), data_dir=data, output_dir=tmp_path_factory.mktemp("sdxl") / "lora", max_steps=3,
        train_batch_size=2, rank=4, alpha=2.0, train_text_encoder=True, save_format="kohya", target_modules=TARGETS,
        learning_rate=0.05, checkpointing_steps=2, **FAST,
    )  # fmt: skip
    return train_lora.run(recipe)


def test_sdxl_lora_loads_in_sdkit_and_plain_diffusers_with_identical_pixels(lora, tiny_sdxl_dir: Path, tmp_path: Path):
    memory = in_memory(lora.pipeline, PROMPT)
    base = generate(tmp_path / "base", tiny_sdxl_dir, PROMPT)
    assert np.abs(memory - base).mean() > 1  # the LoRA changes the image
    assert [p.name for p in lora.files] == [LORA_FILE, "lora.safetensors"]
    for path in lora.files:  # diffusers format and kohya keys
        ours = generate(tmp_path / path.stem, tiny_sdxl_dir, PROMPT, "--lora", path)
        assert (ours == memory).all(), path.name
        plain = plain_diffusers(tiny_sdxl_dir)
        plain.load_lora_weights(str(path))
        assert (in_memory(plain, PROMPT) == ours).all(), path.name  # plain diffusers: the same pixels
    kohya = tensors(lora.files[1])
    prefixes = {k.split("_encoder_")[0] if k.startswith("lora_te") else "lora_unet" for k in kohya}
    assert prefixes == {"lora_unet", "lora_te1_text_model", "lora_te2_text_model"}  # kohya's SDXL keys
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {2.0}
    diffusers_keys = tensors(lora.files[0])
    assert any(k.startswith("text_encoder_2.") for k in diffusers_keys) and any(k.startswith("text_encoder.") for k in diffusers_keys)


def test_sdxl_textual_inversion_one_embedding_per_encoder(tiny_sdxl_dir: Path, data: Path, tmp_path: Path):
    from safetensors.torch import load_file

    recipe = TrainTextualInversionRecipe(
        model=str(tiny_sdxl_dir), data_dir=data / "images", token="<zig>", init_token="circle", num_vectors=2,
        max_steps=3, train_batch_size=2, learning_rate=0.5, adam_weight_decay=0.1, checkpointing_steps=None,
        output_dir=tmp_path / "ti", **FAST,
    )  # fmt: skip
    result = train_textual_inversion.run(recipe)
    assert [p.name for p in result.files] == ["learned_embeds.safetensors", "zig.safetensors"]
    for encoder, tokenizer, key in (("text_encoder", "tokenizer", "clip_l"), ("text_encoder_2", "tokenizer_2", "clip_g")):
        base = encoder_weights(tiny_sdxl_dir / encoder)
        table = getattr(result.pipeline, encoder).get_input_embeddings().weight.detach()
        (name,) = [k for k in base if k.endswith("token_embedding.weight")]
        old = len(base[name])
        assert (table[:old] == base[name]).all()  # old rows untouched, in both encoders
        new_ids = getattr(result.pipeline, tokenizer).convert_tokens_to_ids(["<zig>", "<zig>_1"])
        assert new_ids == [old, old + 1]
        for path in result.files:
            assert (load_file(str(path))[key] == table[new_ids]).all()  # clip_l / clip_g: A1111's SDXL format
    memory = in_memory(result.pipeline, "a <zig> on a blue background")
    plain = plain_diffusers(tiny_sdxl_dir)  # as diffusers documents SDXL embeddings: one call per encoder
    state = load_file(str(result.files[1]))
    plain.load_textual_inversion(state["clip_l"], token="<zig>", text_encoder=plain.text_encoder, tokenizer=plain.tokenizer)
    plain.load_textual_inversion(state["clip_g"], token="<zig>", text_encoder=plain.text_encoder_2, tokenizer=plain.tokenizer_2)
    assert (in_memory(plain, "a <zig> on a blue background") == memory).all()
    ours = generate(tmp_path / "gen", tiny_sdxl_dir, "a <zig> on a blue background", "--embedding", result.files[1])
    assert (ours == memory).all()  # sdkit generate reads both keys too (token from the file's metadata)


def test_sdxl_dreambooth_full_with_prior_preservation_and_lora(tiny_sdxl_dir: Path, data: Path, tmp_path: Path):
    common = {"model": str(tiny_sdxl_dir), "instance_data_dir": data / "images", "instance_prompt": "a sks shape",
              "with_prior_preservation": True, "class_prompt": "a shape", "num_class_images": 2, "class_inference_steps": 2,
              "class_data_dir": tmp_path / "class", "max_steps": 2, "threads": 1, "checkpointing_steps": None}  # fmt: skip
    full = train_dreambooth.run(TrainDreamBoothRecipe(**common, output_dir=tmp_path / "full", train_text_encoder=True,
                                                      learning_rate=0.01))  # fmt: skip
    assert full.info["class_images"] == 2 and len(list((tmp_path / "class").glob("*.png"))) == 2
    model = tmp_path / "full/model"
    assert '"StableDiffusionXLPipeline"' in (model / "model_index.json").read_text()
    for name in ("text_encoder", "text_encoder_2", "unet"):  # both encoders trained
        a, b = encoder_weights(model / name), encoder_weights(tiny_sdxl_dir / name)
        assert any(not torch.equal(a[k], b[k]) for k in a), name
    assert all(torch.equal(v, encoder_weights(tiny_sdxl_dir / "vae")[k]) for k, v in encoder_weights(model / "vae").items())
    assert (generate(tmp_path / "g1", model, "a sks shape") == in_memory(full.pipeline, "a sks shape")).all()
    lora = train_dreambooth.run(TrainDreamBoothRecipe(**common, output_dir=tmp_path / "lora", lora=True, rank=2,
                                                      learning_rate=0.05, train_text_encoder=True))  # fmt: skip
    memory = in_memory(lora.pipeline, "a sks shape")
    assert (generate(tmp_path / "g2", tiny_sdxl_dir, "a sks shape", "--lora", lora.files[0]) == memory).all()


def test_sdxl_text_to_image_trains_both_encoders_and_saves_an_sdxl_pipeline(tiny_sdxl_dir: Path, data: Path, tmp_path: Path):
    recipe = TrainTextToImageRecipe(model=str(tiny_sdxl_dir), data_dir=data, output_dir=tmp_path / "t2i", max_steps=2,
                                    train_batch_size=2, learning_rate=1e-3, train_text_encoder=True, **FAST)  # fmt: skip
    result = train_text_to_image.run(recipe)
    model = result.files[0]
    assert '"StableDiffusionXLPipeline"' in (model / "model_index.json").read_text()
    for name in ("text_encoder", "text_encoder_2", "unet"):
        a, b = encoder_weights(model / name), encoder_weights(tiny_sdxl_dir / name)
        assert any(not torch.equal(a[k], b[k]) for k in a), name
    assert (generate(tmp_path / "g", model, PROMPT) == in_memory(result.pipeline, PROMPT)).all()


def test_text_embedding_cache_trains_the_same_lora(tiny_sdxl_dir: Path, data: Path, tmp_path: Path):
    def trained(name: str, **fields) -> dict:
        recipe = TrainLoraRecipe(model=str(tiny_sdxl_dir), data_dir=data, output_dir=tmp_path / name, max_steps=2,
                                 train_batch_size=2, learning_rate=0.05, caption_dropout=0.5, checkpointing_steps=None,
                                 **FAST, **fields)  # fmt: skip
        return tensors(train_lora.run(recipe).files[0])

    plain, cached = trained("plain"), trained("cached", cache_text_embeddings=True, cache_latents=True)
    assert plain.keys() == cached.keys()
    assert all(torch.allclose(plain[k], cached[k], atol=1e-5) for k in plain)


class RecordingUNet:
    """The real UNet, recording what each call is conditioned on."""

    def __init__(self, unet) -> None:
        self.unet, self.calls = unet, []

    def __call__(self, sample, timesteps, hidden, **kwargs):
        self.calls.append((sample.shape, hidden.detach().clone(), {k: v.detach().clone() for k, v in kwargs["added_cond_kwargs"].items()}))
        return self.unet(sample, timesteps, hidden, **kwargs)


def test_the_loss_feeds_sdxl_micro_conditioning_pooled_text_and_zeros_for_dropped_captions(tiny_sdxl_dir: Path, tmp_path: Path):
    from sdkit.training.diffusion import denoising_loss
    from sdkit.training.text import TextConditioning

    pipe = plain_diffusers(tiny_sdxl_dir)
    recipe = TrainLoraRecipe(model=str(tiny_sdxl_dir), data_dir=tmp_path, output_dir=tmp_path / "o")
    batch = {  # two buckets: 24x40 (h x w) and 40x24, each image with its original size and crop corner
        "pixels": [torch.zeros(3, 24, 40, dtype=torch.uint8), torch.zeros(3, 40, 24, dtype=torch.uint8),
                   torch.zeros(3, 24, 40, dtype=torch.uint8)],
        "target_size": torch.tensor([[24, 40], [40, 24], [24, 40]]), "original_size": torch.tensor([[60, 100], [41, 24], [24, 44]]),
        "crop": torch.tensor([[0, 0], [0, 0], [0, 2]]), "caption": [PROMPT, PROMPT, "a green square"],
    }  # fmt: skip
    for dropout in (0.0, 1.0):
        unet = RecordingUNet(pipe.unet)
        loss_fn = denoising_loss(recipe, pipe, pipe.scheduler, "cpu", text=TextConditioning(pipe, pipe, caption_dropout=dropout))
        with torch.no_grad():
            assert torch.isfinite(loss_fn(batch, {"unet": unet}, torch.Generator().manual_seed(0)))
        assert [c[0][-2:] for c in unet.calls] == [(12, 20), (20, 12)]  # one UNet call per size (VAE factor 2)
        (wide, tall) = unet.calls
        assert wide[2]["time_ids"].tolist() == [[60, 100, 0, 0, 24, 40], [24, 44, 0, 2, 24, 40]]
        assert tall[2]["time_ids"].tolist() == [[41, 24, 0, 0, 40, 24]]
        pooled, hidden = wide[2]["text_embeds"], wide[1]
        assert pooled.shape == (2, 32) and hidden.shape[-1] == 64  # pooled from encoder 2; 32 + 32 hidden
        if dropout:  # force_zeros_for_empty_prompt: what the SDXL pipeline feeds as the unconditional input
            assert not hidden.any() and not pooled.any()
        else:
            with torch.no_grad():
                prompt_embeds, _, pooled_embeds, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
            assert torch.allclose(hidden[0], prompt_embeds[0], atol=1e-6) and torch.allclose(pooled[0], pooled_embeds[0], atol=1e-6)


def test_init_from_starts_the_sdxl_shapes_model_from_the_sd_one() -> None:
    from sdkit.architectures import build_pipeline
    from sdkit.models import load_pipeline, resolve_model
    from sdkit.training.warmstart import init_from

    pipe = build_pipeline("shapes-sdxl")
    assert init_from(pipe, "shapes") == {"vae": (156, 156), "unet": (326, 330)}  # all but add_embedding; no encoder
    source = load_pipeline(resolve_model("shapes"), torch_dtype=torch.float32)
    ours = pipe.unet.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in source.unet.state_dict().items())
    assert pipe.vae.config.scaling_factor == source.vae.config.scaling_factor
    noisy, hidden = torch.randn(1, 4, 16, 16), torch.randn(1, 32, 128)
    added = {"text_embeds": torch.randn(1, 64), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():  # the added conditioning starts at zero output: the copy predicts what the SD UNet does
        assert torch.allclose(pipe.unet(noisy, 500, hidden, added_cond_kwargs=added).sample, source.unet(noisy, 500, hidden).sample)


def test_a_preset_run_saves_the_trained_noise_schedule(data: Path, tmp_path: Path) -> None:
    import json

    recipe = TrainTextToImageRecipe(preset="shapes-sdxl", init_from="shapes", data_dir=data, output_dir=tmp_path / "run",
                                    max_steps=1, train_batch_size=2, train_text_encoder=True, cache_latents=True,
                                    prediction_type="v_prediction", rescale_betas_zero_snr=True, **FAST)  # fmt: skip
    model = train_text_to_image.run(recipe).files[0]
    config = json.loads((model / "scheduler/scheduler_config.json").read_text())
    assert (config["prediction_type"], config["rescale_betas_zero_snr"], config["timestep_spacing"]) == ("v_prediction", True, "trailing")
    assert '"StableDiffusionXLPipeline"' in (model / "model_index.json").read_text()
