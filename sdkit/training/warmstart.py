"""Start a new architecture from another model's weights where they fit (text-to-image `init_from`).

    report = init_from(pipe, "shapes")    # pipe: a freshly built preset; report: copied / total tensors per module

* The VAE is taken whole (weights and scaling factor) when its configuration matches, so the latent space is the
  source model's.
* The UNet takes every tensor whose name and shape match (nn.Module.load_state_dict with the fitting subset): an SDXL
  variant of an SD UNet of the same widths gets all of its convolutions, attention and time embedding; SDXL's added
  conditioning (`add_embedding`), which the source lacks, starts at zero output, so the copy draws as the source did
  until it learns to use the pooled text embedding and the micro-conditioning.
* Text encoders are copied only when both tokenizers have the same vocabulary (a token id must mean the same word).
"""

from __future__ import annotations

import sys


def init_from(pipe, model: str) -> dict[str, tuple[int, int]]:
    """Copy `model`'s fitting weights into `pipe` (see the module docstring); returns {module: (copied, total)}."""
    import torch

    from sdkit.models import load_pipeline, resolve_model

    source = load_pipeline(resolve_model(model, hash_local=False), torch_dtype=torch.float32)
    report: dict[str, tuple[int, int]] = {}
    if _architecture(source.vae.config) == _architecture(pipe.vae.config):
        pipe.vae.load_state_dict(source.vae.state_dict())
        pipe.vae.register_to_config(scaling_factor=source.vae.config.scaling_factor)
        report["vae"] = (len(pipe.vae.state_dict()),) * 2
    report["unet"] = _copy_fitting(source.unet, pipe.unet)
    if getattr(pipe.unet, "add_embedding", None) is not None and getattr(source.unet, "add_embedding", None) is None:
        with torch.no_grad():
            pipe.unet.add_embedding.linear_2.weight.zero_()
            pipe.unet.add_embedding.linear_2.bias.zero_()
    for name, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        theirs, ours = getattr(source, name, None), getattr(pipe, name, None)
        if theirs is not None and ours is not None and getattr(source, tokenizer).get_vocab() == getattr(pipe, tokenizer).get_vocab():
            report[name] = _copy_fitting(theirs, ours)
    print(f"init_from {model}: " + ", ".join(f"{k} {a}/{b} tensors" for k, (a, b) in report.items()), file=sys.stderr)
    return report


def _architecture(config) -> str:
    """A module's configuration without what does not change its shape (names, versions, the scaling factor)."""
    import json

    skip = ("scaling_factor", "shift_factor", "_name_or_path", "_diffusers_version", "_use_default_values", "_class_name")
    return json.dumps({k: v for k, v in dict(config).items() if k not in skip}, sort_keys=True, default=list)


def _copy_fitting(source, target) -> tuple[int, int]:
    """Load the tensors of `source` whose names and shapes `target` has; (copied, target's total)."""
    ours = target.state_dict()
    fitting = {k: v for k, v in source.state_dict().items() if k in ours and ours[k].shape == v.shape}
    target.load_state_dict(fitting, strict=False)
    return len(fitting), len(ours)
