"""sdkit: typed, reproducible Stable Diffusion generation and fine-tuning on top of Hugging Face diffusers.

The public API imports torch and diffusers only when called, so `import sdkit` stays instant:

    import sdkit
    results = sdkit.generate(prompt="a red circle on a blue background", seed=1, out="outputs")
    outputs = sdkit.run("recipes/generate/shapes-sweep.yaml")             # a recipe file: {job name: output}
    recipe = sdkit.load_recipe("train-text-to-image", {"preset": "shapes", "data_dir": "data", "output_dir": "out"})
    model_dir = sdkit.train(recipe)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdkit.version import __version__ as __version__  # re-exported: sdkit.__version__

if TYPE_CHECKING:
    from sdkit.schema.generate import GenerateRecipe
    from sdkit.tasks.generate import Result


def load_recipe(task: str, fields: dict[str, Any] | str | Path) -> Any:
    """The typed recipe of `task` from a mapping of fields or a YAML file of them (one-line errors on bad input)."""
    from sdkit.recipefile import load_yaml
    from sdkit.tasks.registry import get_task

    if isinstance(fields, (str, Path)):
        return get_task(task).recipe(load_yaml(Path(fields)), str(fields))
    return get_task(task).recipe(fields, "recipe")


def generate(recipe: GenerateRecipe | None = None, **fields: Any) -> list[Result]:
    """Generate images from a `GenerateRecipe` or its fields; returns one `Result` (path, seed, image) per image."""
    from sdkit.tasks import generate as task

    if recipe is None:
        recipe = load_recipe("generate", fields)
    elif fields:
        recipe = load_recipe("generate", {**recipe.model_dump(), **fields})
    return task.run(recipe)


def train(recipe: Any) -> Path:
    """Run a training recipe (any `Train*Recipe`); returns the output folder or main file."""
    from sdkit.tasks.registry import task_of

    task = task_of(recipe)
    if not task.name.startswith("train-"):
        raise TypeError(f"{type(recipe).__name__} is not a training recipe (it is {task.name}'s)")
    return Path(task.output_of(recipe, task.run(recipe)))


def run(*files: str | Path, sets: tuple[str, ...] = ()) -> dict[str, str]:
    """Run recipe files like `sdkit run`; returns each named job's output path."""
    from sdkit.jobs.parse import load_file
    from sdkit.jobs.run import run_jobs

    jobs = [job for file in files for job in load_file(Path(file), sets)]
    return run_jobs(jobs)
