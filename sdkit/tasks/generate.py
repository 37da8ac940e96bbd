"""txt2img, img2img and inpaint.

    sdkit generate "a red circle on a blue background" --seed 1 -o outputs

Image k of a run is generated alone with seed + k (mod 2^32), so every image can be replayed by itself bit-exactly on
CPU (a batched forward pass differs from a single one by float rounding). Each image is written as soon as it is done.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdkit import adapter_refs, backends, conditioning, device, fast, infotext, prompts, refiner, schedulers
from sdkit.adapters import adapters_applied
from sdkit.errors import SdkitError, UserError
from sdkit.images import MAX_SIDE, check_same_size, load_image
from sdkit.models import ModelRef, resolve_component, resolve_model
from sdkit.outputs import check_output_dir, write_beside, write_png
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
    refs: adapter_refs.Refs  # LoRAs, embeddings and the VAE, resolved; the prompt text the encoder reads


def check(recipe: GenerateRecipe) -> tuple[ModelRef, Inputs]:
    """Everything that can be checked without loading weights; raises UserError. Writes nothing."""
    check_output_dir(recipe.out)
    schedulers.resolve(recipe.scheduler, recipe.schedule_type)
    if recipe.prompt_syntax == "a1111":
        prompts.check(recipe.prompt, "prompt")
        prompts.check(recipe.negative, "negative prompt")
    init = load_image(recipe.init_image, "init image") if recipe.init_image else None
    mask = load_image(recipe.mask, "mask", mode="L") if recipe.mask else None
    if init is not None and mask is not None:
        check_same_size(init, mask)
    if init is not None and max(recipe.width or init.width, recipe.height or init.height) > MAX_SIDE:
        raise UserError(f"--init-image is {init.width}x{init.height} and sdkit makes images up to {MAX_SIDE} px a side: "
                        "give --width and --height, or a smaller image")  # fmt: skip
    refs = adapter_refs.resolve(recipe)
    conditioning.check_control_inputs(recipe)
    backends.check(recipe)
    if recipe.tiny_vae:
        resolve_component(recipe.tiny_vae, "tiny VAE")
    refiner.check(recipe)
    model = resolve_model(recipe.model, allow_pickle=recipe.allow_pickle, config=recipe.config, models_dirs=recipe.models_dir)
    return model, Inputs(init, mask, refs)


def run(
    recipe: GenerateRecipe, cache: PipelineCache | None = None, *, plan: Sequence[tuple[int, int]] | None = None,
    advance: Callable[[int], None] | None = None, on_step: Callable[[Any, int, Any], None] | None = None,
) -> list[Result]:
    """Generate every image of `recipe`, or only the planned `(k, file index)` pairs (a share of a distributed run).

    `advance`: run inside another task's loop (eval sweep), which shows the progress (`advance(steps)`) and reports
    the paths: no bar of its own, nothing printed. `on_step(pipe, step, latents)` runs after each denoising step (the
    server's progress, preview and interrupt)."""
    # 1. check the inputs and the placement before loading anything
    model, inputs = check(recipe)
    recipe = fast.resolve(recipe)  # --fast written into the fields (dtype, switches): recorded in every image
    placement = device.resolve(recipe.device, backends.torch_dtype(recipe), recipe.offload)
    seed = recipe.seed if recipe.seed is not None else secrets.randbelow(SEED_RANGE)
    todo = list(plan) if plan is not None else [(k, None) for k in range(recipe.num_images)]

    # 2. load the pipeline (once per run); img2img and inpaint share its modules through from_pipe
    cache = cache if cache is not None else PipelineCache()
    refs = inputs.refs
    loaded = cache.get(model, placement, allow_pickle=recipe.allow_pickle, speed=recipe, vae=refs.vae)
    base = loaded.pipe
    check_inpainting_model(base, recipe, model)
    width, height = output_size(recipe, base, inputs.init)
    with (
        adapters_applied(base, list(refs.loras), list(refs.embeddings), fuse=recipe.fuse_lora),
        backends.applied(base, recipe, model, cache.converted, refs),  # the UNet, VAE, text encoders in OpenVINO (or as loaded)
    ):
        # 3. ControlNets (loaded once per run) and their control maps at the output size
        controls = conditioning.prepare(recipe, base, model, placement, (width, height), cache.controlnets) if recipe.control else []
        pipe = for_mode(base, recipe.mode, conditioning.combined(controls) if controls else None)
        pipe.set_progress_bar_config(disable=True)

        # 4. the sampler and its schedule, built from the model's own scheduler config
        pipe.scheduler = schedulers.build(recipe.scheduler, loaded.scheduler_config, recipe.schedule_type)
        choice = schedulers.resolve(recipe.scheduler, recipe.schedule_type)
        schedule = schedulers.written_schedule(choice, loaded.scheduler_config)

        # 5. prompts (A1111's prompt language, encoded once for the run; LoRA tags already taken out) and call arguments
        if recipe.clip_skip > 1 and prompts.clip_skip_ignored(pipe):
            warn(f"--clip-skip {recipe.clip_skip} is ignored for SD 2.x and SDXL models, as A1111 ignores it")
        call = call_kwargs(recipe, width, height, inputs)
        call.update(prompts.encode(pipe, refs.prompt, refs.negative, syntax=recipe.prompt_syntax, clip_skip=recipe.clip_skip))
        if controls:
            call.update(conditioning.call_kwargs(controls, recipe.mode))
        units = [infotext.controlnet_unit(ref, c.location) for ref, c in zip(recipe.control, controls, strict=True)]
        fixed = {"num_images": 1, "model": model.location, "width": width, "height": height, **resolved_files(recipe, refs)}
        pipe = refiner.handoff(pipe, recipe, cache, placement, refs)  # an SDXL refiner takes over at refiner_switch

        # 6. denoise and decode one image per seed, writing each as soon as it is done
        results = []
        steps = effective_steps(recipe)
        with bar(f"{recipe.mode} {width}x{height}", steps * len(todo)) if advance is None else nullcontext(advance) as step:
            for k, index in todo:
                seed_k = image_seed(seed, k)
                image_recipe = recipe.model_copy(update={**fixed, "seed": seed_k})
                image = denoise(pipe, call, seed_k, placement, step, on_step)
                text = metadata(image_recipe, model, (width, height), schedule, units, refs)
                path = write_png(Path(recipe.out), str(seed_k), image, text, index)
                if advance is None:
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


def call_kwargs(recipe: GenerateRecipe, width: int, height: int, inputs: Inputs) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
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


def check_inpainting_model(pipe, recipe: GenerateRecipe, model: ModelRef) -> None:
    """An inpainting model (a 9-channel UNet: latents, mask, masked image) paints only with an image and a mask."""
    if pipe.unet.config.in_channels == 9 and recipe.mode != "inpaint":
        raise UserError(f"{model.ref} is an inpainting model (9-channel UNet): give --init-image and --mask, or use its "
                        "txt2img sibling")  # fmt: skip


def resolved_files(recipe: GenerateRecipe, refs: adapter_refs.Refs) -> dict[str, Any]:
    """The recipe's --lora, --embedding and --vae as the files they resolved to (names looked up in the library):
    what each image's recipe records. `<lora:...>` tags stay in the prompt, as A1111 records them."""
    out: dict[str, Any] = {"lora": list(refs.loras[: len(recipe.lora)]), "embedding": list(refs.embeddings[: len(recipe.embedding)])}
    if refs.vae is not None:
        out["vae"] = refs.vae.location
    return out


def metadata(recipe: GenerateRecipe, model: ModelRef, size: tuple[int, int], schedule: str, units: list[str],
             refs: adapter_refs.Refs | None = None) -> dict[str, str]:  # fmt: skip
    """PNG text chunks: A1111 `parameters` infotext (`sdkit.infotext`) and the resolved recipe as `sdkit` JSON."""
    from sdkit.version import __version__

    record = {
        "sdkit": __version__,
        "task": "generate",
        "recipe": recipe.model_dump(mode="json"),
        "model": {"ref": model.ref, "kind": model.kind, "location": model.location, "sha256": model.sha256},
        "size": list(size),
    }
    if refs is not None and refs.vae is not None:
        record["vae"] = {"ref": refs.vae.ref, "kind": refs.vae.kind, "location": refs.vae.location, "sha256": refs.vae.sha256}
    extra = refiner.infotext_fields(recipe)
    return {"parameters": infotext.parameters(recipe, model, size, schedule, units, refs, extra), "sdkit": json.dumps(record)}
