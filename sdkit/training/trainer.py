"""The life of every sdkit trainer, so that each trainer file holds only what makes its technique different.

A trainer declares its result files, the cheap checks of its inputs, how it loads the model (by default the
Stable Diffusion pipeline named by `recipe.model`), what trains and on what (`prepare` returns the loop's
`TrainingSpec`), and how it writes its result. `train(trainer)` owns the rest, in this order:

1. start or finish: `--resume latest` of a run whose result is saved returns it without loading anything; a fresh
   start into a folder that holds a run or a result is refused; a resume checkpoint is verified; `check()`.
2. the session: torch threads, accelerate (mixed precision, seedable data order), the global seed.
3. load (fp32 on the CPU; SD 1.x/2.x or SDXL), the image resolution, the mixed-precision dtype of the frozen modules.
4. `prepare`: freezing, adapters, data (decoded here: a broken image stops the run before anything is written;
   squares or aspect-ratio buckets, `Session.pictures`), the text conditioning of the model's family
   (`Session.text`), the loss and the validation grid.
5. train (`sdkit.training.loop`); the resolved recipe is written as OUT/recipe.yaml once a resumed state has loaded.
6. save, on the main process only, staged and moved into place (`results.save_result`: a full disk keeps the last
   checkpoint and says so).
7. one `TrainResult`: the result files, the trained pipeline in memory, steps and seconds.

Frozen modules run in the mixed-precision dtype as cast copies (`Session.frozen`): a module that is saved afterwards
(a full fine-tune's VAE and text encoder) is never rounded. What differs between SD 1.x/2.x and SDXL (one text
encoder or two, the pooled embedding and micro-conditioning, the pipeline class) lives in `Session` and
`sdkit.training.text`, not in the trainers. A trainer is one file plus one line in `sdkit.tasks.registry`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.training.loop import TrainingSpec


@dataclass
class TrainResult:
    """What a training run produced: `files` are its results (in the order `outputs` names them); `pipeline` the
    trained pipeline in memory (None when the run had finished already and nothing was trained)."""

    output_dir: Path
    files: list[Path]
    pipeline: Any = None
    steps: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def print_files(self) -> None:
        """Print the result files on stdout, one per line, once (by the main process of a distributed run)."""
        from accelerate import PartialState

        if PartialState().is_main_process:
            for path in self.files:
                print(path)


@dataclass
class Session:
    """One run's shared state, handed to the trainer's `prepare` and `save`."""

    recipe: Any
    accelerator: Any
    pipe: Any = None
    resolution: int = 0
    spec: TrainingSpec | None = None

    @property
    def device(self):
        return self.accelerator.device

    @property
    def dtype(self):
        """The dtype frozen modules run in: the mixed-precision dtype (fp16/bf16), else fp32."""
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)

    @property
    def out(self) -> Path:
        return Path(self.recipe.output_dir)

    @property
    def sdxl(self) -> bool:
        from sdkit.training.text import is_sdxl

        return is_sdxl(self.pipe)

    @property
    def text_encoders(self) -> list[str]:
        """The pipeline's text encoders: text_encoder, and for SDXL text_encoder_2."""
        return ["text_encoder", "text_encoder_2"] if self.sdxl else ["text_encoder"]

    def stand_ins(self, live: Sequence[str] = (), *, saved: bool = False):
        """A namespace of the vae, unet and text encoders the loss and validation run: those named in `live` as the
        pipeline holds them (they train, or carry adapters), the rest as `frozen` modules."""
        from types import SimpleNamespace

        names = ["vae", "unet", *self.text_encoders]
        return SimpleNamespace(**{n: getattr(self.pipe, n) if n in live else self.frozen(n, saved=saved) for n in names})

    def pictures(self, paths: Sequence[Path]):
        """The training images decoded (`sdkit.training.pictures`): squares of `resolution`, or aspect-ratio buckets
        within resolution² px when `recipe.buckets` says so (None: when any image is not square)."""
        from sdkit.training.buckets import step_for
        from sdkit.training.pictures import load_pictures

        recipe, step = self.recipe, None
        if uses_buckets(getattr(recipe, "buckets", False), paths):
            step = getattr(recipe, "bucket_step", None) or step_for(self.pipe, resolution_of(None, self.pipe))
        return load_pictures(paths, self.resolution, recipe.center_crop, step)

    def batches(self, pictures, item_images: Sequence[int] | None = None):
        """The batch sampler of bucketed pictures (every batch from one bucket; `item_images`: each dataset item's
        image), or None for squares."""
        from sdkit.training.buckets import BucketBatches

        if not pictures.bucket_step:
            return None
        buckets = pictures.buckets
        order = range(len(buckets)) if item_images is None else item_images
        sampler = BucketBatches([buckets[i] for i in order], self.recipe.train_batch_size, self.recipe.seed)
        if self.accelerator.is_main_process:
            print(f"aspect-ratio buckets (sides in steps of {pictures.bucket_step} px): {sampler.describe()}", file=sys.stderr)
        return sampler

    def text(self, frozen, *, caption_dropout: float = 0.0, captions: Sequence[str] = ()):
        """The text conditioning of this pipeline's family (`sdkit.training.text`), with the recipe's kohya caption
        options; with `cache_text_embeddings`, `captions` are encoded once here."""
        from sdkit.training.text import TextConditioning

        recipe = self.recipe
        text = TextConditioning(self.pipe, frozen, caption_dropout=caption_dropout,
                                shuffle=getattr(recipe, "shuffle_caption", False), keep_tokens=getattr(recipe, "keep_tokens", 0))  # fmt: skip
        if getattr(recipe, "cache_text_embeddings", False):
            text.cache(captions)
        return text

    def frozen(self, name: str, *, saved: bool = False):
        """The pipeline's module `name` for a frozen role, on the device in `dtype`: the module itself when its dtype
        already matches, else a cast COPY; the original is never cast in place. With `saved`, the pipeline keeps the
        fp32 original (it is written at the end, unrounded); otherwise the copy takes its place in the pipeline, so
        the fp32 original is freed and validation runs what the loss runs."""
        module = getattr(self.pipe, name)
        module.requires_grad_(False)
        if next(module.parameters()).dtype == self.dtype:
            return module.to(self.device)
        twin = cast_copy(module, self.device, self.dtype)
        if not saved:
            setattr(self.pipe, name, twin)
        return twin


