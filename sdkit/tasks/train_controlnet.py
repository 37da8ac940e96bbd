"""`sdkit train controlnet`: train a ControlNet for a frozen Stable Diffusion (1.x/2.x-style) pipeline.

Like diffusers' train_controlnet example, on sdkit's shared loop (`sdkit.training.loop`):
  * the ControlNet starts as a copy of the UNet's encoder (`ControlNetModel.from_unet`) whose zero convolutions make
    its output exactly the base model's until it learns; its control-map encoder downsamples by the VAE's factor
    (diffusers' (16, 32, 96, 256) for SD's factor 8, (16, 32, 64) for the shapes model's factor 4);
  * the data is an imagefolder with image, conditioning image and caption columns (`sdkit data shapes
    --conditioning` writes one); image and control map get the same crop and flip; control maps go in as [0, 1];
  * the loss is the frozen UNet's denoising loss with the ControlNet's residuals added (epsilon or v-prediction, the
    model's own noise schedule); only the ControlNet trains.

Writes OUT/controlnet (a diffusers ControlNetModel folder, safetensors; `ControlNetModel.from_pretrained` loads it),
OUT/control.json, OUT/checkpoints/step-N, OUT/validation/step-N.png (control map | images), OUT/loss.png,
OUT/loss.json, OUT/loss.csv, OUT/run.json and OUT/recipe.yaml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.schema.control import TrainControlNetRecipe

SD_CONDITIONING_CHANNELS = (16, 32, 96, 256)  # diffusers' default: downsamples 8x, SD's VAE factor
SMALL_CONDITIONING_CHANNELS = (16, 32, 64, 128, 256)  # prefix used for other factors (4x: 16, 32, 64)


def run(recipe: TrainControlNetRecipe) -> Path:
    """Train as the recipe says; return the saved ControlNet folder (OUT/controlnet)."""
    import torch
    from accelerate.utils import set_seed

    from sdkit.training import data
    from sdkit.training.finetune import write_recipe
    from sdkit.training.loop import TrainTask, accelerator_session, run_training, torch_threads

    # 0. cheap checks first: output folder and resume, dataset rows, validation maps, the base model (nothing loaded)
    out = Path(recipe.output_dir)
    if _finished(out, recipe):
        print(f"{out} already finished {recipe.max_steps} steps: nothing to do", file=sys.stderr)
        return out / "controlnet"
    columns = (recipe.image_column, recipe.conditioning_image_column)
    rows = data.read_imagefolder(recipe.data_dir, recipe.caption_column, columns, max_rows=recipe.max_train_samples)
    _check_pairs(rows, columns)
    for path in recipe.validation_conditioning:
        if not Path(path).is_file():
            raise UserError(f"validation_conditioning image {path} does not exist: fix the path")
    captions = [row[recipe.caption_column] for row in rows]
    base = _resolve_base(recipe)

    with torch_threads(recipe.threads), accelerator_session(recipe) as accelerator:
        set_seed(recipe.seed)

        # 1. load: the frozen pipeline, and the ControlNet to train
        pipe = _load_pipeline(recipe, base)
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        resolution = recipe.resolution or pipe.unet.config.sample_size * factor
        controlnet = _controlnet(recipe, pipe.unet, factor)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
        device = accelerator.device
        for module in (pipe.vae, pipe.unet, pipe.text_encoder):
            module.requires_grad_(False)
            _place(module, device, weight_dtype)
        controlnet.requires_grad_(True)
        controlnet.train()

        # 2. data: decoded once (image and control map cropped alike), tokenised, latents optionally cached
        images = data.load_images([row[columns[0]] for row in rows], resolution, recipe.center_crop)
        maps = data.load_images([row[columns[1]] for row in rows], resolution, recipe.center_crop)
        latent_dist = None
        if recipe.cache_latents:
            latent_dist = data.encode_latents(pipe.vae, images, recipe.train_batch_size, device, weight_dtype)
        dataset = ConditionedImages(data.tokenize(pipe.tokenizer, captions), maps, images, latent_dist)

        # 3. the loss, 4. validation
        loss_fn = _loss(recipe, pipe, resolution, weight_dtype, device)
        validate = _validator(recipe, pipe, controlnet, captions, maps, resolution, accelerator)

        # 5. train (recipe.yaml only now: every input is checked and decoded)
        if accelerator.is_main_process:
            write_recipe(recipe, out / "recipe.yaml")
        task = TrainTask(
            modules={"controlnet": controlnet}, dataset=dataset, loss_fn=loss_fn, validate=validate,
            info={"task": recipe.task, "control_type": recipe.control_type},
        )  # fmt: skip
        result = run_training(accelerator, recipe, task)

        # 6. save: a plain diffusers ControlNetModel folder and control.json (staged; a full disk keeps the last
        # checkpoint and says so)
        target = out / "controlnet"
        if accelerator.is_main_process:
            info = {
                "control_type": recipe.control_type, "base_model": recipe.model, "base_sha256": base.sha256,
                "resolution": resolution,
            }  # fmt: skip
            _save(result.modules["controlnet"], out, info)
            print(f"controlnet saved: {target}", file=sys.stderr)
        accelerator.wait_for_everyone()
    return target


class ConditionedImages:
    """Map-style dataset over in-memory tensors: {"index", "input_ids", "conditioning", "pixels" | "latent_dist"}."""

    def __init__(self, input_ids, conditioning, pixels, latent_dist=None):
        self.input_ids, self.conditioning, self.pixels, self.latent_dist = input_ids, conditioning, pixels, latent_dist

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"index": index, "input_ids": self.input_ids[index], "conditioning": self.conditioning[index]}
        if self.latent_dist is not None:
            item["latent_dist"] = self.latent_dist[index]
        else:
            item["pixels"] = self.pixels[index]
        return item


def _check_pairs(rows: list[dict[str, Any]], columns: tuple[str, str]) -> None:
    """Image and control map must have the same size, or the same crop would not cover the same content."""
    from PIL import Image

    for line, row in enumerate(rows, 1):
        with Image.open(row[columns[0]]) as image, Image.open(row[columns[1]]) as control:
            if image.size != control.size:
                raise UserError(
                    f"metadata.jsonl row {line}: {row[columns[1]].name} is {control.size[0]}x{control.size[1]} but "
                    f"{row[columns[0]].name} is {image.size[0]}x{image.size[1]}: give each image a control map of its size"
                )


def _resolve_base(recipe: TrainControlNetRecipe):
    """The base model reference; a local one is hashed (control.json records which weights the ControlNet fits)."""
    from sdkit.models import resolve_model

    return resolve_model(recipe.model, hash_local=True)


def _load_pipeline(recipe: TrainControlNetRecipe, base):
    """The StableDiffusionPipeline to condition, in fp32 on the CPU."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdkit.models import load_pipeline

    pipe = load_pipeline(base, torch_dtype=torch.float32)
    if not isinstance(pipe, StableDiffusionPipeline):
        raise UserError(
            f"{recipe.model} is a {type(pipe).__name__}: ControlNet training supports SD 1.x/2.x pipelines "
            "(StableDiffusionPipeline) only"
        )
    return pipe


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


