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


def adamw_8bit():
    """bitsandbytes' AdamW8bit (optimiser state in 8 bits: ≈ 1/4 of AdamW's state memory; runs on CPU and CUDA
    with bitsandbytes ≥ 0.48), or a UserError when bitsandbytes is not installed."""
    try:
        import bitsandbytes
    except ImportError:
        raise UserError("use_8bit_adam needs bitsandbytes: pip install bitsandbytes (or set use_8bit_adam false)") from None
    return bitsandbytes.optim.AdamW8bit
