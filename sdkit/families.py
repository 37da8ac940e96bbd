"""Model families of single-file checkpoints: which configs a file in the original (LDM / A1111 / ComfyUI) layout is
loaded with, decided from its keys and tensor shapes, offline.

sdkit keeps one small diffusers config folder per family in `sdkit/assets/configs/` (model_index.json and each
component's config.json, written from the published architecture numbers; tests check the parameter counts), plus
CLIP's BPE merges (`clip-merges.txt.gz`, 48,894 merges: the 49,408-token vocabulary is derived from them as CLIP
does). The shipped shapes model is a family too: its own folder is its config.

A file's family: diffusers' own `infer_diffusers_model_type` names the candidate (as `from_single_file` does), the
shapes family is always a candidate, and a candidate is taken only if every tensor the family expects is in the file
with the same shape (the expected names come from the family's configs through `sdkit.convert_keys`, on meta
tensors). A file that fits none is refused naming the closest family and the first difference.

    header = read_header(path)                      # names -> shapes, the safetensors metadata (no tensor is read)
    fit = best_fit(header)                          # Fit(family, config_dir, ...) or UserError
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

from sdkit.errors import UserError
from sdkit.weightfiles import MAX_HEADER, SAFETENSORS, weights_format

ASSETS = Path(__file__).parent / "assets"
CONFIGS = ASSETS / "configs"
MERGES = CONFIGS / "clip-merges.txt.gz"


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    config_dir: Path


FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        f.name: f
        for f in (
            Family("sd1", "SD 1.x", CONFIGS / "sd1"),
            Family("sd1-inpaint", "SD 1.x inpainting", CONFIGS / "sd1-inpaint"),
            Family("sd2-v", "SD 2.x 768 (v-prediction)", CONFIGS / "sd2-v"),
            Family("sd2", "SD 2.x 512 (epsilon)", CONFIGS / "sd2"),
            Family("sd2-inpaint", "SD 2.x inpainting", CONFIGS / "sd2-inpaint"),
            Family("sdxl", "SDXL base", CONFIGS / "sdxl"),
            Family("sdxl-inpaint", "SDXL inpainting", CONFIGS / "sdxl-inpaint"),
            Family("shapes", "shapes (sdkit's embedded model)", ASSETS / "shapes"),
        )
    }
)
# diffusers' model type (infer_diffusers_model_type) -> sdkit's family
DIFFUSERS_TYPES = MappingProxyType(
    {"v1": "sd1", "inpainting": "sd1-inpaint", "v2": "sd2-v", "inpainting_v2": "sd2-inpaint", "xl_base": "sdxl",
     "xl_inpaint": "sdxl-inpaint"}  # fmt: skip
)
COMPONENT_PREFIXES = ("model.diffusion_model.", "first_stage_model.")  # whose every tensor must be expected
EMA_PREFIX = "model_ema."


@dataclass(frozen=True)
class Header:
    """What a weights file holds, without its tensor data: names -> shapes (and dtypes), safetensors metadata."""

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)


def read_header(path: Path, *, allow_pickle: bool = False) -> Header:
    """The tensor names and shapes of a checkpoint: a safetensors header is read as JSON; a pickle (allowed) is loaded
    with torch's weights-only loader, as diffusers would."""
    path = Path(path)
    if weights_format(path) == SAFETENSORS:
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(length, MAX_HEADER)))
        meta = header.pop("__metadata__", None) or {}
        return Header(
            {k: tuple(v["shape"]) for k, v in header.items()},
            {k: v["dtype"] for k, v in header.items()},
            {k: v for k, v in meta.items() if isinstance(v, str)},
        )
    if not allow_pickle:
        raise UserError(f"{path} is a pickle: pass --allow-pickle to load it (with torch's weights_only loader)")
    import zipfile

    import torch

    from sdkit.weightfiles import refusing_code

    with refusing_code([path]):
        state = torch.load(path, map_location="meta", weights_only=True, mmap=zipfile.is_zipfile(path))
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return Header({k: tuple(v.shape) for k, v in tensors.items()}, {k: str(v.dtype) for k, v in tensors.items()})


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable JSON config ({err}): give a folder with diffusers configs") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a JSON object")
    return data


