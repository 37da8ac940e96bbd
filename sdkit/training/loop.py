"""The shared accelerate training loop of every sdkit training task (text-to-image, LoRA, DreamBooth, TI, ControlNet).

A trainer (through the lifecycle in `sdkit.training.trainer`) builds its models and data, then hands the loop a
`TrainingSpec`: the trainable modules, a dataset, and `loss_fn(batch, models, generator) -> loss`. The loop owns
everything else, the way accelerate's examples do:

    with accelerator_session(recipe) as accelerator:    # inside the run, never at module level
        result = run_training(accelerator, recipe, TrainingSpec(modules={"unet": unet}, dataset=ds, loss_fn=loss))

1. AdamW (torch's fused kernel where the parameters allow) + diffusers' `get_scheduler`, a seedable DataLoader
   (`DataLoader(generator=...)` + accelerate's `use_seedable_sampler`: the data order depends on the seed and epoch
   only), `accelerator.prepare`.
2. EMA (diffusers `EMAModel`) and the loop position/loss history, checkpointed as safetensors + JSON (no pickle).
3. Resume: the checkpoint is verified (manifest, tensors only), then `accelerator.load_state` (weights-only loads),
   sdkit's own state and `skip_first_batches` to the exact batch, so a resumed run ends with the same weights as an
   uninterrupted one. Every micro-batch draws its randomness (noise, timesteps, caption dropout, augmentation) from
   its own generator seeded by (seed, micro-batch number, process), never from global state; `for_samples` gives
   each sample a generator of its own, seeded by its place in the global batch, so a run's draws do not depend on
   how the global batch is split between processes or machines.
4. The loop: `accelerator.accumulate`, gradient clipping, checkpoints every N steps (see checkpoints.py), validation
   grids, a progress bar on stderr (loss, lr, it/s, ETA; plain lines when stderr is not a terminal).
5. SIGINT/SIGTERM: the current step finishes, a checkpoint is saved, `TrainingInterrupted` is raised (exit code 130
   for SIGINT, 143 for SIGTERM); a second SIGINT aborts at once. The previous signal handlers are restored.
6. The end: loss.json/loss.csv/loss.png and run.json; the EMA weights are copied into the modules.

Only the main process writes files (accelerate's `save_state` writes each process's RNG state itself).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdkit.errors import SdkitError
from sdkit.grids import labelled_grid
from sdkit.progress import StepBar
from sdkit.training import checkpoints as ckpt
from sdkit.training.checkpoints import StopSignals
from sdkit.training.data import collate
from sdkit.training.plots import write_loss_files
from sdkit.training.randomness import step_generator

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class TrainingInterrupted(SdkitError):
    """The run was stopped by a signal after saving a checkpoint; `exit_code` is 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, signal_name: str, checkpoint: Path):
        super().__init__(message)
        self.exit_code = EXIT_CODES[signal_name]
        self.signal_name, self.checkpoint = signal_name, checkpoint


@dataclass
class TrainingSpec:
    """What a training task hands the loop."""

    modules: dict[str, torch.nn.Module]  # trainable modules; `accelerator.prepare` wraps them for the loss
    dataset: Any  # map-style: __len__ and __getitem__
    loss_fn: Callable[[dict[str, Any], dict[str, torch.nn.Module], torch.Generator], torch.Tensor]
    collate_fn: Callable[[list], Any] = collate
    batch_sampler: Any = None  # batches of indices (aspect-ratio buckets, `sdkit.training.buckets`); None: shuffled
    params: list[torch.nn.Parameter] | None = None  # optimised/clipped/EMA'd; default: every requires_grad param
    validate: Callable[[int], list[list[tuple[str, Any]]]] | None = None  # step -> grid rows of (label, PIL image); main only
    after_step: Callable[[int], None] | None = None  # after every optimiser step (e.g. restore frozen embedding rows)
    checkpoint_objects: Sequence[Any] = ()  # more objects with state_dict()/load_state_dict() to checkpoint
    info: dict[str, Any] = field(default_factory=dict)  # written into each checkpoint's marker


@dataclass
class LoopResult:
    global_step: int
    history: list[dict[str, float]]
    modules: dict[str, torch.nn.Module]  # unwrapped, holding the final (EMA, if used) weights
    seconds: float
    resumed_from: Path | None


