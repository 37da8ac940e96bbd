"""The denoising loss every diffusion trainer shares (text-to-image, LoRA, DreamBooth, textual inversion, ControlNet)."""

from __future__ import annotations


def denoising_loss(recipe, frozen, noise_scheduler, resolution: int, device, *, empty_ids=None, caption_dropout: float = 0.0,
                   prior_loss_weight: float = 1.0, condition=None, predict=None):  # fmt: skip
    """loss_fn(batch, models, generator) for the core, as diffusers' training examples compute it: noise from the
    step's generator (plus `noise_offset`), random timesteps (uniform, or biased: `timestep_weights`), caption
    dropout, epsilon or v-prediction target, min-SNR weighting.

    `models` holds what trains ("unet" and/or "text_encoder", or a "controlnet"); `frozen` (a pipeline, or anything
    with .vae, .text_encoder and .unet) stands in for the rest. A batch's `prior` mask marks class images
    (DreamBooth): loss = mean(instance) + prior_loss_weight × mean(class).

    Conditioned models (ControlNet) add two hooks: `condition(batch, generator)` prepares the extra input first (the
    image then gets the same crop and flip: it is cropped with a copy of the generator state from before the
    condition), and `predict(models, noisy, timesteps, hidden, extra)` replaces the UNet call."""
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr
    from diffusers.utils.torch_utils import randn_tensor

    from sdkit.training.data import sample_latents, to_pixels

    vae = frozen.vae
    scaling, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0
    prediction_type = noise_scheduler.config.prediction_type
    steps = noise_scheduler.config.num_train_timesteps
    t_weights = None if recipe.timestep_bias == "none" else timestep_weights(
        steps, recipe.timestep_bias, recipe.timestep_bias_multiplier, recipe.timestep_bias_portion)  # fmt: skip

    def unet_prediction(models, noisy, timesteps, hidden, extra):
        unet = models.get("unet", frozen.unet)
        if "unet" not in models:  # frozen UNet, maybe in the mixed-precision dtype: feed it its own dtype
            noisy, hidden = noisy.to(frozen.unet.dtype), hidden.to(frozen.unet.dtype)
        return unet(noisy, timesteps, hidden, return_dict=False)[0]

    predict = predict or unet_prediction

    def loss_fn(batch, models, generator):
        extra, image_generator = None, generator
        with torch.no_grad():
            if condition is not None:
                before = generator.get_state()
                extra = condition(batch, generator)
                image_generator = torch.Generator().set_state(before)
            if "latent_dist" in batch:
                latents = sample_latents(batch["latent_dist"], generator)
            else:
                pixels = to_pixels(batch["pixels"], resolution, recipe.center_crop, recipe.random_flip, image_generator, device)
                latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample(generator=generator)
            latents = ((latents.float() - shift) * scaling).to(device)
        bsz = latents.shape[0]
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        if recipe.noise_offset:
            noise += recipe.noise_offset * randn_tensor((bsz, latents.shape[1], 1, 1), generator=generator, device=device)
        if t_weights is None:
            timesteps = torch.randint(0, steps, (bsz,), generator=generator).to(device)
        else:
            timesteps = torch.multinomial(t_weights, bsz, replacement=True, generator=generator).to(device)
        input_ids = batch["input_ids"].clone()
        if caption_dropout:
            drop = (torch.rand(bsz, generator=generator) < caption_dropout).to(input_ids.device)
            input_ids[drop] = empty_ids.to(input_ids.device)
        text_encoder = models.get("text_encoder", frozen.text_encoder)
        hidden = text_encoder(input_ids.to(device), return_dict=False)[0]
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        pred = predict(models, noisy, timesteps, hidden, extra)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if recipe.snr_gamma is not None:
            snr = compute_snr(noise_scheduler, timesteps)
            weights = torch.clamp(snr, max=recipe.snr_gamma)
            per_sample = per_sample * (weights / snr if prediction_type == "epsilon" else weights / (snr + 1))
        prior = batch.get("prior")
        if prior is None or not bool(prior.any()):
            return per_sample.mean()
        prior = prior.to(per_sample.device)
        return per_sample[~prior].mean() + prior_loss_weight * per_sample[prior].mean()

    return loss_fn


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
