"""AUTOMATIC1111's txt2img / img2img requests and responses, as its API documents them (modules/api/models.py: the
fields of StableDiffusionProcessingTxt2Img / Img2Img, every one optional, with A1111's defaults), turned into an
sdkit generate recipe.

Unknown keys are ignored, as A1111's pydantic models ignore them. A known field that sdkit cannot honour (hires fix,
face restoration, tiling, styles, variation seeds, scripts other than ControlNet, ...) is an error naming it, unless
it holds the value that means "off"; it is never silently dropped. What generate has, a request maps onto: the sampler
and schedule type (`sdkit.schedulers`), clip skip and the VAE (options or override_settings), an SDXL refiner.
`<lora:name:weight>` tags in the prompt (read by `sdkit.prompt_names`) pick LoRAs from the library by name, never by
path; library embeddings are used where their name appears in a prompt, as A1111 does (generate finds them).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdkit.errors import UserError
from sdkit.server import catalog
from sdkit.server.a1111_units import FieldError, units
from sdkit.server.config import ServerConfig

A1111_SEEDS = 4294967294  # A1111 draws a random seed below this


class Processing(BaseModel):
    """The fields both requests share (A1111's StableDiffusionProcessing), with A1111's defaults."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    sampler_index: str | None = "Euler"
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = None


class Txt2Img(Processing):
    denoising_strength: float | None = 0.75
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""


class Img2Img(Processing):
    init_images: list[Any] | None = None
    resize_mode: int | None = 0
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = Field(False, exclude=True)


# field -> the values that mean "off" (sdkit honours the field only then)
OFF: dict[str, tuple[Any, ...]] = {
    "styles": (None, []), "subseed_strength": (None, 0), "seed_resize_from_h": (None, -1, 0),
    "seed_resize_from_w": (None, -1, 0), "restore_faces": (None, False), "tiling": (None, False),
    "s_min_uncond": (None, 0), "s_churn": (None, 0), "s_tmax": (None, 0), "s_tmin": (None, 0), "s_noise": (None, 1),
    "firstpass_image": (None, ""), "enable_hr": (None, False),
    "image_cfg_scale": (None,), "initial_noise_multiplier": (None, 1), "latent_mask": (None, ""),
    "resize_mode": (None, 0), "inpaint_full_res": (False,),
}  # fmt: skip
FIXES = {
    "enable_hr": "sdkit has no hires fix: generate at the final size", "restore_faces": "sdkit has no face restoration",
    "inpaint_full_res": "sdkit inpaints the whole picture: send inpaint_full_res: false",
    "resize_mode": "sdkit stretches the init image to the size (resize_mode 0, Just resize)",
}  # fmt: skip
NO_REFINER = (None, "", "None", "none")


@dataclass
class Context:
    """What a request is read against: the settings, the current options, and where uploads go."""

    config: ServerConfig
    options: dict[str, Any]

    @property
    def models_dir(self) -> Path | None:
        return self.config.models_dir

    def store_image(self, image, mode: str) -> Path:
        from sdkit.images import to_mode
        from sdkit.server.uploads import store

        return store(to_mode(image, mode), self.config.state)


def at(loc: tuple, fn, *args, **kwargs):
    """Run a check, reporting its UserError as a FieldError at `loc`."""
    try:
        return fn(*args, **kwargs)
    except FieldError:
        raise
    except UserError as err:
        raise FieldError(loc, str(err)) from None


def checkpoint(name: str | None, ctx: Context, loc: tuple) -> catalog.Entry:
    return at(loc, catalog.find, "checkpoints", name or ctx.options["sd_model_checkpoint"], ctx.models_dir)


def sampler(name: str | None, schedule: str | None) -> tuple[str, str]:
    """sdkit's (scheduler, schedule_type) for A1111's sampler_name + scheduler (`sdkit.schedulers`, which knows A1111's
    samplers and schedule types, and says why one cannot run)."""
    from sdkit import schedulers

    label = at(("scheduler",), schedulers.schedule_label, schedule)
    at(("sampler_name",), schedulers.resolve, name or "Euler")
    choice = at(("scheduler",), schedulers.resolve, name or "Euler", label)
    return choice.name, choice.schedule


def check_off(req: Processing) -> None:
    sent = req.model_fields_set
    for name, allowed in OFF.items():
        if name in type(req).model_fields and getattr(req, name) not in allowed:
            if name == "inpaint_full_res" and not getattr(req, "mask", None):
                continue  # only matters when inpainting
            raise FieldError((name,), f"{getattr(req, name)!r} is not supported: {FIXES.get(name, 'send ' + repr(allowed[-1]))}")
    if req.script_name:
        raise FieldError(("script_name",), f"Script '{req.script_name}' not found")
    for script in req.alwayson_scripts or {}:
        if script.lower() != "controlnet":
            raise FieldError(("alwayson_scripts", script), f"always on script {script} not found")
    if "eta" in sent and req.eta is not None:
        check_eta(req)


def check_eta(req: Processing) -> None:
    """eta changes only ancestral samplers (A1111 default 1) and DDIM (default 0); others ignore it, as in A1111."""
    name = (req.sampler_name or req.sampler_index or "Euler").lower()
    default = 1.0 if name.endswith(" a") or "ancestral" in name else 0.0 if "ddim" in name else None
    if default is not None and req.eta != default:
        raise FieldError(("eta",), f"sdkit runs {name} with eta {default:g}: send {default:g} or leave eta out")


def prompt_loras(prompt: str, models_dir: Path | None, loc: tuple = ("prompt",), use: bool = True) -> tuple[str, list[dict]]:
    """The prompt without its `<lora:...>` tags, and the tags' LoRAs: library names only (a path in a tag is not
    looked at); with `use` False (A1111's disable_extra_networks) the tags are dropped unused."""
    from sdkit.prompt_names import split_lora_tags

    text, tags = at(loc, split_lora_tags, prompt)
    loras = []
    for tag in tags if use else []:
        lora = {"path": str(at(loc, catalog.find, "loras", tag.name, models_dir).path), "weight": tag.weight}
        loras.append({**lora, "unet_weight": tag.unet} if tag.unet is not None else lora)
    return text, loras


def settings(req: Processing, ctx: Context, model: catalog.Entry, kind: str, units_on: bool
             ) -> tuple[dict[str, Any], catalog.Entry | None]:  # fmt: skip
    """Recipe fields from the options in force (override_settings over the stored options): clip skip and the VAE
    (with its entry); and the refiner of an SDXL model."""
    values = {**ctx.options, **check_overrides(dict(req.override_settings or {}), ctx)}
    fields: dict[str, Any] = {"clip_skip": int(values.get("CLIP_stop_at_last_layers") or 1)}
    vae = None
    if values.get("sd_vae") not in (None, "Automatic", "None"):
        vae = at(("override_settings", "sd_vae"), catalog.find, "vae", values["sd_vae"], ctx.models_dir)
        fields["vae"] = vae.ref
    if req.refiner_checkpoint not in NO_REFINER:
        refiner = at(("refiner_checkpoint",), catalog.find, "checkpoints", req.refiner_checkpoint, ctx.models_dir)
        family = model_family(model)
        if "XL" not in family or "XL" not in model_family(refiner):
            raise FieldError(("refiner_checkpoint",), f"sdkit's refiner hands an SDXL model's latents to an SDXL refiner; "
                             f"{model.name} is {family}, {refiner.name} is {model_family(refiner)}: leave the refiner out")  # fmt: skip
        if kind != "txt2img" or units_on:
            raise FieldError(("refiner_checkpoint",), "sdkit's refiner works with txt2img without ControlNet: leave it out")
        switch = 0.8 if req.refiner_switch_at is None else req.refiner_switch_at
        if not 0 < switch < 1:
            raise FieldError(("refiner_switch_at",), f"give a share of the steps in (0, 1) (got {switch})")
        fields.update(refiner=refiner.ref, refiner_switch=switch)
    return fields, vae


def model_family(entry: catalog.Entry) -> str:
    """The family title of a checkpoint ("SDXL base", "SD 1.x", ...), read from its files (`sdkit.model_info`)."""
    from sdkit.library import Entry
    from sdkit.model_info import checkpoint_family

    return checkpoint_family(Entry("checkpoints", entry.path, entry.filename))


def apply_infotext(req: Processing) -> None:
    """A1111's `infotext` field: its values fill the fields the request did not set."""
    if not req.infotext:
        return
    from sdkit.infotext import parse

    read = at(("infotext",), parse, req.infotext)
    params, sent = {"Prompt": read.prompt, "Negative prompt": read.negative, **read.fields}, req.model_fields_set
    mapping = {"prompt": ("Prompt", str), "negative_prompt": ("Negative prompt", str), "steps": ("Steps", int),
               "sampler_name": ("Sampler", str), "scheduler": ("Schedule type", str), "cfg_scale": ("CFG scale", float),
               "seed": ("Seed", int), "width": ("Size-1", int), "height": ("Size-2", int),
               "denoising_strength": ("Denoising strength", float)}  # fmt: skip
    for name, (key, cast) in mapping.items():
        if name not in sent and key in params and params[key] != "":
            setattr(req, name, at(("infotext",), lambda v=params[key], c=cast: c(v)))


def generate_fields(req: Processing, kind: str, ctx: Context) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sdkit generate recipe fields of a request, and what the response needs besides the job's result."""
    apply_infotext(req)
    check_off(req)
    overrides = dict(req.override_settings or {})
    model = checkpoint(overrides.get("sd_model_checkpoint"), ctx, ("override_settings", "sd_model_checkpoint"))
    images = (req.batch_size or 1) * (req.n_iter or 1)
    if images < 1 or images > ctx.config.max_images:
        raise FieldError(("batch_size",), f"batch_size x n_iter is {images}: give 1..{ctx.config.max_images} images")
    prompt, loras = prompt_loras(req.prompt or "", ctx.models_dir, use=not req.disable_extra_networks)
    scheduler, schedule_type = sampler(req.sampler_name or req.sampler_index, req.scheduler)
    seed = req.seed if req.seed is not None and req.seed >= 0 else secrets.randbelow(A1111_SEEDS)
    fields: dict[str, Any] = {
        "prompt": prompt, "negative": req.negative_prompt or "", "model": model.ref, "scheduler": scheduler,
        "schedule_type": schedule_type, "steps": req.steps, "cfg": req.cfg_scale, "width": req.width,
        "height": req.height, "seed": seed, "num_images": images, "lora": loras, "dtype": ctx.config.dtype,
        "out": str(ctx.config.output_dir / f"{kind}-images" if req.save_images else ctx.config.state / "unsaved"),
        **({"models_dir": [str(ctx.models_dir)]} if ctx.models_dir is not None else {}),  # embeddings named in prompts
    }  # fmt: skip
    init = None
    if isinstance(req, Img2Img):
        init = img2img_inputs(req, ctx, fields)
    unit_list = units((req.alwayson_scripts or {}).get("controlnet", {}).get("args", []),
                      ctx, (req.width or 0, req.height or 0), init) if "controlnet" in {k.lower() for k in req.alwayson_scripts or {}} else []  # fmt: skip
    fields["control"] = [u.control for u in unit_list]
    chosen, vae = settings(req, ctx, model, kind, bool(unit_list))
    fields.update(chosen)
    subseed = req.subseed if req.subseed is not None and req.subseed >= 0 else secrets.randbelow(A1111_SEEDS)
    extras = {"request": req.model_dump(), "send_images": req.send_images is not False, "save_images": bool(req.save_images),
              "detected_maps": [u.save_detected_map for u in unit_list], "model": model.name, "model_hash": model.short_hash,
              "vae": vae.filename if vae else None, "vae_hash": vae.short_hash if vae else None,
              "sampler": req.sampler_name or req.sampler_index or "Euler", "subseed": subseed, "kind": kind,
              "include_init_images": bool(getattr(req, "include_init_images", False))}  # fmt: skip
    if req.override_settings_restore_afterwards is False and overrides:
        extras["keep_options"] = {**check_overrides(overrides, ctx), **(
            {"sd_model_checkpoint": model.name} if "sd_model_checkpoint" in overrides else {})}  # A1111 keeps them
    return fields, extras


def check_overrides(overrides: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """override_settings as the options take them (each checked, the checkpoint as its library name)."""
    from sdkit.server.options import check_option

    return {key: at(("override_settings", key), check_option, key, value, ctx.models_dir) for key, value in overrides.items()}


def img2img_inputs(req: Img2Img, ctx: Context, fields: dict[str, Any]) -> Path:
    """init_images[0] and the mask (as A1111 reads it: alpha if transparent, else grey; inverted and blurred as asked)."""
    from PIL import ImageFilter, ImageOps

    from sdkit.server.uploads import decode_base64, open_image

    if not req.init_images:
        raise FieldError(("init_images",), "Init image not found: give one base64 image")
    if len(req.init_images) > 1:
        raise FieldError(("init_images",), "sdkit takes one init image per request")
    init_picture = at(("init_images", 0), lambda: open_image(decode_base64(req.init_images[0], "init_images.0"), "init_images.0"))
    fields["init_image"] = str(ctx.store_image(init_picture, "RGB"))
    if not 0 < (req.denoising_strength or 0) <= 1:
        raise FieldError(("denoising_strength",), f"give a strength in (0, 1] (got {req.denoising_strength})")
    fields["strength"] = req.denoising_strength
    if req.mask:
        if req.inpainting_fill not in (1, 2) or (req.inpainting_fill == 2 and req.denoising_strength != 1):
            raise FieldError(("inpainting_fill",), "sdkit starts from the original pixels (inpainting_fill 1), or from "
                                                   "noise at denoising_strength 1 (inpainting_fill 2)")  # fmt: skip
        mask = at(("mask",), lambda: open_image(decode_base64(req.mask, "mask"), "mask"))
        if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
            mask = mask.split()[-1].point(lambda v: 255 if v > 128 else 0)
        mask = mask.convert("L")
        if req.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        blur = req.mask_blur if req.mask_blur is not None else max(req.mask_blur_x or 0, req.mask_blur_y or 0)
        if blur:
            mask = mask.filter(ImageFilter.GaussianBlur(blur))
        if mask.size != init_picture.size:
            raise FieldError(("mask",), f"the mask is {mask.size[0]}x{mask.size[1]}, the init image "
                                        f"{init_picture.size[0]}x{init_picture.size[1]}: send them the same size")  # fmt: skip
        fields["mask"] = str(ctx.store_image(mask, "L"))
    return Path(fields["init_image"])


def info(fields: dict[str, Any], extras: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The `info` object of the response (A1111's Processed.js()), for the images made."""
    from sdkit.version import __version__

    req, total = extras["request"], fields["num_images"]
    seeds = [(fields["seed"] + k) % 2**32 for k in range(total)]
    prompt = req.get("prompt") or ""
    return {
        "prompt": prompt, "all_prompts": [prompt] * total, "negative_prompt": req.get("negative_prompt") or "",
        "all_negative_prompts": [req.get("negative_prompt") or ""] * total, "seed": seeds[0], "all_seeds": seeds,
        "subseed": extras["subseed"], "all_subseeds": [extras["subseed"] + k for k in range(total)],
        "subseed_strength": 0, "width": fields["width"], "height": fields["height"], "sampler_name": extras["sampler"],
        "cfg_scale": fields["cfg"], "steps": fields["steps"], "batch_size": req.get("batch_size") or 1,
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": extras["model"],
        "sd_model_hash": extras["model_hash"], "sd_vae_name": extras.get("vae"), "sd_vae_hash": extras.get("vae_hash"), "seed_resize_from_w": -1,
        "seed_resize_from_h": -1, "denoising_strength": req.get("denoising_strength"),
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": result.get("infotexts", []),
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": fields.get("clip_skip", 1),
        "is_using_inpainting_conditioning": False, "version": f"sdkit {__version__}",
    }  # fmt: skip
