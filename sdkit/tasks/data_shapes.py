"""`sdkit data shapes`: write the synthetic shapes world as a Hugging Face imagefolder dataset (`sdkit.data.shapes`).

    sdkit data shapes -o data --n 2000 --seed 1 [--conditioning]

A folder that already holds exactly the dataset this recipe describes (its metadata.jsonl equals the planned one,
and every listed file is there) is kept, so a recipe file that makes its data and then trains on it can run again;
any other non-empty folder is refused (nothing is overwritten).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sdkit.data import shapes
from sdkit.schema.data import ShapesDataRecipe


def run(recipe: ShapesDataRecipe) -> Path:
    """Write the dataset the recipe describes (or keep the identical one already there); returns its folder."""
    # 1. plan the scenes and rows (cheap: nothing is rendered)
    settings = {
        "seed": recipe.seed, "size": recipe.size, "shapes": recipe.shapes, "colors": recipe.colors,
        "backgrounds": recipe.backgrounds, "split": recipe.split, "pattern": recipe.pattern,
        "conditioning": recipe.conditioning, "caption_noise": recipe.caption_noise, "generic_noun": recipe.generic_noun,
    }  # fmt: skip
    out = Path(recipe.out)

    # 2. the same dataset already written: keep it
    if _already_written(out, shapes.plan_dataset(recipe.n, **settings)[1]):
        print(f"dataset {out} already written ({recipe.n} rows, same recipe): kept", file=sys.stderr)
        return out

    # 3. render and write it (staged, renamed into place when complete)
    return shapes.write_dataset(out, recipe.n, **settings)


def _already_written(out: Path, rows: list[dict[str, object]]) -> bool:
    metadata = out / "metadata.jsonl"
    try:
        same = metadata.read_text(encoding="utf-8") == shapes.metadata_text(rows)
    except (OSError, UnicodeDecodeError):
        return False
    files = [str(row[key]) for row in rows for key in ("file_name", "conditioning_image", "mask_image") if key in row]
    return same and all((out / name).is_file() for name in files)
