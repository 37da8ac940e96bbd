"""txt2img, img2img and inpaint.

    sdkit generate "a red circle on a blue background" --seed 1 -o outputs

Image k of a run is generated alone with seed + k (mod 2^32), so every image can be replayed by itself bit-exactly on
CPU (a batched forward pass differs from a single one by float rounding). Each image is written as soon as it is done.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdkit import conditioning, device, fast, schedulers
from sdkit.adapters import adapters_applied, check_file
from sdkit.errors import SdkitError, UserError
from sdkit.images import check_same_size, load_image
from sdkit.models import ModelRef, resolve_component, resolve_model
from sdkit.outputs import check_output_dir, infotext, write_beside, write_png
from sdkit.pipelines import PipelineCache
from sdkit.progress import bar, warn
from sdkit.schema.generate import SEED_RANGE, GenerateRecipe, image_seed

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Result:
    path: Path
    seed: int
    image: Image.Image
    recipe: GenerateRecipe


@dataclass(frozen=True)
class Inputs:
    init: Image.Image | None
    mask: Image.Image | None


def check(recipe: GenerateRecipe) -> tuple[ModelRef, Inputs]:
    """Everything that can be checked without loading weights; raises UserError. Writes nothing."""
    check_output_dir(recipe.out)
    schedulers.resolve(recipe.scheduler)
    init = load_image(recipe.init_image, "init image") if recipe.init_image else None
    mask = load_image(recipe.mask, "mask", mode="L") if recipe.mask else None
    if init is not None and mask is not None:
        check_same_size(init, mask)
    for lora in recipe.lora:
        check_file(lora.path, "--lora", recipe.allow_pickle)
    for emb in recipe.embedding:
        check_file(emb.path, "--embedding", recipe.allow_pickle)
    conditioning.check_control_inputs(recipe)
    if recipe.tiny_vae:
        resolve_component(recipe.tiny_vae, "tiny VAE")
    model = resolve_model(recipe.model, allow_pickle=recipe.allow_pickle)
    return model, Inputs(init, mask)


def run(
    recipe: GenerateRecipe, cache: PipelineCache | None = None, *, plan: Sequence[tuple[int, int]] | None = None,
    on_step: Callable[[Any, int, Any], None] | None = None,
) -> list[Result]:
    """Generate every image of `recipe`, or only the planned `(k, file index)` pairs (a share of a distributed run).

    `on_step(pipe, step, latents)` runs after each denoising step (the server's progress, preview and interrupt)."""
    # 1. check the inputs and the placement before loading anything
    model, inputs = check(recipe)
    recipe = fast.resolve(recipe)  # --fast written into the fields (dtype, switches): recorded in every image
    placement = device.resolve(recipe.device, recipe.dtype, recipe.offload)
    seed = recipe.seed if recipe.seed is not None else secrets.randbelow(SEED_RANGE)
    todo = list(plan) if plan is not None else [(k, None) for k in range(recipe.num_images)]

    # 2. load the pipeline (once per run); img2img and inpaint share its modules through from_pipe
    cache = cache if cache is not None else PipelineCache()
    loaded = cache.get(model, placement, allow_pickle=recipe.allow_pickle, speed=recipe)
    base = loaded.pipe
    width, height = output_size(recipe, base, inputs.init)
    with adapters_applied(base, recipe.lora, recipe.embedding, fuse=recipe.fuse_lora):
        # 3. ControlNets (loaded once per run) and their control maps at the output size
        controls = conditioning.prepare(recipe, base, model, placement, (width, height), cache.controlnets) if recipe.control else []
        pipe = for_mode(base, recipe.mode, conditioning.combined(controls) if controls else None)
        pipe.set_progress_bar_config(disable=True)

        # 4. the sampler, built from the model's own scheduler config
        pipe.scheduler = schedulers.build(recipe.scheduler, loaded.scheduler_config)

        # 5. prompts and call arguments
        warn_truncated(pipe, recipe.prompt, "prompt")
        warn_truncated(pipe, recipe.negative, "negative prompt")
        call = call_kwargs(recipe, width, height, inputs)
        if controls:
            call.update(conditioning.call_kwargs(controls, recipe.mode))
        fixed = {"num_images": 1, "model": model.location, "width": width, "height": height}

        # 6. denoise and decode one image per seed, writing each as soon as it is done
        results = []
        steps = effective_steps(recipe)
        with bar(f"{recipe.mode} {width}x{height}", steps * len(todo)) as advance:
            for k, index in todo:
                seed_k = image_seed(seed, k)
                image_recipe = recipe.model_copy(update={**fixed, "seed": seed_k})
                image = denoise(pipe, call, seed_k, placement, advance, on_step)
                path = write_png(Path(recipe.out), str(seed_k), image, metadata(image_recipe, model, width, height), index)
                print(path, flush=True)
                results.append(Result(path, seed_k, image, image_recipe))
                if k == 0:
                    for i, control in enumerate(controls):
                        write_beside(path, f"control-{i}-{recipe.control[i].type}", control.image)
    return results


def for_mode(base, mode: str, controlnet=None):
    """The pipeline for txt2img / img2img / inpaint (with ControlNet if given), sharing the loaded modules."""
    import diffusers

    if mode == "txt2img" and controlnet is None:
        return base
    auto = {
        "txt2img": diffusers.AutoPipelineForText2Image,
        "img2img": diffusers.AutoPipelineForImage2Image,
        "inpaint": diffusers.AutoPipelineForInpainting,
    }[mode]
    return auto.from_pipe(base, **({"controlnet": controlnet} if controlnet is not None else {}))


def output_size(recipe: GenerateRecipe, pipe, init: Image.Image | None) -> tuple[int, int]:
    if init is not None:
        default = (init.width - init.width % 8, init.height - init.height % 8)
        if min(default) < 8:
            raise UserError(f"--init-image is {init.width}x{init.height}: give an image at least 8x8 px")
    else:
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        default = (side, side)
    return recipe.width or default[0], recipe.height or default[1]


def effective_steps(recipe: GenerateRecipe) -> int:
    """How many denoising steps run: img2img/inpaint skip the first (1 - strength) of the schedule."""
    if recipe.mode == "txt2img":
        return recipe.steps
    return max(1, min(recipe.steps, int(recipe.steps * recipe.strength)))


def warn_truncated(pipe, text: str, what: str) -> None:
    if not text:
        return
    limit = pipe.tokenizer.model_max_length
    count = len(pipe.tokenizer(text, truncation=False).input_ids)
    if count > limit:
        warn(f"{what} is {count} tokens; the text encoder reads {limit}: the last {count - limit} tokens are dropped")


def call_kwargs(recipe: GenerateRecipe, width: int, height: int, inputs: Inputs) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "prompt": recipe.prompt,
        "negative_prompt": recipe.negative or None,
        "num_inference_steps": recipe.steps,
        "guidance_scale": recipe.cfg,
        "output_type": "np",
    }
    if inputs.init is None:
        return {**kwargs, "width": width, "height": height}
    kwargs.update(image=inputs.init.resize((width, height)), strength=recipe.strength)
    if inputs.mask is not None:
        kwargs.update(mask_image=inputs.mask.resize((width, height)), width=width, height=height)
    return kwargs


