"""FID and KID of a folder of generated images against a reference folder (sdkit.eval.fid has the details).

    sdkit eval fid outputs/run1 --reference data/real                   # weights from torch's cache or GitHub
    sdkit eval fid outputs/run1 --reference data/real --inception-weights pt_inception.safetensors   # offline

The reference folder's features are cached by its content hash (under sdkit's cache folder), so comparing many runs
against one reference set reads it once. The report goes to `fid.json` in the generated folder and to stdout.
"""

from __future__ import annotations

from pathlib import Path

from sdkit import device
from sdkit.eval.fid import STABLE_FID_IMAGES, cached_features, distances, extractor_id, features, inception
from sdkit.eval.inputs import list_images, load_rgb
from sdkit.eval.report import Report, show, write_json
from sdkit.outputs import confine
from sdkit.progress import bar, warn
from sdkit.schema.eval import FidRecipe


def run(recipe: FidRecipe) -> Report:
    # 1. both folders listed and the weights found before any image is read
    generated = list_images(recipe.images, "IMAGES")
    reference = list_images(recipe.reference, "--reference")
    target = Path(recipe.images) / "fid.json"
    confine(target, "report")
    placement = device.resolve(recipe.device, "fp32")
    network = inception(recipe.inception_weights, recipe.allow_pickle)
    fewest = min(len(generated), len(reference))
    if fewest < STABLE_FID_IMAGES:
        warn(f"FID from {fewest:,} images is biased (its value falls as images are added): a stable FID needs at least "
             f"{STABLE_FID_IMAGES:,} per set (Heusel et al. 2017); compare only at equal counts, or read KID")  # fmt: skip

    # 2. features: the reference's from the cache when its content is unchanged
    with bar("fid features", len(generated) + len(reference)) as advance:
        ref, cached = cached_features(
            Path(recipe.reference), extractor_id(recipe.inception_weights),
            lambda: features(network, reference, recipe.batch_size, placement.device, load_rgb, advance), recipe.cache,
        )  # fmt: skip
        if cached:
            advance(len(reference))
        gen = features(network, generated, recipe.batch_size, placement.device, load_rgb, advance)
    result = distances(gen, ref, recipe.kid_subsets, recipe.kid_subset_size)

    # 3. the report
    data = {
        "metric": "fid", "fid": result.fid, "kid_mean": result.kid_mean, "kid_std": result.kid_std,
        "kid_subsets": recipe.kid_subsets, "kid_subset_size": result.kid_subset_size,
        "n_images": result.n_images, "n_reference": result.n_reference, "stable_fid_images": STABLE_FID_IMAGES,
        "images": str(recipe.images), "reference": str(recipe.reference), "reference_features_cached": cached,
        "features": extractor_id(recipe.inception_weights),
    }  # fmt: skip
    path = write_json(target, data)
    rows = [("FID", result.fid), ("KID (mean)", result.kid_mean), ("KID (std)", result.kid_std)]
    footer = (f"{result.n_images} generated vs {result.n_reference} reference images"
              f"{' (reference features from the cache)' if cached else ''}; report: {path}")  # fmt: skip
    show(data, recipe.as_json, "FID / KID", ("metric", "value"), rows, footer)
    return Report(data, [path])
