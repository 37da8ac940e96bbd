"""`sdkit train controlnet`: train a ControlNet for a frozen Stable Diffusion (1.x/2.x-style) pipeline.

Like diffusers' train_controlnet example; the lifecycle (`sdkit.training.trainer`) and the denoising loss
(`sdkit.training.diffusion`, with its noise offset, timestep bias and min-SNR switches) are shared. What is ControlNet's
own:
  * the ControlNet starts as a copy of the UNet's encoder (`ControlNetModel.from_unet`) whose zero convolutions make
    its output exactly the base model's until it learns; its control-map encoder downsamples by the VAE's factor
    (diffusers' (16, 32, 96, 256) for SD's factor 8, (16, 32, 64) for the shapes model's factor 4);
  * the data is an imagefolder with image, conditioning image and caption columns (`sdkit data shapes
    --conditioning` writes one); image and control map get the same crop and flip; control maps go in as [0, 1];
  * the loss is the frozen UNet's denoising loss with the ControlNet's residuals added (epsilon or v-prediction, the
    model's own noise schedule); only the ControlNet trains, and the base pipeline runs as frozen cast copies.

Writes OUT/controlnet (a diffusers ControlNetModel folder, safetensors; `ControlNetModel.from_pretrained` loads it),
OUT/control.json, OUT/checkpoints/step-N, OUT/validation/step-N.png (control map | images), OUT/loss.png,
OUT/loss.json, OUT/loss.csv, OUT/run.json and OUT/recipe.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.schema.control import TrainControlNetRecipe
from sdkit.training.trainer import GridRow, Session, Trainer, TrainResult, load_sd_pipeline, place, prompt_grid, train

SD_CONDITIONING_CHANNELS = (16, 32, 96, 256)  # diffusers' default: downsamples 8x, SD's VAE factor
SMALL_CONDITIONING_CHANNELS = (16, 32, 64, 128, 256)  # prefix used for other factors (4x: 16, 32, 64)


def run(recipe: TrainControlNetRecipe) -> TrainResult:
    """Train as the recipe says; return the saved ControlNet folder (OUT/controlnet) and the pipeline."""
    return train(ControlNetTrainer(recipe))


class ControlNetTrainer(Trainer):
    companions = ("control.json",)

    def outputs(self) -> list[str]:
        return ["controlnet"]

    def check(self) -> None:
        """Dataset rows (image and control map of the same size), validation maps, and the base model, hashed:
        control.json records which weights the ControlNet fits."""
        from sdkit.models import resolve_model
        from sdkit.training.data import read_imagefolder

        recipe = self.recipe
        self.columns = (recipe.image_column, recipe.conditioning_image_column)
        self.rows = read_imagefolder(recipe.data_dir, recipe.caption_column, self.columns, max_rows=recipe.max_train_samples)
        _check_pairs(self.rows, self.columns)
        for path in recipe.validation_conditioning:
            if not Path(path).is_file():
                raise UserError(f"validation_conditioning image {path} does not exist: fix the path")
        self.base = resolve_model(recipe.model, hash_local=True)

    def load(self, s: Session):
        return load_sd_pipeline(self.recipe, self.base, sdxl=False)

    def prepare(self, s: Session):
        from sdkit.training import data
        from sdkit.training.diffusion import denoising_loss
        from sdkit.training.finetune import noise_scheduler_of
        from sdkit.training.loop import TrainingSpec
        from sdkit.training.pictures import encode_pictures, to_pixels

        recipe, pipe = self.recipe, s.pipe

        # 1. the ControlNet to train; the whole pipeline frozen, as cast copies
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.controlnet = controlnet = _controlnet(recipe, pipe.unet, factor)
        frozen = s.stand_ins()
        controlnet.requires_grad_(True)
        controlnet.train()

        # 2. data: decoded once (image and control map sized and cropped alike: squares or the same bucket), latents
        # optionally cached
        captions = [row[recipe.caption_column] for row in self.rows]
        pictures = s.pictures([row[self.columns[0]] for row in self.rows])
        maps = s.pictures([row[self.columns[1]] for row in self.rows])
        latents = encode_pictures(frozen.vae, pictures, recipe.train_batch_size, s.device, s.dtype) if recipe.cache_latents else None
        entries = [{**entry, "conditioning": control} for entry, control in zip(pictures.entries(latents), maps.pixels, strict=True)]
        dataset = data.CaptionedImages(captions, entries)

        # 3. the shared denoising loss, the control map as the extra input and the ControlNet's residuals added to
        # the frozen UNet's blocks (diffusers' train_controlnet)
        def control_map(batch, generators):
            control, _ = to_pixels(batch["conditioning"], batch["target_size"], batch["crop"], recipe.random_flip,
                                   generators, s.device)  # fmt: skip
            return control.add(1).div(2).to(s.dtype)  # [0, 1], as the ControlNet pipelines feed it

        def predict(models, noisy, timesteps, cond, control):
            down, mid = models["controlnet"](noisy, timesteps, encoder_hidden_states=cond.hidden, controlnet_cond=control,
                                             return_dict=False)  # fmt: skip
            dtype = frozen.unet.dtype
            return frozen.unet(
                noisy.to(dtype), timesteps, encoder_hidden_states=cond.hidden.to(dtype),
                down_block_additional_residuals=[r.to(dtype) for r in down], mid_block_additional_residual=mid.to(dtype),
                return_dict=False,
            )[0]  # fmt: skip

        text = s.text(frozen, caption_dropout=recipe.caption_dropout, captions=captions)
        loss_fn = denoising_loss(recipe, frozen, noise_scheduler_of(pipe), s.device, text=text, condition=control_map,
                                 predict=predict)  # fmt: skip
        return TrainingSpec(
            modules={"controlnet": controlnet}, dataset=dataset, loss_fn=loss_fn, batch_sampler=s.batches(pictures),
            validate=_validator(s, controlnet, captions, maps.pixels),
            info={"task": recipe.task, "control_type": recipe.control_type},
        )  # fmt: skip

    def save(self, s: Session, stage: Path) -> None:
        """OUT/controlnet (save_pretrained: safetensors, fp32) and OUT/control.json."""
        import torch

        place(self.controlnet, "cpu", torch.float32)
        self.controlnet.save_pretrained(stage / "controlnet", safe_serialization=True)
        info = {"control_type": self.recipe.control_type, "base_model": self.recipe.model, "base_sha256": self.base.sha256,
                "resolution": s.resolution}  # fmt: skip
        (stage / "control.json").write_text(json.dumps(info, indent=2) + "\n")


def _check_pairs(rows: list[dict[str, Any]], columns: tuple[str, str]) -> None:
    """Image and control map must have the same size, or the same crop would not cover the same content (both were
    checked by read_imagefolder, within sdkit.images.MAX_PIXELS, so their headers are safe to open)."""
    from PIL import Image

    for line, row in enumerate(rows, 1):
        with Image.open(row[columns[0]]) as image, Image.open(row[columns[1]]) as control:
            if image.size != control.size:
                raise UserError(
                    f"metadata.jsonl row {line}: {row[columns[1]].name} is {control.size[0]}x{control.size[1]} but "
                    f"{row[columns[0]].name} is {image.size[0]}x{image.size[1]}: give each image a control map of its size"
                )


def conditioning_channels(recipe: TrainControlNetRecipe, factor: int) -> tuple[int, ...]:
    """The control-map encoder's channels: as given (checked against the VAE factor), or the default for it."""
    steps = factor.bit_length() - 1
    if recipe.conditioning_embedding_out_channels is not None:
        channels = tuple(recipe.conditioning_embedding_out_channels)
        if 2 ** (len(channels) - 1) != factor:
            raise UserError(
                f"conditioning_embedding_out_channels {list(channels)} downsample {2 ** (len(channels) - 1)}x but the "
                f"VAE downsamples {factor}x: give {steps + 1} channel counts"
            )
        return channels
    if factor == 8:
        return SD_CONDITIONING_CHANNELS
    if 2**steps != factor or steps + 1 > len(SMALL_CONDITIONING_CHANNELS):
        raise UserError(f"VAE factor {factor}: set conditioning_embedding_out_channels ({steps + 1} counts)")
    return SMALL_CONDITIONING_CHANNELS[: steps + 1]


