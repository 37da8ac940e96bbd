"""SDXL's refiner at generation: the base model denoises the first `refiner_switch` of the schedule, the refiner the
rest, from the base's latents (diffusers' "ensemble of expert denoisers": `denoising_end` / `denoising_start`).

    sdkit generate "a castle" -m sdxl --refiner stabilityai/stable-diffusion-xl-refiner-1.0 --refiner-switch 0.8

`handoff(pipe, recipe, cache, placement)` returns a pipeline-like object that `sdkit.tasks.generate.denoise` calls like
the base pipeline (same arguments, same step callback, same output), so generation itself is unchanged. The refiner
is any SDXL pipeline folder, file or hub id: Stability's refiner (second text encoder only, aesthetic-score
conditioning: told apart by the size of its added-conditioning input) or an SDXL base model. It samples with the
same sampler, built from its own scheduler config, and the image's seed. The infotext records it as A1111 does:
`Refiner: NAME [hash], Refiner switch at: 0.8`.
"""

from __future__ import annotations

from typing import Any

from sdkit.errors import UserError


def check(recipe) -> None:
    """Refuse what the refiner cannot do before anything loads: resolve the model, txt2img only, no ControlNet."""
    if recipe.refiner is None:
        return
    from sdkit.models import resolve_model

    if recipe.mode != "txt2img" or recipe.control:
        raise UserError("--refiner works with txt2img (no --init-image, --mask or --control): drop one of them")
    resolve_model(recipe.refiner, allow_pickle=recipe.allow_pickle, models_dirs=recipe.models_dir)


def handoff(pipe, recipe, cache, placement, refs):
    """`pipe` itself without a refiner; else the base → refiner hand-off over the (cached) refiner pipeline, with the
    prompts (`refs.prompt`, `refs.negative`) encoded by the refiner's own text encoder(s) (sdkit.prompts)."""
    if recipe.refiner is None:
        return pipe
    import diffusers

    from sdkit import prompts, schedulers
    from sdkit.models import resolve_model

    if not isinstance(pipe, diffusers.StableDiffusionXLPipeline):
        raise UserError(f"--refiner needs an SDXL base model; {recipe.model} is a {type(pipe).__name__}")
    loaded = cache.get(resolve_model(recipe.refiner, allow_pickle=recipe.allow_pickle, models_dirs=recipe.models_dir), placement,
                       allow_pickle=recipe.allow_pickle)  # fmt: skip
    if not hasattr(loaded.pipe, "text_encoder_2"):
        raise UserError(f"--refiner {recipe.refiner} is a {type(loaded.pipe).__name__}: give an SDXL refiner or base model")
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(loaded.pipe)
    refiner.register_to_config(requires_aesthetics_score=_aesthetic(refiner))
    refiner.scheduler = schedulers.build(recipe.scheduler, loaded.scheduler_config, recipe.schedule_type)
    refiner.set_progress_bar_config(disable=True)
    embeds = prompts.encode(refiner, refs.prompt, refs.negative, syntax=recipe.prompt_syntax)
    return Handoff(pipe, refiner, recipe.refiner_switch, embeds)


def _aesthetic(refiner) -> bool:
    """Whether the refiner's UNet takes SDXL refiner's 5 time ids (with the aesthetic score) rather than 6."""
    unet = refiner.unet
    pooled = refiner.text_encoder_2.config.projection_dim
    return unet.add_embedding.linear_1.in_features == pooled + 5 * unet.config.addition_time_embed_dim


class Handoff:
    """Called like the base pipeline: the base runs to `switch` and returns latents, the refiner finishes them."""

    def __init__(self, base, refiner, switch: float, embeds: dict[str, Any]):
        self.base, self.refiner, self.switch, self.embeds = base, refiner, switch, embeds

    def __getattr__(self, name: str) -> Any:  # numpy_to_pil, tokenizer, ...: the base's
        return getattr(self.base, name)

    def __call__(self, **call: Any):
        shared = {k: call[k] for k in ("num_inference_steps", "guidance_scale", "generator", "callback_on_step_end",
                                       "callback_on_step_end_tensor_inputs") if k in call}  # fmt: skip
        latents = self.base(**{**call, "denoising_end": self.switch, "output_type": "latent"}).images
        return self.refiner(**shared, **self.embeds, image=latents, denoising_start=self.switch, output_type=call.get("output_type", "pil"))


def infotext_fields(recipe) -> dict[str, Any]:
    """A1111's infotext entries for the refiner (none without one)."""
    if recipe.refiner is None:
        return {}
    from sdkit.models import resolve_model

    model = resolve_model(recipe.refiner, allow_pickle=recipe.allow_pickle, models_dirs=recipe.models_dir)
    name = f"{model.name} [{model.sha256[:10]}]" if model.sha256 else model.name
    return {"Refiner": name, "Refiner switch at": recipe.refiner_switch}
