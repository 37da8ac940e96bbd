"""ControlNet support: preprocessors (source picture -> control map) and the default ControlNet per type and family.

    from sdkit.control import CONTROL_TYPES, check_options, default_controlnet, preprocess, weights_for
    check_options("canny", {"low_threshold": 50}); weights_for("depth")   # fail early, before loading a pipeline
    control_map = preprocess("canny", image, low_threshold=50)            # PIL RGB, same size as `image`
    default_controlnet("depth", "sd15")                                   # "lllyasviel/control_v11f1p_sd15_depth"

Importing this package is cheap (numpy, pydantic); detectors import controlnet_aux/transformers/torch when they run.
Modules: `preprocessors` (the detector table and `preprocess`), `weights` (local folder or hub), `controlnets`
(default ControlNet repositories).
"""

from sdkit.control.controlnets import DEFAULT_CONTROLNETS, FAMILIES, default_controlnet
from sdkit.control.preprocessors import DETECTORS, check_options, describe, get_detector, preprocess, weights_for
from sdkit.schema.control import CONTROL_TYPES, OPTIONS

__all__ = [
    "CONTROL_TYPES", "DEFAULT_CONTROLNETS", "DETECTORS", "FAMILIES", "OPTIONS", "check_options", "default_controlnet",
    "describe", "get_detector", "preprocess", "weights_for",
]  # fmt: skip