def _controlnet(recipe: TrainControlNetRecipe, unet, factor: int):
    """A ControlNet initialised from the UNet (zero convolutions), or the given one to continue training."""
    from diffusers import ControlNetModel

    if recipe.controlnet is None:
        return ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=conditioning_channels(recipe, factor)
        )
    folder = Path(recipe.controlnet).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(
            f"controlnet {folder} is not a ControlNet folder (no config.json): give a saved ControlNetModel"
        )
    controlnet = ControlNetModel.from_pretrained(folder)
    embedding = controlnet.config.conditioning_embedding_out_channels
    if 2 ** (len(embedding) - 1) != factor or controlnet.config.cross_attention_dim != unet.config.cross_attention_dim:
        raise UserError(f"controlnet {folder} does not fit {recipe.model} (VAE factor or text width differ)")
    return controlnet


def _validator(s: Session, controlnet, captions, maps):
    """step -> grid rows: each (prompt, control map) as the map followed by images for seeds seed, seed+1, …"""
    from PIL import Image

    recipe, pipe, size = s.recipe, s.pipe, s.resolution
    maps_given = recipe.validation_conditioning
    pairs = [(p, _open_map(maps_given[min(i, len(maps_given) - 1)], size)) for i, p in enumerate(recipe.validation_prompts)]
    for i in range(min(recipe.validation_from_data, len(captions))):
        control = Image.fromarray(maps[i].permute(1, 2, 0).numpy())
        pairs.append((captions[i], control.resize((size, size)) if control.size != (size, size) else control))
    rows = [GridRow(prompt, {"image": control, "height": size, "width": size}, [("control", control)])
            for prompt, control in pairs]  # fmt: skip

    def make_pipeline():
        from diffusers import StableDiffusionControlNetPipeline

        return StableDiffusionControlNetPipeline(
            vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
            controlnet=controlnet, scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip

    return prompt_grid(s, make_pipeline, rows)


def _open_map(path: Path, resolution: int):
    from sdkit.training.pictures import open_rgb, resize_and_crop

    return resize_and_crop(open_rgb(Path(path)), resolution, center_crop=True)