class Trainer:
    """A training technique. Subclasses set `task`-specific parts; see the module docstring for the order."""

    companions: Sequence[str] = ()  # result entries saved with `outputs()` but not reported (e.g. control.json)

    def __init__(self, recipe: Any):
        self.recipe = recipe

    # declared by every trainer
    def outputs(self) -> list[str]:
        """The result entries (files or folders) in OUT, in the order they are reported."""
        raise NotImplementedError

    def prepare(self, s: Session) -> TrainingSpec:
        """What trains, on what data, with which loss and validation."""
        raise NotImplementedError

    def save(self, s: Session, stage: Path) -> None:
        """Write `outputs()` (and `companions`) into the staging folder `stage`."""
        raise NotImplementedError

    # defaults a trainer may override
    def check(self) -> None:
        """Cheap checks of the inputs before anything is loaded (dataset rows, image folders)."""

    def load(self, s: Session):
        """The pipeline to train: `recipe.model` as an SD 1.x/2.x or SDXL pipeline, fp32 on the CPU."""
        return load_sd_pipeline(self.recipe)

    def saved_bytes(self, s: Session) -> int:
        """About how many bytes the result needs on disk (named when the disk is full)."""
        from sdkit.training.results import tensor_bytes

        return tensor_bytes(*s.spec.modules.values())

    def info(self, s: Session) -> dict[str, Any]:
        """Extra facts for the `TrainResult`."""
        return {}


def train(trainer: Trainer) -> TrainResult:
    """Run `trainer` through the lifecycle in the module docstring."""
    from accelerate.utils import set_seed

    from sdkit.training import checkpoints as ckpt
    from sdkit.training.loop import accelerator_session, run_training, torch_threads
    from sdkit.training.results import finished, save_result

    recipe = trainer.recipe
    out = Path(recipe.output_dir)
    files = [out / name for name in trainer.outputs()]

    # 1. start or finish: nothing is loaded or written yet
    if recipe.resume == "latest" and finished(out, [*files, *(out / c for c in trainer.companions)], recipe.max_steps):
        print(f"{out} already finished {recipe.max_steps} steps: nothing to do", file=sys.stderr)
        return TrainResult(out, files)
    ckpt.resolve_resume(out, recipe.resume, [*files, *(out / c for c in trainer.companions)])
    trainer.check()

    # 2. the session
    with torch_threads(recipe.threads), accelerator_session(recipe) as accelerator:
        set_seed(recipe.seed)
        s = Session(recipe, accelerator)

        # 3. load
        s.pipe = trainer.load(s)
        s.resolution = resolution_of(recipe, s.pipe)

        # 4. what trains, on what
        s.spec = trainer.prepare(s)

        # 5. train; OUT/recipe.yaml once a resumed state has loaded
        result = run_training(accelerator, recipe, s.spec, on_ready=lambda: write_recipe(recipe, out / "recipe.yaml"))

        # 6. save (main process), staged
        if accelerator.is_main_process:
            save_result(out, [*trainer.outputs(), *trainer.companions], lambda stage: trainer.save(s, stage),
                        trainer.saved_bytes(s))  # fmt: skip
            for path in files:
                print(f"saved: {path}", file=sys.stderr)
        accelerator.wait_for_everyone()
    for module in s.spec.modules.values():
        module.eval()

    # 7. the result
    return TrainResult(out, files, s.pipe, result.global_step, result.seconds, trainer.info(s))


