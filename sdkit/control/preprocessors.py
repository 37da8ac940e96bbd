"""Preprocessors: a source picture in, a ControlNet control map out (RGB, the size of the input).

    from sdkit.control import preprocess
    edges = preprocess("canny", Image.open("photo.png"), low_threshold=50)
    pose = preprocess("openpose", Image.open("photo.png"), hand=True, annotators_dir=Path("~/annotators"))

`DETECTORS` is the literal table: control type -> what runs (a controlnet-aux detector, a transformers model or plain
OpenCV), the hub repository and file names of its weights. Options are validated by the type's options schema in
`sdkit.schema.control` (unknown or mistyped ones are UserErrors naming the valid ones). controlnet_aux, transformers
and torch are imported only when a detector runs (importing controlnet_aux alone takes ~7 s).

Weights come from `annotators_dir` (or $SDKIT_ANNOTATORS), else from the Hugging Face Hub; see `sdkit.control.weights`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from sdkit.control.weights import DEFAULT_REPO, weights_folder
from sdkit.control.weights import annotators_dir as resolve_dir
from sdkit.errors import UserError
from sdkit.schema.control import CONTROL_TYPES, OPTIONS, parse_options
from sdkit.weightfiles import refusing_code

if TYPE_CHECKING:
    from PIL import Image

TRANSFORMERS_WEIGHTS = ("config.json", "preprocessor_config.json", "model.safetensors|pytorch_model.bin")


@dataclass(frozen=True)
class Detector:
    """How one control type is computed."""

    summary: str  # what the map shows, and what computes it
    run: Callable[[np.ndarray, Any, Path | None, str], np.ndarray]  # (RGB HxWx3 uint8, options, weights folder, device)
    repo: str | None = None  # hub repository of the weights (None: no weights)
    files: tuple[str, ...] = ()  # files needed from `repo` ("a|b": either)


# 1. the runners: RGB uint8 array in, map array out (any size; `preprocess` resizes it to the input)


def _canny(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    import cv2

    return cv2.Canny(np.ascontiguousarray(rgb), opts.low_threshold, opts.high_threshold)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """controlnet_aux warns at import (timm registry, torch.jit) and on calls, and prints: keep stdout clean."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # NormalBae prints while loading
        warnings.simplefilter("ignore")
        yield


def _aux(cls_name: str, folder: Path | None, device: str, **kwargs: Any) -> Any:
    """A controlnet-aux detector loaded from a local folder (weights already resolved), on `device`."""
    with _quiet():
        import controlnet_aux

        return getattr(controlnet_aux, cls_name).from_pretrained(str(folder), **kwargs).to(device)


def _call(detector: Any, rgb: np.ndarray, opts: Any, **kwargs: Any) -> np.ndarray:
    res = opts.detect_resolution
    with _quiet():
        return np.asarray(detector(rgb, detect_resolution=res, image_resolution=res, output_type="np", **kwargs))