def text_encoder_names(config_dir: Path) -> list[str]:
    index = read_json(Path(config_dir) / "model_index.json")
    return [n for n in ("text_encoder", "text_encoder_2") if isinstance(index.get(n), list) and index[n][0]]


def pipeline_class(config_dir: Path) -> str:
    """The txt2img pipeline class a config folder describes (inpainting folders load as their txt2img class)."""
    named = str(read_json(Path(config_dir) / "model_index.json").get("_class_name", ""))
    sdxl = "XL" in named or "text_encoder_2" in text_encoder_names(config_dir)
    return "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"


def expected_shapes(config_dir: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Per component (unet, vae, text_encoder[, text_encoder_2]): the original-layout names and shapes a checkpoint
    of this config holds, from the configs alone (models built on the meta device, renamed by sdkit.convert_keys)."""
    import transformers
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from sdkit.convert_keys import (
        LAYOUTS,
        TEXT_FORMATS,
        UNET_PREFIX,
        VAE_PREFIX,
        layout_of,
        unet_to_original,
        vae_to_original,
    )

    config_dir = Path(config_dir)
    configs = {name: read_json(config_dir / name / "config.json") for name in ("unet", "vae")}
    states: dict[str, Any] = {}
    with init_empty_weights():
        states["unet"] = UNet2DConditionModel.from_config(configs["unet"]).state_dict()
        states["vae"] = AutoencoderKL.from_config(configs["vae"]).state_dict()
        acts = []
        for name in text_encoder_names(config_dir):
            te_config = read_json(config_dir / name / "config.json")
            cls = read_json(config_dir / "model_index.json")[name][1]
            model_class = getattr(transformers, cls if cls.startswith("CLIPTextModel") else "CLIPTextModel")
            states[name] = model_class(transformers.CLIPTextConfig(**te_config)).state_dict()
            acts.append(te_config.get("hidden_act", "quick_gelu"))
    layout = layout_of(pipeline_class(config_dir), acts[0] if acts else "quick_gelu")
    shapes = {
        "unet": {UNET_PREFIX + k: v for k, v in unet_to_original(states.pop("unet"), configs["unet"]).items()},
        "vae": {VAE_PREFIX + k: v for k, v in vae_to_original(states.pop("vae"), configs["vae"]).items()},
    }
    for name, state in states.items():
        prefix, text_format = LAYOUTS[layout][name]
        shapes[name] = {prefix + k: v for k, v in TEXT_FORMATS[text_format](state).items()}
    return {name: {k: tuple(v.shape) for k, v in tensors.items()} for name, tensors in shapes.items()}


@dataclass(frozen=True)
class Fit:
    """How a checkpoint fits one family's (or config folder's) expected tensors."""

    name: str  # the family name, or the config folder
    title: str
    config_dir: Path
    matched: int  # expected tensors present with the same shape
    total: int
    problems: tuple[str, ...]  # what differs, most telling first
    has_vae: bool
    ema_only: bool  # the UNet is only present as model_ema.* (flattened names)

    @property
    def ok(self) -> bool:
        return not self.problems


def ema_name(key: str) -> str:
    """The flattened name under which LDM checkpoints keep the EMA copy of a UNet weight."""
    return EMA_PREFIX + "".join(key.split(".")[1:])


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def fit(header: Header, name: str, title: str, config_dir: Path, memo: dict | None = None) -> Fit:
    """How `header` fits the tensors of `config_dir` (`memo` keeps each folder's expected shapes across calls)."""
    shapes = header.shapes
    memo = {} if memo is None else memo
    if str(config_dir) not in memo:
        memo[str(config_dir)] = expected_shapes(config_dir)
    expected = memo[str(config_dir)]
    wrong, missing, matched, total = [], [], 0, 0
    has_vae = any(k in shapes for k in expected["vae"])
    unet = expected["unet"]
    ema_only = not any(k in shapes for k in unet) and all(ema_name(k) in shapes for k in unet)
    for component, tensors in expected.items():
        if component == "vae" and not has_vae:
            continue
        for key, shape in tensors.items():
            total += 1
            found = shapes.get(ema_name(key) if component == "unet" and ema_only else key)
            if found is None:
                missing.append(key)
            elif tuple(found) != shape:
                wrong.append(f"{key} is {_shape_text(found)} in the file, {_shape_text(shape)} in {title}")
            else:
                matched += 1
    known = set().union(*expected.values())
    unexpected = [k for k in shapes if k.startswith(COMPONENT_PREFIXES) and k not in known]
    problems = wrong[:1]
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    problems += wrong[1:2]
    return Fit(name, title, Path(config_dir), matched, total, tuple(problems), has_vae, ema_only)


def diffusers_type(header: Header) -> str | None:
    """diffusers' guess of the model type from the keys (the guess `from_single_file` makes), on shapes only."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    proxy = {k: SimpleNamespace(shape=v) for k, v in header.shapes.items()}
    try:
        return infer_diffusers_model_type(proxy)
    except Exception:  # a guess that needs tensor values (models sdkit does not load anyway)
        return None


def family_fit(header: Header, family: str, memo: dict | None = None) -> Fit:
    f = FAMILIES[family]
    return fit(header, f.name, f.title, f.config_dir, memo)


def best_fit(header: Header, where: Path | str, memo: dict | None = None) -> Fit:
    """The family the checkpoint fits (diffusers' candidate first, then the others); a UserError naming the closest
    family and what differs when none fits."""
    candidate = DIFFUSERS_TYPES.get(diffusers_type(header) or "")
    order = [candidate] * bool(candidate) + [n for n in FAMILIES if n != candidate]
    fits = []
    for name in order:
        result = family_fit(header, name, memo)
        if result.ok:
            return result
        fits.append(result)
    closest = max(fits, key=lambda r: (r.matched / max(r.total, 1), r.name == candidate))
    raise UserError(
        f"{where} fits no model family sdkit knows: closest is {closest.title} ({closest.matched:,} of "
        f"{closest.total:,} tensors fit; {'; '.join(closest.problems[:2])}): pass --config DIR (a diffusers folder with "
        f"this model's configs) or --config FAMILY ({', '.join(FAMILIES)})"
    )


def byte_symbols() -> list[str]:
    """CLIP's byte-level alphabet in CLIP's own order (its first 256 token ids): the printable bytes as themselves,
    then every other byte mapped to chr(256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def build_tokenizer(folder: Path):
    """A CLIPTokenizer for a config folder's tokenizer subfolder: its own vocabulary files if it has them, else CLIP's
    49,408-token vocabulary derived from the shipped merges (as CLIP's SimpleTokenizer builds it), with the folder's
    tokenizer_config.json (SD 2.x and SDXL's second tokenizer pad with "!", SD 1.x with <|endoftext|>)."""
    from transformers import CLIPTokenizer

    from sdkit.tokenizer import BOS_TOKEN, END_OF_WORD, EOS_TOKEN

    folder = Path(folder)
    if (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file():
        return CLIPTokenizer.from_pretrained(str(folder))
    settings = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    merges_text = gzip.decompress(MERGES.read_bytes()).decode("utf-8")
    merges = [line for line in merges_text.splitlines()[1:] if line]
    symbols = byte_symbols()
    vocab = [*symbols, *(s + END_OF_WORD for s in symbols), *("".join(m.split(" ")) for m in merges), BOS_TOKEN, EOS_TOKEN]
    with tempfile.TemporaryDirectory(prefix="sdkit-clip-") as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text(merges_text)
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, **settings}))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    if len(tokenizer) != 49408:
        raise RuntimeError(f"CLIP vocabulary built from {MERGES} has {len(tokenizer)} tokens, not 49,408")
    return tokenizer
