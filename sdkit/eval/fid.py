"""FID and KID through torchmetrics, on the standard FID Inception-v3 features (torch-fidelity's port of the TF graph).

The work is split in two: features (one vector per image, from `inception(weights)` or any `feature` module), then
torchmetrics' own `FrechetInceptionDistance` / `KernelInceptionDistance` on those features (fed through `given_features`,
a module that returns its input). The split lets a reference folder's features be cached by the folder's content
hash, and the numbers are torchmetrics' to the last digit.

How many images: FID is biased by the sample size. Heusel et al. (2017), who defined it, recommend at least
`STABLE_FID_IMAGES` = 10,000 images per set; below 2,048 the 2048 x 2048 covariance is singular. Below 10,000 a
warning is printed; compare FIDs only at equal image counts. KID (Binkowski et al. 2018) is unbiased: prefer it for
small sets.

Weights: torch-fidelity downloads `pt_inception-2015-12-05` from GitHub at first use and would `torch.load` any given
file with `weights_only=False` (a pickle that runs code). Here the file is read by sdkit with `weights_only=True` (or as
safetensors), checked against the network's keys, and handed to torch-fidelity as a file sdkit wrote itself. Offline
(HF_HUB_OFFLINE=1) and not in torch's cache: exit 2 naming --inception-weights.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdkit.errors import UserError

if TYPE_CHECKING:
    import torch

STABLE_FID_IMAGES = 10_000
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"
FEATURES = "2048"  # the pool3 features every published FID uses


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def default_weights_file() -> Path:
    """Where torch (and torch-fidelity) keep the downloaded weights: $TORCH_HOME/hub/checkpoints/."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]