def _place(module, device, dtype) -> None:
    """Move a module; cast only when its dtype differs (diffusers warns about any dtype argument)."""
    module.to(device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)


def _loss(recipe: TrainControlNetRecipe, pipe, resolution: int, weight_dtype, device):
    """diffusers' train_controlnet loss: the frozen UNet's prediction with the ControlNet's residuals added."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr
    from diffusers.utils.torch_utils import randn_tensor

    from sdkit.training.data import sample_latents, to_pixels, tokenize

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    steps = noise_scheduler.config.num_train_timesteps
    vae, unet, text_encoder = pipe.vae, pipe.unet, pipe.text_encoder
    empty_ids = tokenize(pipe.tokenizer, [""])[0]

    def loss_fn(batch, models, generator):
        state = generator.get_state()  # the control map gets the image's crop and flip
        with torch.no_grad():
            control = to_pixels(
                batch["conditioning"], resolution, recipe.center_crop, recipe.random_flip, generator, device
            )
            control = control.add(1).div(2).to(weight_dtype)  # [0, 1], as the ControlNet pipelines feed it
            if "latent_dist" in batch:
                latents = sample_latents(batch["latent_dist"], generator)
            else:
                same = torch.Generator().set_state(state)
                pixels = to_pixels(batch["pixels"], resolution, recipe.center_crop, recipe.random_flip, same, device)
                latents = vae.encode(pixels.to(weight_dtype)).latent_dist.sample(generator=generator)
            latents = (latents.float() * vae.config.scaling_factor).to(device)
            bsz = latents.shape[0]
            noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
            timesteps = torch.randint(0, steps, (bsz,), generator=generator).to(device)
            input_ids = batch["input_ids"].clone()
            if recipe.caption_dropout:
                drop = (torch.rand(bsz, generator=generator) < recipe.caption_dropout).to(input_ids.device)
                input_ids[drop] = empty_ids.to(input_ids.device)
            encoder_hidden_states = text_encoder(input_ids.to(device), return_dict=False)[0]
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        down, mid = models["controlnet"](
            noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states, controlnet_cond=control,
            return_dict=False,
        )  # fmt: skip
        model_pred = unet(
            noisy_latents.to(weight_dtype), timesteps, encoder_hidden_states=encoder_hidden_states,
            down_block_additional_residuals=[s.to(weight_dtype) for s in down],
            mid_block_additional_residual=mid.to(weight_dtype), return_dict=False,
        )[0]  # fmt: skip
        target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        if recipe.snr_gamma is None:
            return F.mse_loss(model_pred.float(), target.float())
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=recipe.snr_gamma)
        weights = weights / snr if prediction_type == "epsilon" else weights / (snr + 1)
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (loss * weights).mean()

    return loss_fn


def _validator(recipe, pipe, controlnet, captions, maps, resolution, accelerator):
    """step -> grid rows: each (prompt, control map) as the map followed by images for seeds seed, seed+1, …"""
    import torch
    from PIL import Image

    pairs = [(p, _open_map(recipe.validation_conditioning[min(i, len(recipe.validation_conditioning) - 1)], resolution))
             for i, p in enumerate(recipe.validation_prompts)]  # fmt: skip
    for i in range(min(recipe.validation_from_data, len(captions))):
        pairs.append((captions[i], Image.fromarray(maps[i].permute(1, 2, 0).numpy())))
    if not pairs:
        return None
    from diffusers import StableDiffusionControlNetPipeline

    def validate(step):
        val = StableDiffusionControlNetPipeline(
            vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
            controlnet=controlnet, scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip
        val.set_progress_bar_config(disable=True)
        rows = []
        for prompt, control in pairs:
            gens = [torch.Generator().manual_seed(recipe.seed + i) for i in range(recipe.validation_images)]
            with torch.no_grad(), accelerator.autocast():
                result = val(
                    prompt, image=control, num_inference_steps=recipe.validation_inference_steps,
                    guidance_scale=recipe.validation_guidance_scale, num_images_per_prompt=recipe.validation_images,
                    generator=gens, height=resolution, width=resolution,
                )  # fmt: skip
            images = [(f"{prompt} (seed {recipe.seed + i})", image) for i, image in enumerate(result.images)]
            rows.append([("control", control), *images])
        return rows

    return validate


def _open_map(path: Path, resolution: int):
    from sdkit.training.data import open_rgb, resize_and_crop

    return resize_and_crop(open_rgb(Path(path)), resolution, center_crop=True)


def _save(controlnet, out: Path, info: dict[str, Any]) -> None:
    """OUT/controlnet (save_pretrained: safetensors, fp32) and OUT/control.json through `results.save_result`: staged,
    then moved into place, replacing older ones only once complete."""
    import torch

    from sdkit.training.results import save_result, tensor_bytes

    _place(controlnet, "cpu", torch.float32)

    def write(stage: Path) -> None:
        controlnet.save_pretrained(stage / "controlnet", safe_serialization=True)
        (stage / "control.json").write_text(json.dumps(info, indent=2) + "\n")

    save_result(out, ["controlnet", "control.json"], write, tensor_bytes(controlnet))


def _finished(out: Path, recipe: TrainControlNetRecipe) -> bool:
    """True when `--resume latest` finds the run complete; a fresh start over an earlier result is refused."""
    from sdkit.training import checkpoints as ckpt
    from sdkit.training.results import finished

    outputs = [out / "controlnet" / "config.json", out / "control.json"]
    if recipe.resume == "latest" and finished(out, outputs, recipe.max_steps):
        return True
    ckpt.resolve_resume(out, recipe.resume)
    if recipe.resume is None and (out / "controlnet").exists():
        raise UserError(
            f"{out} already holds a trained ControlNet (controlnet/): continue with --resume latest, "
            "or choose another output folder"
        )
    return False