def _openpose(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    detector = _aux("OpenposeDetector", folder, device)
    return _call(detector, rgb, opts, include_body=opts.body, include_hand=opts.hand, include_face=opts.face)


def _normal(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    return _call(_aux("NormalBaeDetector", folder, device), rgb, opts)


def _mlsd(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    detector = _aux("MLSDdetector", folder, device)
    return _call(detector, rgb, opts, thr_v=opts.score_threshold, thr_d=opts.distance_threshold)


def _hed(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    return _call(_aux("HEDdetector", folder, device), rgb, opts, safe=opts.safe)


def _scribble(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    return _call(_aux("PidiNetDetector", folder, device), rgb, opts, safe=True, scribble=True)


def _lineart(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    return _call(_aux("LineartDetector", folder, device), rgb, opts, coarse=opts.coarse)


def _shuffle(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    """controlnet-aux's content shuffle (a remap by two smooth noise fields), seeded instead of using global state."""
    import cv2

    h0, w0 = rgb.shape[:2]
    scale = opts.detect_resolution / min(h0, w0)
    w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    image = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    rng = np.random.default_rng(opts.seed)
    f = opts.cell

    def noise_disk() -> np.ndarray:
        noise = rng.uniform(0, 1, size=(h // f + 2, w // f + 2)).astype(np.float32)
        noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f : f + h, f : f + w]
        noise -= noise.min()
        return noise / max(float(noise.max()), 1e-8)

    flow = np.stack([noise_disk() * (w - 1), noise_disk() * (h - 1)], axis=2).astype(np.float32)
    return cv2.remap(image, flow, None, cv2.INTER_LINEAR)


def _transformers_model(processor_cls: Any, model_cls: Any, folder: Path | None, device: str) -> tuple[Any, Any]:
    """Image processor and model from a local folder, without transformers' per-file loading bars."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return processor_cls.from_pretrained(folder), model_cls.from_pretrained(folder).to(device).eval()


def _depth(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    """Relative inverse depth from a transformers depth model (DPT / MiDaS), min-max normalised like the annotator."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor, model = _transformers_model(AutoImageProcessor, AutoModelForDepthEstimation, folder, device)
    inputs = processor(images=rgb.copy(), return_tensors="pt").to(device)
    with torch.no_grad():
        depth = model(**inputs).predicted_depth
    depth = torch.nn.functional.interpolate(
        depth[:, None].float(), size=rgb.shape[:2], mode="bicubic", align_corners=False
    )
    depth = depth[0, 0].cpu().numpy()
    depth -= depth.min()
    peak = float(depth.max())
    return (depth / peak * 255 if peak > 0 else depth).round().clip(0, 255).astype(np.uint8)


def _seg(rgb: np.ndarray, opts: Any, folder: Path | None, device: str) -> np.ndarray:
    """Semantic segmentation (UperNet/SegFormer on ADE20K) drawn with the ADE20K palette the seg ControlNet expects."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    with _quiet():
        from controlnet_aux.util import ade_palette

    processor, model = _transformers_model(AutoImageProcessor, AutoModelForSemanticSegmentation, folder, device)
    inputs = processor(images=rgb.copy(), return_tensors="pt").to(device)
    with torch.no_grad():
        outputs = model(**inputs)
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[rgb.shape[:2]])[0].cpu().numpy()
    palette = np.asarray(ade_palette(), dtype=np.uint8)
    if labels.max() >= len(palette):
        raise UserError(
            f"segmentation model in {folder} predicts {int(labels.max()) + 1}+ classes, the ADE20K palette has "
            f"{len(palette)}: use an ADE20K model (e.g. openmmlab/upernet-convnext-small)"
        )
    return palette[labels]


# 2. the table

DETECTORS: MappingProxyType[str, Detector] = MappingProxyType(
    {
        "canny": Detector("Canny edges (OpenCV), white on black", _canny),
        "openpose": Detector(
            "OpenPose body/hand/face skeletons (controlnet-aux OpenposeDetector)",
            _openpose, DEFAULT_REPO, ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
        ),
        "depth": Detector(
            "MiDaS DPT-hybrid relative depth (transformers depth estimation), near = bright",
            _depth, "Intel/dpt-hybrid-midas", TRANSFORMERS_WEIGHTS,
        ),
        "seg": Detector(
            "ADE20K semantic segmentation (transformers UperNet) in the ADE20K palette",
            _seg, "openmmlab/upernet-convnext-small", TRANSFORMERS_WEIGHTS,
        ),
        "normal": Detector("Surface normals (controlnet-aux NormalBaeDetector)", _normal, DEFAULT_REPO, ("scannet.pt",)),
        "mlsd": Detector("Straight lines (controlnet-aux MLSDdetector)", _mlsd, DEFAULT_REPO, ("mlsd_large_512_fp32.pth",)),
        "hed": Detector("HED soft edges (controlnet-aux HEDdetector)", _hed, DEFAULT_REPO, ("ControlNetHED.pth",)),
        "scribble": Detector(
            "Scribbles: PidiNet edges thinned and thresholded (controlnet-aux PidiNetDetector, scribble mode)",
            _scribble, DEFAULT_REPO, ("table5_pidinet.pth",),
        ),
        "lineart": Detector(
            "Line art, black lines on white inverted to white on black (controlnet-aux LineartDetector)",
            _lineart, DEFAULT_REPO, ("sk_model.pth", "sk_model2.pth"),
        ),
        "shuffle": Detector("Content shuffle: the image warped by a seeded random flow field", _shuffle),
    }
)  # fmt: skip
if tuple(DETECTORS) != CONTROL_TYPES:  # the schema's list and this table must name the same types
    raise RuntimeError(f"DETECTORS {tuple(DETECTORS)} != CONTROL_TYPES {CONTROL_TYPES}")


def get_detector(kind: str) -> Detector:
    """The table entry of a control type, or a UserError listing the valid types."""
    if kind not in DETECTORS:
        raise UserError(f"unknown control type {kind!r}: choose from {', '.join(CONTROL_TYPES)}")
    return DETECTORS[kind]


def check_options(kind: str, options: dict[str, Any]) -> Any:
    """The type's validated options object (a UserError for unknown names or bad values)."""
    get_detector(kind)
    try:
        return parse_options(kind, options)
    except ValueError as err:
        raise UserError(f"{err}") from None


# 3. the API


def weights_for(kind: str, annotators_dir: Path | None = None) -> Path | None:
    """The local folder holding `kind`'s weights (downloaded into the hub cache if needed; None: it needs none).
    Call it before loading anything else to fail early: a missing file is a UserError naming it and the flag."""
    detector = get_detector(kind)
    if detector.repo is None:
        return None
    return weights_folder(detector.repo, detector.files, resolve_dir(annotators_dir), kind)


def preprocess(
    kind: str,
    image: Image.Image,
    *,
    annotators_dir: Path | None = None,
    device: str = "cpu",
    **options: Any,
) -> Image.Image:
    """The control map of `image` for control type `kind` (RGB, same size as `image`).

    `options` are the type's settings (see `sdkit.schema.control.OPTIONS`); `annotators_dir` a local weights folder
    (default: $SDKIT_ANNOTATORS, else the hub); `device` where the detector runs ("cpu", "cuda", ...).
    """
    import cv2
    from PIL import Image

    detector = get_detector(kind)
    opts = check_options(kind, options)
    folder = weights_for(kind, annotators_dir)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    weights = [folder / name for entry in detector.files for name in entry.split("|")] if folder else []
    fix = f"use the file from the hub repository {detector.repo}"
    with refusing_code([w for w in weights if w.is_file()], folder, fix):  # .pth files are pickles: weights_only refuses code
        result = detector.run(rgb, opts, folder, device)
    result = np.repeat(result[:, :, None], 3, axis=2) if result.ndim == 2 else result[:, :, :3]
    height, width = rgb.shape[:2]
    if result.shape[:2] != (height, width):
        interpolation = cv2.INTER_NEAREST if kind == "seg" else cv2.INTER_LINEAR
        result = cv2.resize(np.ascontiguousarray(result), (width, height), interpolation=interpolation)
    return Image.fromarray(np.ascontiguousarray(result, dtype=np.uint8), "RGB")


def describe() -> dict[str, str]:
    """Control type -> one line: what the map shows and what weights it needs."""
    out = {}
    for kind, detector in DETECTORS.items():
        weights = f"weights {', '.join(detector.files)} from {detector.repo}" if detector.repo else "no weights"
        out[kind] = f"{detector.summary}; {weights}; options: {', '.join(OPTIONS[kind].model_fields) or 'none'}"
    return out
