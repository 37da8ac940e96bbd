"""Checkpoints that hold only the trained parameters (LoRA layers, an embedding table), not the frozen base weights.

accelerate's `save_state` writes every prepared model's full state dict: for a LoRA on SD 1.5 that is 3.4 GB of frozen
UNet per checkpoint around a few MB that train. `checkpoint_trainable_only(accelerator)` registers accelerate's
save/load pre-hooks so that a checkpoint keeps just the parameters with `requires_grad` (plus the optimiser, scheduler,
sampler and RNG states as usual). On resume the frozen weights are the ones the task loaded from its base model, which
a resumed run loads the same way, so the resumed state is the same as the saved one.

Call it before `run_training`: the hooks read `requires_grad` when a checkpoint is saved or loaded, not when registered.
"""

from __future__ import annotations

from pathlib import Path

from sdkit.errors import UserError


def _trainable(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def _weights_file(input_dir: str, index: int) -> Path:
    """accelerate's name for the i-th model's weights in a `save_state` folder."""
    return Path(input_dir) / ("model.safetensors" if index == 0 else f"model_{index}.safetensors")


def checkpoint_trainable_only(accelerator) -> None:
    """Make this accelerator's checkpoints hold only trainable parameters; resume loads them back into place.

    A checkpoint that does not fit the run (another task, other target modules, another LoRA rank or embedding size)
    is a UserError naming what differs, raised before any parameter is changed."""
    import torch
    from safetensors.torch import load_file

    def save_hook(models, weights, output_dir) -> None:
        for i, model in enumerate(models):
            keep = _trainable(model)
            weights[i] = {name: tensor for name, tensor in weights[i].items() if name in keep}

    def load_hook(models, input_dir) -> None:
        states = []
        for i, model in enumerate(models):
            path = _weights_file(input_dir, i)
            if not path.is_file():
                raise UserError(f"checkpoint {input_dir} lacks {path.name}: it was not written by this task")
            state = load_file(str(path))
            check_fits(state, model, input_dir)
            states.append(state)
        for model, state in zip(models, states, strict=True):
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, tensor in state.items():
                    params[name].copy_(tensor)
        models.clear()  # loaded here: accelerate must not load (full) state dicts for them

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def check_fits(state: dict, model, input_dir: str) -> None:
    """UserError unless `state` holds exactly `model`'s trainable parameters, with the same shapes."""
    keep = _trainable(model)
    if set(state) != keep:
        extra, missing = sorted(set(state) - keep)[:3], sorted(keep - set(state))[:3]
        raise UserError(
            f"checkpoint {input_dir} does not match this run's trainable parameters (unexpected {extra}, "
            f"missing {missing}): resume with the same recipe (rank, target modules, text encoder)"
        )
    params = dict(model.named_parameters())
    for name in sorted(state, key=lambda n: ".lora_A." not in n):  # a rank shows first in the down projections
        tensor = state[name]
        if tuple(tensor.shape) == tuple(params[name].shape):
            continue
        if ".lora_A." in name:  # peft's down projection: (rank, in_features[, kernel])
            saved, ours = tensor.shape[0], params[name].shape[0]
            raise UserError(
                f"checkpoint {input_dir} holds a rank-{saved} LoRA but this run has rank {ours}: "
                f"resume with rank {saved} (--rank {saved}), or train rank {ours} into a new output folder"
            )
        raise UserError(
            f"checkpoint {input_dir}: {name} has shape {tuple(tensor.shape)} there but {tuple(params[name].shape)} "
            "in this run: resume with the same recipe"
        )