def load_sd_pipeline(recipe, model=None, *, sdxl: bool = True):
    """The StableDiffusionPipeline or (with `sdxl`) StableDiffusionXLPipeline named by `recipe.model` (or the resolved
    `model`), fp32 on the CPU."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from sdkit.models import load_pipeline, resolve_model

    pipe = load_pipeline(model or resolve_model(recipe.model, hash_local=False), torch_dtype=torch.float32)
    classes = (StableDiffusionPipeline, StableDiffusionXLPipeline) if sdxl else (StableDiffusionPipeline,)
    if not isinstance(pipe, classes):
        families = "SD 1.x/2.x and SDXL pipelines" if sdxl else "SD 1.x/2.x pipelines (StableDiffusionPipeline) only"
        raise UserError(f"{recipe.model} is a {type(pipe).__name__}: {recipe.task} supports {families}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resolution_of(recipe, pipe) -> int:
    """`recipe.resolution`, or the model's own: the UNet's sample size times the VAE's downsampling factor."""
    native = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return getattr(recipe, "resolution", None) or native


def uses_buckets(setting: bool | None, paths: Sequence[Path]) -> bool:
    """Aspect-ratio buckets: as set, or (None) when any of the images is not square (their headers are read)."""
    if setting is not None:
        return setting
    from PIL import Image

    for path in paths:
        with Image.open(path) as image:
            if image.width != image.height:
                return True
    return False


def place(module, device, dtype) -> None:
    """Move a module, then cast its floating-point weights with nn.Module's own casts (diffusers' `to` warns about a
    dtype argument); nothing happens when it already has `dtype`."""
    import torch

    module.to(device)
    if next(module.parameters()).dtype != dtype:
        {torch.float16: module.half, torch.bfloat16: module.bfloat16, torch.float32: module.float}[dtype]()


def cast_copy(module, device, dtype):
    """A copy of `module` whose floating-point parameters and buffers are `dtype` on `device`; the original is left as
    it is. The tensors are cast while copying (deepcopy's memo), so memory peaks at the original plus the cast copy,
    never two full-precision copies; tied weights stay tied."""
    import copy

    import torch

    memo: dict[int, Any] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point() and id(tensor) not in memo:
            cast = tensor.detach().to(device=device, dtype=dtype)
            memo[id(tensor)] = torch.nn.Parameter(cast, requires_grad=False) if isinstance(tensor, torch.nn.Parameter) else cast
    return copy.deepcopy(module, memo).to(device)


def write_recipe(recipe, path: Path) -> None:
    """OUT/recipe.yaml: the resolved recipe, written atomically."""
    import yaml

    from sdkit.atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


@dataclass
class GridRow:
    """One row of a validation grid: a prompt, extra pipeline arguments, and cells shown before its images."""

    prompt: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    lead: list[tuple[str, Any]] = field(default_factory=list)


def prompt_grid(s: Session, make_pipeline: Callable[[], Any], rows: Sequence[GridRow]):
    """step -> grid rows: each row's prompt at seeds seed, seed + 1, … (`validation_images` of them), or None when
    there is nothing to show. `make_pipeline()` builds the inference pipeline over the training modules."""
    import torch

    recipe = s.recipe
    if not rows:
        return None

    def validate(step: int):
        pipe = make_pipeline()
        pipe.set_progress_bar_config(disable=True)
        grid = []
        for row in rows:
            generators = [torch.Generator().manual_seed(recipe.seed + i) for i in range(recipe.validation_images)]
            with torch.no_grad(), s.accelerator.autocast():
                images = pipe(
                    row.prompt, num_inference_steps=recipe.validation_inference_steps,
                    guidance_scale=recipe.validation_guidance_scale, num_images_per_prompt=recipe.validation_images,
                    generator=generators, **row.kwargs,
                ).images  # fmt: skip
            grid.append([*row.lead, *((f"{row.prompt} (seed {recipe.seed + i})", im) for i, im in enumerate(images))])
        return grid

    return validate


def sd_pipeline(pipe, scheduler=None, **modules):
    """A StableDiffusionPipeline (or, for SDXL, StableDiffusionXLPipeline) over the pipeline's modules (or the given
    ones), with `scheduler` or a fresh copy of the pipeline's own sampler: the pipeline validation grids draw with and
    the one a full fine-tune saves."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from sdkit.training.text import is_sdxl

    names = ["vae", "text_encoder", "tokenizer", "unet"]
    scheduler = scheduler or type(pipe.scheduler).from_config(pipe.scheduler.config)
    if is_sdxl(pipe):
        parts = {name: modules.get(name, getattr(pipe, name)) for name in [*names, "text_encoder_2", "tokenizer_2"]}
        return StableDiffusionXLPipeline(**parts, scheduler=scheduler, add_watermarker=False,
                                         force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)  # fmt: skip
    parts = {name: modules.get(name, getattr(pipe, name)) for name in names}
    return StableDiffusionPipeline(**parts, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
