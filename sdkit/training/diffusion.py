"""The denoising loss every diffusion trainer shares (text-to-image, LoRA, DreamBooth, textual inversion, ControlNet),
for SD 1.x/2.x and SDXL pipelines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Conditioning:
    """What the UNet is conditioned on: the text's hidden states and, for SDXL, the added conditioning
    ({"text_embeds": pooled embedding, "time_ids": original size, crop top-left, target size}); None for SD."""

    hidden: Any
    added: dict[str, Any] | None = None


def denoising_loss(recipe, frozen, noise_scheduler, device, *, text, prior_loss_weight: float = 1.0, condition=None,
                   predict=None):  # fmt: skip
    """loss_fn(batch, models, generator) for the core, as diffusers' training examples compute it: noise (plus
    `noise_offset`), timesteps (uniform, or biased: `timestep_weights`), caption dropout (`text`, a
    `sdkit.training.text.TextConditioning`), epsilon or v-prediction target, min-SNR weighting; for SDXL the pooled
    text embedding and the micro-conditioning of diffusers' SDXL examples (each image's original size, the top-left
    corner of its crop and its target size).

    Every sample draws all of its randomness (crop, flip, latent sample, noise, timestep, caption dropout) from its own
    generator (`StepGenerator.for_samples`: by its place in the global batch), so the loss of a global batch does not
    depend on how it is split between processes or machines. Samples of different sizes (aspect-ratio buckets, a
    DreamBooth class image beside an instance image) go through the UNet in one call per size.

    `models` holds what trains ("unet", "text_encoder"[, "text_encoder_2"], or a "controlnet"); `frozen` (a pipeline,
    or anything with .vae and .unet) stands in for the rest. A batch's `prior` mask marks class images (DreamBooth):
    loss = mean(instance) + prior_loss_weight × mean(class).

    Conditioned models (ControlNet) add two hooks: `condition(batch, generators)` prepares the extra input first (the
    image then gets the same crop and flip: it is cropped with copies of the generators from before the condition),
    and `predict(models, noisy, timesteps, conditioning, extra)` replaces the UNet call."""
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    from sdkit.training.pictures import sample_latents, to_pixels
    from sdkit.training.randomness import sample_generators

    vae = frozen.vae
    scaling, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0
    prediction_type = noise_scheduler.config.prediction_type
    steps = noise_scheduler.config.num_train_timesteps
    t_weights = None if recipe.timestep_bias == "none" else timestep_weights(
        steps, recipe.timestep_bias, recipe.timestep_bias_multiplier, recipe.timestep_bias_portion)  # fmt: skip

    def unet_prediction(models, noisy, timesteps, cond, extra):
        unet = models.get("unet", frozen.unet)
        hidden, added = cond.hidden, cond.added
        if "unet" not in models:  # frozen UNet, maybe in the mixed-precision dtype: feed it its own dtype
            dtype = frozen.unet.dtype
            noisy, hidden = noisy.to(dtype), hidden.to(dtype)
            added = None if added is None else {k: v.to(dtype) for k, v in added.items()}
        return unet(noisy, timesteps, hidden, added_cond_kwargs=added, return_dict=False)[0]

    predict = predict or unet_prediction

    def draw_timestep(generator):
        if t_weights is None:
            return torch.randint(0, steps, (1,), generator=generator)
        return torch.multinomial(t_weights, 1, replacement=True, generator=generator)

    def group_loss(batch, models, generators):
        """Per-sample losses of samples of one size."""
        extra, image_generators = None, generators
        with torch.no_grad():
            if condition is not None:
                states = [g.get_state() for g in generators]
                extra = condition(batch, generators)
                image_generators = [torch.Generator().set_state(state) for state in states]
            if "latent_dist" in batch:
                dist, crops = batch["latent_dist"], batch["crop"]
            else:
                pixels, crops = to_pixels(batch["pixels"], batch["target_size"], batch["crop"], recipe.random_flip,
                                          image_generators, device)  # fmt: skip
                dist = vae.encode(pixels.to(vae.dtype)).latent_dist.parameters
            latents = torch.cat([sample_latents(d[None].float().cpu(), g) for d, g in zip(dist, generators, strict=True)])
            latents = ((latents - shift) * scaling).to(device)
        shape = latents.shape[1:]
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        if recipe.noise_offset:
            offsets = torch.stack([torch.randn((shape[0], 1, 1), generator=g) for g in generators])
            noise = noise + recipe.noise_offset * offsets
        noise = noise.to(device)
        timesteps = torch.cat([draw_timestep(g) for g in generators]).to(device)
        hidden, pooled = text.encode(batch["caption"], models, generators, device)
        added = None
        if text.sdxl:  # micro-conditioning: (original h, w, crop top, left, target h, w), as diffusers' SDXL examples
            time_ids = torch.cat([batch["original_size"], torch.as_tensor(crops), batch["target_size"]], dim=1)
            added = {"text_embeds": pooled, "time_ids": time_ids.to(device=device, dtype=hidden.dtype)}
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        pred = predict(models, noisy, timesteps, Conditioning(hidden, added), extra)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if recipe.snr_gamma is not None:
            snr = compute_snr(noise_scheduler, timesteps)
            weights = torch.clamp(snr, max=recipe.snr_gamma)
            per_sample = per_sample * (weights / snr if prediction_type == "epsilon" else weights / (snr + 1))
        return per_sample

    def loss_fn(batch, models, generator):
        prior = batch.get("prior")
        roles = [0] * len(batch["caption"]) if prior is None else [int(p) for p in prior]
        generators = sample_generators(generator, roles)
        order, parts = [], []
        for members in size_groups(batch):
            order += members
            parts.append(group_loss(select(batch, members), models, [generators[i] for i in members]))
        per_sample = torch.cat(parts)[torch.argsort(torch.tensor(order)).to(parts[0].device)]
        if prior is None or not bool(prior.any()):
            return per_sample.mean()
        prior = prior.to(per_sample.device)
        return per_sample[~prior].mean() + prior_loss_weight * per_sample[prior].mean()

    return loss_fn


def size_groups(batch) -> list[list[int]]:
    """Indices of the batch's samples by trained size (one UNet call each), in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, size in enumerate(batch["target_size"].tolist()):
        groups.setdefault(tuple(size), []).append(i)
    return list(groups.values())


def select(batch, members: list[int]):
    """The sub-batch of `members`: tensors indexed, lists picked."""
    import torch

    index = torch.tensor(members)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value[index]
        elif isinstance(value, list):
            out[key] = [value[i] for i in members]
        else:
            out[key] = value
    if isinstance(out.get("pixels"), list) and all(p.shape == out["pixels"][0].shape for p in out["pixels"]):
        out["pixels"] = torch.stack(out["pixels"])
    return out


def timestep_weights(steps: int, bias: str, multiplier: float, portion: float):
    """Relative sampling weight of each training timestep, as diffusers' train_text_to_image_sdxl example builds them
    (generate_timestep_weights): the first ("earlier": low noise) or last ("later": high noise) `portion` of the
    timesteps weigh `multiplier`, the rest 1."""
    import torch

    weights = torch.ones(steps)
    biased = max(1, int(steps * portion))
    if bias == "earlier":
        weights[:biased] *= multiplier
    elif bias == "later":
        weights[-biased:] *= multiplier
    else:
        raise ValueError(f"unknown timestep bias {bias!r}")
    return weights
