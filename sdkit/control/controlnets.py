"""Which ControlNet goes with a control type on a model family: the standard hub repositories, and sdkit's own.

    default_controlnet("canny", "sd15")    -> "lllyasviel/control_v11p_sd15_canny"
    default_controlnet("canny", "shapes")  -> "shapes-canny" (the ControlNet shipped in sdkit/assets/shapes-canny)

A type without a known ControlNet for the family is a UserError that says how to name one.
"""

from __future__ import annotations

from types import MappingProxyType

from sdkit.errors import UserError
from sdkit.schema.control import check_type

FAMILIES: tuple[str, ...] = ("sd15", "sdxl", "shapes")
DEFAULT_CONTROLNETS: MappingProxyType[str, MappingProxyType[str, str]] = MappingProxyType(
    {
        "sd15": MappingProxyType(
            {
                "canny": "lllyasviel/control_v11p_sd15_canny",
                "openpose": "lllyasviel/control_v11p_sd15_openpose",
                "depth": "lllyasviel/control_v11f1p_sd15_depth",
                "seg": "lllyasviel/control_v11p_sd15_seg",
                "normal": "lllyasviel/control_v11p_sd15_normalbae",
                "mlsd": "lllyasviel/control_v11p_sd15_mlsd",
                "hed": "lllyasviel/control_v11p_sd15_softedge",
                "scribble": "lllyasviel/control_v11p_sd15_scribble",
                "lineart": "lllyasviel/control_v11p_sd15_lineart",
                "shuffle": "lllyasviel/control_v11e_sd15_shuffle",
            }
        ),
        "sdxl": MappingProxyType(
            {
                "canny": "diffusers/controlnet-canny-sdxl-1.0",
                "depth": "diffusers/controlnet-depth-sdxl-1.0",
                "openpose": "thibaud/controlnet-openpose-sdxl-1.0",
                "scribble": "xinsir/controlnet-scribble-sdxl-1.0",
            }
        ),
        "shapes": MappingProxyType({"canny": "shapes-canny"}),
    }
)


def default_controlnet(kind: str, family: str) -> str:
    """The ControlNet (hub id or sdkit alias) for control type `kind` on a `family` base model."""
    try:
        check_type(kind)
    except ValueError as err:
        raise UserError(str(err)) from None
    if family not in DEFAULT_CONTROLNETS:
        raise UserError(f"unknown model family {family!r}: choose from {', '.join(FAMILIES)}")
    table = DEFAULT_CONTROLNETS[family]
    if kind not in table:
        raise UserError(
            f"no default {kind} ControlNet for {family} models (known: {', '.join(table)}): "
            f"name one with --controlnet {kind}=MODEL (a hub id or a local ControlNet folder)"
        )
    return table[kind]
