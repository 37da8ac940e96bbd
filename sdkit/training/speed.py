"""Training speed/memory options the shared loop applies to a task's trainable modules."""

from __future__ import annotations

from sdkit.errors import UserError


def enable_gradient_checkpointing(modules) -> None:
    """Switch on gradient checkpointing in each trainable model (diffusers' enable_gradient_checkpointing,
    transformers' gradient_checkpointing_enable), or in the first submodule that has it (a wrapper's model)."""
    for name, module in modules.items():
        for sub in module.modules():
            if hasattr(sub, "enable_gradient_checkpointing"):
                sub.enable_gradient_checkpointing()
                break
            if hasattr(sub, "gradient_checkpointing_enable"):
                sub.gradient_checkpointing_enable()
                break
        else:
            raise UserError(f"gradient_checkpointing: the trained {name} does not support it; set it to false")
