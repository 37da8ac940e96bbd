"""sdkit: typed, reproducible Stable Diffusion generation and fine-tuning on top of Hugging Face diffusers.

The public API imports torch and diffusers only when called, so `import sdkit` stays instant:

    import sdkit
    results = sdkit.generate(prompt="a red circle on a blue background", seed=1, out="outputs")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sdkit.recipes.generate import Result
    from sdkit.schema.generate import GenerateRecipe


def generate(recipe: GenerateRecipe | None = None, **fields: Any) -> list[Result]:
    """Generate images from a `GenerateRecipe` or its fields; returns one `Result` (path, seed, image) per image."""
    from sdkit.recipes import generate as task
    from sdkit.schema.generate import GenerateRecipe

    if recipe is None:
        recipe = GenerateRecipe(**fields)
    elif fields:
        recipe = recipe.model_copy(update=fields)
        recipe = GenerateRecipe.model_validate(recipe.model_dump())
    return task.run(recipe)