class LoopState:
    """Where the loop is (optimiser step, epoch, batch in epoch, micro-batch count) and the loss history."""

    def __init__(self) -> None:
        self.global_step = self.epoch = self.batch = self.micro = 0
        self.history: list[tuple[int, float, float]] = []

    def state_dict(self) -> dict[str, torch.Tensor]:
        history = torch.tensor(self.history, dtype=torch.float64).reshape(-1, 3)
        return {"position": torch.tensor([self.global_step, self.epoch, self.batch, self.micro]), "history": history}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.global_step, self.epoch, self.batch, self.micro = (int(v) for v in state["position"])
        self.history = [(int(s), float(loss), float(lr)) for s, loss, lr in state["history"].tolist()]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use `threads` torch CPU threads inside the block (None: leave it), then restore the previous count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_accelerator(common):
    """An Accelerator for one run: seedable sampler seeded by `common.seed`; CPU when asked or when no GPU exists
    (so `accelerate launch --multi_gpu --num_processes 2` runs MULTI_CPU over gloo on a CPU machine)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    has_gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    try:
        return Accelerator(
            gradient_accumulation_steps=common.gradient_accumulation_steps,
            mixed_precision=common.mixed_precision,
            cpu=common.device == "cpu" or not has_gpu,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=common.seed),
        )
    except ValueError as err:
        from sdkit.errors import UserError

        raise UserError(f"accelerate refused the settings ({err}): change mixed_precision or device") from None


@contextlib.contextmanager
def accelerator_session(common) -> Iterator[Any]:
    """`make_accelerator` for the duration of a run. Afterwards accelerate's process-wide AcceleratorState and
    GradientState (class attributes) are cleared, so the next run in the same process may use other settings (e.g.
    mixed precision). The process group (PartialState) stays: later jobs of the same `sdkit run` use it."""
    from accelerate.state import AcceleratorState, GradientState

    accelerator = make_accelerator(common)
    try:
        yield accelerator
    finally:
        accelerator.wait_for_everyone()
        AcceleratorState._reset_state()
        GradientState._reset_state()


@contextlib.contextmanager
def _ema_weights(ema, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Swap the EMA weights in for the duration of the block (validation)."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def run_training(accelerator, common, task: TrainingSpec, on_ready: Callable[[], None] | None = None) -> LoopResult:
    """Train `task` for `common.max_steps` optimiser steps (resuming per `common.resume`); see the module docstring.

    `on_ready` runs on the main process once a resumed state has loaded, before the first step and before the loop
    writes anything (the lifecycle writes recipe.yaml there: a checkpoint that does not fit leaves no file behind)."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader

    started = time.monotonic()
    output_dir = Path(common.output_dir)
    resume_from = ckpt.resolve_resume(output_dir, common.resume)
    nproc = accelerator.num_processes

    # 1. optimiser, schedule, data loader
    params = task.params or [p for m in task.modules.values() for p in m.parameters() if p.requires_grad]
    if not params:
        raise ValueError("TrainingSpec has no trainable parameters")
    lr = common.learning_rate
    if common.scale_lr:
        lr *= common.train_batch_size * common.gradient_accumulation_steps * nproc
    optimizer_class, fused = torch.optim.AdamW, fused_adamw_ok(params)
    if getattr(common, "use_8bit_adam", False):
        from sdkit.training.speed import adamw_8bit

        optimizer_class, fused = adamw_8bit(), False
    optimizer = optimizer_class(
        params, lr=lr, betas=(common.adam_beta1, common.adam_beta2), weight_decay=common.adam_weight_decay,
        eps=common.adam_epsilon, **({"fused": True} if fused else {}),
    )  # fmt: skip
    lr_scheduler = get_scheduler(
        common.lr_scheduler, optimizer, num_warmup_steps=common.lr_warmup_steps * nproc,
        num_training_steps=common.max_steps * nproc,
    )  # fmt: skip
    if task.batch_sampler is not None:  # batches drawn from one bucket each, in an order fixed by seed and epoch
        loader = DataLoader(task.dataset, batch_sampler=task.batch_sampler, collate_fn=task.collate_fn,
                            num_workers=common.num_workers)  # fmt: skip
    else:
        loader = DataLoader(
            task.dataset, batch_size=common.train_batch_size, shuffle=True, collate_fn=task.collate_fn,
            num_workers=common.num_workers, generator=torch.Generator().manual_seed(common.seed),
        )  # fmt: skip
    if getattr(common, "gradient_checkpointing", False):
        from sdkit.training.speed import enable_gradient_checkpointing

        enable_gradient_checkpointing(task.modules)
    names = list(task.modules)
    *prepared, optimizer, loader, lr_scheduler = accelerator.prepare(*task.modules.values(), optimizer, loader, lr_scheduler)
    models = dict(zip(names, prepared, strict=True))
    for model in models.values():
        model.train()

    # 2. EMA and the loop state, checkpointed with the weights
    ema = EMAModel(params, decay=common.ema_decay, foreach=True) if common.use_ema else None  # foreach: ≈ 1.3× faster
    state = LoopState()
    # saved by checkpoints.py as safetensors + JSON, not via accelerate's register_for_checkpointing (whose pickles
    # accelerate loads with full unpickling: see checkpoint_files.py)
    checkpointed = [state, *([ema] if ema else []), *task.checkpoint_objects]

    # 3. resume; only then does the run write anything
    main = accelerator.is_main_process
    notes = []
    if resume_from is not None:
        ckpt.load_checkpoint(accelerator, resume_from, checkpointed)  # verified by resolve_resume above
        notes.append(f"resumed from {resume_from} (step {state.global_step}, epoch {state.epoch}, batch {state.batch})")
        if ckpt.read_marker(resume_from).get("signature") not in (None, _signature(common, task, nproc)):
            notes.append(f"warning: {resume_from} was saved with other data/batch settings: the data order will differ")
    elif common.resume == "latest":
        notes.append(f"no complete checkpoint in {ckpt.checkpoints_dir(output_dir)}: starting from step 0")
    notes += _unused_launch_plugins(accelerator)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if on_ready is not None:
            on_ready()
    accelerator.wait_for_everyone()
    bar = StepBar("train", common.max_steps, start=state.global_step, fields={"loss": "-", "lr": "-"},
                  log_every=common.log_every, enabled=main)  # fmt: skip
    for note in notes:
        bar.print(note)

    def save(step: int) -> Path:
        info = {**task.info, "signature": _signature(common, task, nproc), "loss": state.history[-1][1] if state.history else None}
        path = ckpt.save_checkpoint(accelerator, output_dir, step, info, common.checkpoints_total_limit, checkpointed)
        bar.print(f"checkpoint saved: {path}")
        return path

    def validate(step: int) -> None:
        if task.validate is not None and main:
            with _ema_weights(ema, params), torch.random.fork_rng(devices=[]):
                for model in models.values():
                    model.eval()
                rows = task.validate(step)
                for model in models.values():
                    model.train()
            path = output_dir / "validation" / f"step-{step}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            items = [item for row in rows for item in row]
            labelled_grid(items, columns=max(len(row) for row in rows), title=f"step {step}").save(path)
            bar.print(f"validation grid: {path}")
        accelerator.wait_for_everyone()

    # 4. the loop
    last_saved = last_validated = -1
    stopped_by: str | None = None
    micro_losses: list[torch.Tensor] = []
    with StopSignals() as stop, contextlib.closing(bar):
        while state.global_step < common.max_steps and stopped_by is None:
            loader.set_epoch(state.epoch)
            epoch_loader = accelerator.skip_first_batches(loader, state.batch) if state.batch else loader
            stop_now = False
            for batch in epoch_loader:
                generator = step_generator(common.seed, state.micro, accelerator.process_index)
                with accelerator.accumulate(*models.values()):
                    loss = task.loss_fn(batch, models, generator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, common.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.micro += 1
                state.batch += 1
                micro_losses.append(loss.detach().float())
                if not accelerator.sync_gradients:
                    continue
                state.global_step += 1
                step = state.global_step
                if ema is not None:
                    ema.step(params)
                if task.after_step is not None:
                    task.after_step(step)
                step_loss = accelerator.reduce(torch.stack(micro_losses).mean(), "mean").item()
                micro_losses.clear()
                state.history.append((step, step_loss, lr_scheduler.get_last_lr()[0]))
                bar.update(step, loss=f"{step_loss:.4f}", lr=f"{state.history[-1][2]:.2e}")
                if not math.isfinite(step_loss):
                    raise SdkitError(f"loss is {step_loss} at step {step}: lower learning_rate or use mixed_precision no")
                stop_now = _any_process(accelerator, stop.received is not None)
                if stop_now:
                    stopped_by = stop.received or "SIGTERM"  # another process was signalled
                    bar.print(f"{stopped_by} received: saving a checkpoint at step {step}, then stopping")
                if stop_now or (common.checkpointing_steps and step % common.checkpointing_steps == 0):
                    save(step)
                    last_saved = step
                if common.validation_steps and step % common.validation_steps == 0 and not stop_now:
                    validate(step)
                    last_validated = step
                if stop_now or step >= common.max_steps:
                    break
            else:
                state.epoch += 1
                state.batch = 0

    # 5. interrupted: the checkpoint is saved; say how to go on
    step = state.global_step
    if stopped_by is not None:
        signal_name = stopped_by
        path = ckpt.checkpoints_dir(output_dir) / f"step-{step}"
        if last_saved != step:
            path = save(step)
        if main:
            write_loss_files(output_dir, state.history)
        raise TrainingInterrupted(
            f"stopped by {signal_name} at step {step}/{common.max_steps}; checkpoint saved to {path}: "
            f"continue with --resume latest (same output folder)",
            signal_name,
            path,
        )

    # 6. the end: final validation, loss files, EMA weights into the modules
    if last_validated != step and task.validate is not None:
        validate(step)
    if ema is not None:
        ema.copy_to(params)
    seconds = time.monotonic() - started
    if main:
        write_loss_files(output_dir, state.history)
        run_info = {
            "steps": step, "resumed_from": str(resume_from) if resume_from else None, "seconds": round(seconds, 2),
            "num_processes": nproc, "distributed_type": str(accelerator.distributed_type.value),
            "final_loss": state.history[-1][1] if state.history else None,
        }  # fmt: skip
        (output_dir / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    accelerator.wait_for_everyone()
    unwrapped = {name: accelerator.unwrap_model(model) for name, model in models.items()}
    history = [{"step": s, "loss": loss, "lr": lr} for s, loss, lr in state.history]
    return LoopResult(step, history, unwrapped, seconds, resume_from)


def fused_adamw_ok(params: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused AdamW kernel can step `params` (floating point, on CPU or CUDA). It does the same update
    as the default per-tensor loop, ≈ 5× faster on the shapes UNet's 326 tensors (bench/results.md, train_throughput)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def _unused_launch_plugins(accelerator) -> list[str]:
    """Say so when `accelerate launch --use_fsdp / --use_deepspeed` asked for a plugin the run does not use: on a CPU
    machine accelerate runs plain DDP over gloo instead (distributed type MULTI_CPU)."""
    import os

    notes = []
    for name, variable, kind in (("FSDP", "ACCELERATE_USE_FSDP", "FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        running = str(accelerator.distributed_type.value)
        if os.environ.get(variable, "").lower() in ("1", "true") and running != kind:
            notes.append(f"warning: {name} was asked for, but accelerate runs this job as {running} (plain data parallel: "
                         "nothing is sharded); on a CPU machine it always does")
    return notes


def _any_process(accelerator, flag: bool) -> bool:
    """True on every process when any process received a stop signal."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.gather(torch.tensor([float(flag)], device=accelerator.device)).max().item())


def _signature(common, task: TrainingSpec, nproc: int) -> dict[str, int]:
    """Settings that fix the data order: a resumed run should keep them."""
    return {
        "dataset_size": len(task.dataset), "train_batch_size": common.train_batch_size,
        "gradient_accumulation_steps": common.gradient_accumulation_steps, "num_processes": nproc, "seed": common.seed,
        **({"batches": len(task.batch_sampler)} if task.batch_sampler is not None else {}),  # buckets
    }  # fmt: skip
