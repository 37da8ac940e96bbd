"""A local annotator folder with random weights of the real architectures, for tests that must not touch the hub.

    build_annotators(root) -> root

writes what `sdkit.control.preprocessors.DETECTORS` asks for, in the layout `sdkit.control.weights` reads: the
lllyasviel/Annotators files at the top (each in the state-dict layout its controlnet-aux loader expects) and tiny
transformers models (DPT depth, UperNet ADE20K segmentation) under their hub ids. Floating tensors are saved as fp16
(the loaders cast them back), which halves the ~0.8 GB the full-size OpenPose and NormalBae networks would take.
"""

from __future__ import annotations

import types
import warnings
from pathlib import Path

import torch

SEED = 0


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def _drop_first(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenPose checkpoints name layers without the model's block prefix (`model0.conv1_1` is saved as `conv1_1`)."""
    return {".".join(k.split(".")[1:]): v for k, v in state.items()}


def _annotators(root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.hed import ControlNetHED_Apache2
        from controlnet_aux.lineart import Generator
        from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
        from controlnet_aux.normalbae.nets.NNET import NNET
        from controlnet_aux.open_pose.face import FaceNet
        from controlnet_aux.open_pose.model import bodypose_model, handpose_model
        from controlnet_aux.pidi.model import pidinet

    _save(_half(_drop_first(bodypose_model().state_dict())), root / "body_pose_model.pth")
    _save(_half(_drop_first(handpose_model().state_dict())), root / "hand_pose_model.pth")
    _save(_half(FaceNet().state_dict()), root / "facenet.pth")
    _save(_half(ControlNetHED_Apache2().state_dict()), root / "ControlNetHED.pth")
    _save(_half(MobileV2_MLSD_Large().state_dict()), root / "mlsd_large_512_fp32.pth")
    _save(
        {"state_dict": {"module." + k: v for k, v in _half(pidinet().state_dict()).items()}},
        root / "table5_pidinet.pth",
    )
    _save(_half(Generator(3, 1, 3).state_dict()), root / "sk_model.pth")
    _save(_half(Generator(3, 1, 3).state_dict()), root / "sk_model2.pth")
    args = types.SimpleNamespace(
        mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4, importance_ratio=0.7
    )
    _save({"model": _half(NNET(args).state_dict())}, root / "scannet.pt")


def _depth(folder: Path) -> None:
    """A tiny DPT (ViT, not hybrid) depth model with a square-resizing processor."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, is_hybrid=False,
        head_in_index=-1,
    )  # fmt: skip
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)


def _seg(folder: Path) -> None:
    """A tiny UperNet (ConvNeXt backbone) with ADE20K's 150 classes."""
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(
        hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    config = UperNetConfig(
        backbone_config=backbone, hidden_size=16, num_labels=150, use_auxiliary_head=False, auxiliary_in_channels=32
    )
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def build_annotators(root: Path) -> Path:
    """Write every annotator the preprocessors need into `root` (random weights, seeded)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        _annotators(root)
        _depth(root / "Intel" / "dpt-hybrid-midas")
        _seg(root / "openmmlab" / "upernet-convnext-small")
    return root