def denoise(pipe, call: dict[str, Any], seed: int, placement, advance, on_step=None) -> Image.Image:
    """One image: CPU generator (same noise on every device), NaN checks on latents and pixels."""
    import numpy as np
    import torch

    def step_end(_pipe, _step, _timestep, tensors):
        if not torch.isfinite(tensors["latents"]).all():
            raise SdkitError(nan_message(placement, "latents"))
        advance(1)
        if on_step is not None:
            on_step(_pipe, _step, tensors["latents"])
        return tensors

    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        out = pipe(**call, generator=generator, callback_on_step_end=step_end, callback_on_step_end_tensor_inputs=["latents"])
    pixels = out.images[0]
    if not np.isfinite(pixels).all():
        raise SdkitError(nan_message(placement, "decoded image"))
    return pipe.numpy_to_pil(pixels[None])[0]


def nan_message(placement, where: str) -> str:
    hint = "use --dtype fp32 (or an fp16-fixed VAE)" if placement.dtype_name != "fp32" else "check the model weights"
    return f"the {where} contain NaN (dtype {placement.dtype_name}): nothing was saved for this image; {hint}"


def metadata(recipe: GenerateRecipe, model: ModelRef, width: int, height: int) -> dict[str, str]:
    """PNG text chunks: A1111 `parameters` infotext and the resolved recipe as `sdkit` JSON."""
    from sdkit.version import __version__

    fields = {
        "Steps": recipe.steps,
        "Sampler": schedulers.resolve(recipe.scheduler).name,
        "CFG scale": recipe.cfg,
        "Seed": recipe.seed,
        "Size": f"{width}x{height}",
        "Model hash": model.sha256[:10] if model.sha256 else None,
        "Model": model.name,
        "Denoising strength": recipe.strength if recipe.mode != "txt2img" else None,
        "Version": f"sdkit {__version__}",
    }
    record = {
        "sdkit": __version__,
        "task": "generate",
        "recipe": recipe.model_dump(mode="json"),
        "model": {"ref": model.ref, "kind": model.kind, "location": model.location, "sha256": model.sha256},
        "size": [width, height],
    }
    return {"parameters": infotext(recipe.prompt, recipe.negative, fields), "sdkit": json.dumps(record)}
