"""The plain diffusers script a user would write for one image: the reference of bench/overhead.py.

Same model folder, sampler (sdkit's "DPM++ 2M" is DPMSolverMultistepScheduler from the model's own config), steps,
CFG, seed (a CPU generator), size; saves a PNG. Nothing sdkit-specific is imported.

    python bench/plain_diffusers.py MODEL_DIR "a red circle on a blue background" out.png --steps 20 --seed 1
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("prompt")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    args = parser.parse_args(argv)

    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.model, use_safetensors=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    image = pipe(
        args.prompt, num_inference_steps=args.steps, guidance_scale=args.cfg, width=args.width, height=args.height,
        generator=generator,
    ).images[0]  # fmt: skip
    image.save(args.out)


if __name__ == "__main__":
    main()