def fetch_default_weights() -> Path:
    """The standard weights in torch's cache, downloaded (sha256-checked) when missing and the network is allowed."""
    import torch

    path = default_weights_file()
    if path.is_file():
        return path
    fix = f"pass --inception-weights PATH (the file {INCEPTION_URL}, downloaded elsewhere)"
    if offline():
        raise UserError(f"the FID Inception weights are not in torch's cache ({path}) and HF_HUB_OFFLINE=1 forbids downloading them: {fix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(INCEPTION_URL, str(path), hash_prefix=INCEPTION_SHA256_PREFIX, progress=False)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a wrong hash is a RuntimeError
        raise UserError(f"could not download the FID Inception weights ({type(err).__name__}: {str(err)[:120]}): {fix}") from None
    return path


def read_state(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A state dict of plain tensors from a safetensors file or (allowed) a pickle read with weights_only=True."""
    import torch

    from sdkit.weightfiles import SAFETENSORS, check_weights, refusing_code

    if not Path(path).is_file():
        raise UserError(f"--inception-weights {path}: no such file")
    kind = check_weights(path, "--inception-weights", allow_pickle)
    if kind == SAFETENSORS:
        from safetensors.torch import load_file

        return load_file(str(path))
    with refusing_code([path]):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--inception-weights {path} is not a state dict of tensors: give torch-fidelity's Inception weights")
    return state


def inception(weights: Path | None, allow_pickle: bool = False) -> torch.nn.Module:
    """torchmetrics' NoTrainInceptionV3 (pool3, 2048 features; uint8 images of any size, resized inside) with the
    standard weights: `weights` if given (offline use), else torch's cache or a download."""
    import torch
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = weights if weights is not None else fetch_default_weights()
    state = read_state(path, allow_pickle or weights is None)  # torch's cache holds the .pth it downloaded itself
    with tempfile.TemporaryDirectory(prefix="sdkit-inception-") as tmp:
        checked = Path(tmp) / "weights.pth"
        torch.save(dict(state), checked)  # plain tensors only: safe for torch-fidelity's weights_only=False load
        try:
            return NoTrainInceptionV3(name="inception-v3-compat", features_list=[FEATURES], feature_extractor_weights_path=str(checked))
        except RuntimeError as err:  # load_state_dict: missing/unexpected keys or wrong shapes
            raise UserError(
                f"--inception-weights {path} does not fit the FID Inception network ({str(err).splitlines()[0][:160]}): "
                f"give {INCEPTION_URL.rsplit('/', 1)[1]} or that file converted to safetensors"
            ) from None


def given_features(num_features: int) -> torch.nn.Module:
    """The `feature` module torchmetrics takes when the features are already computed: it returns its input."""
    import torch

    class GivenFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_features = num_features

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return features

    return GivenFeatures()


def features(feature: torch.nn.Module, images: Sequence[Any], batch_size: int, device: torch.device,
             load: Callable[[Any], Any], advance: Callable[[int], None] | None = None) -> torch.Tensor:  # fmt: skip
    """`feature(uint8 NCHW)` for every image, in batches of equal-size images; float32 on the CPU."""
    import numpy as np
    import torch

    feature = feature.to(device).eval()
    out, batch = [], []

    def flush() -> None:
        if batch:
            pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)
            with torch.inference_mode():
                out.append(feature(pixels).float().cpu())
            if advance:
                advance(len(batch))
            batch.clear()

    for item in images:
        array = np.asarray(load(item).convert("RGB"), dtype=np.uint8)
        if batch and (array.shape != batch[0].shape or len(batch) == batch_size):
            flush()
        batch.append(array)
    flush()
    return torch.cat(out)


@dataclass(frozen=True)
class Distances:
    fid: float
    kid_mean: float
    kid_std: float
    kid_subset_size: int
    n_images: int
    n_reference: int


def distances(generated: torch.Tensor, reference: torch.Tensor, kid_subsets: int = 100, kid_subset_size: int = 1000,
              seed: int = 0) -> Distances:  # fmt: skip
    """torchmetrics' FID and KID of two feature sets (KID's random subsets drawn from `seed`)."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if len(generated) < 2 or len(reference) < 2:
        raise UserError(f"FID needs at least 2 images per set (got {len(generated)} and {len(reference)}): give more images")
    given = given_features(generated.shape[1])
    fid = FrechetInceptionDistance(feature=given)
    size = min(kid_subset_size, len(generated), len(reference))
    with warnings.catch_warnings():  # "will save all extracted features in buffer": they are in memory already
        warnings.filterwarnings("ignore", message=".*Kernel Inception Distance.*")
        kid = KernelInceptionDistance(feature=given, subsets=kid_subsets, subset_size=size)
    for metric in (fid, kid):
        metric.update(reference, real=True)
        metric.update(generated, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return Distances(float(fid.compute()), float(kid_mean), float(kid_std), size, len(generated), len(reference))


def cache_file(folder_hash: str, extractor: str) -> Path:
    """Where a reference folder's features are kept: beside sdkit's hash cache (SDKIT_CACHE_DIR, ~/.cache/sdkit)."""
    from sdkit.models import hash_cache_file

    return hash_cache_file().parent / "fid-features" / f"{folder_hash[:32]}-{extractor[:16]}.safetensors"


def cached_features(folder: Path, extractor: str, compute: Callable[[], torch.Tensor], use_cache: bool) -> tuple[torch.Tensor, bool]:
    """A folder's features, read from the cache when its content hash and the extractor match; (features, cached)."""
    from sdkit import atomic
    from sdkit.models import content_hash

    path = cache_file(content_hash(Path(folder)), extractor)
    if use_cache and path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))["features"], True
        except (SafetensorError, KeyError, OSError):
            pass  # a damaged cache entry is recomputed and replaced
    found = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_safetensors(path, {"features": found}, {"folder": str(Path(folder).resolve()), "extractor": extractor})
    return found, False


def extractor_id(weights: Path | None) -> str:
    """What the features depend on: the weights file's content hash (default: the published file's hash prefix)."""
    from sdkit.models import content_hash

    return f"inception-{FEATURES}-" + (content_hash(Path(weights)) if weights is not None else INCEPTION_SHA256_PREFIX)
