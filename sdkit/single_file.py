"""Single-file checkpoints (original LDM / A1111 / ComfyUI layout) loaded offline through diffusers' `from_single_file`,
with the configs sdkit keeps (`sdkit.families`) or the ones `--config` names. Never a hub request.

    choice = choose(path, config=None)     # the family or config folder, prediction type, VAE present, EMA-only
    pipe = load(path, choice, dtype=torch.float32, vae=None)

`--config` takes a diffusers folder (model_index.json and the components' config.json; weights are not needed), a
family name (`sd1`, `sd2`, `sd2-v`, `sdxl`, ... `sdkit.families.FAMILIES`), or an original-format YAML as A1111 keeps
beside a checkpoint (`model.yaml` for `model.safetensors`, picked up on its own when present), whose `parameterization`
(`v` or `eps`) says how the model predicts; the architecture still comes from the keys.

The prediction type of a family (the scheduler's `prediction_type`) is taken, first found: a YAML (`--config FILE`,
else beside the file), the file's header (`modelspec.prediction_type`, kohya's `ss_v_parameterization`), ComfyUI's
`v_pred` key (with `ztsnr`: zero terminal SNR), else the family's own (SD 2.x: v-prediction at 768 px, as diffusers assumes; an SD 2.x 512-px epsilon
file wants a YAML or `--config sd2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdkit.errors import UserError
from sdkit.families import (
    FAMILIES,
    Fit,
    Header,
    best_fit,
    build_tokenizer,
    ema_name,
    expected_shapes,
    family_fit,
    fit,
    pipeline_class,
    read_header,
    read_json,
)
from sdkit.weightfiles import quiet_libraries, refusing_code

YAML_SUFFIXES = (".yaml", ".yml")
MAX_YAML = 1 << 20
V_PREDICTION = "v_prediction"
EPSILON = "epsilon"


@dataclass(frozen=True)
class Choice:
    """How a checkpoint loads: its fit (family or config folder), the prediction type if one was given or found."""

    fit: Fit
    prediction_type: str | None  # None: the config's own
    source: str  # where the prediction type came from ("" when it is the config's)
    zero_snr: bool = False  # the file carries ComfyUI's `ztsnr` key (trained with zero terminal SNR)

    @property
    def config_dir(self) -> Path:
        return self.fit.config_dir


def sibling_yaml(path: Path) -> Path | None:
    """A1111's convention: `NAME.yaml` beside `NAME.safetensors` is the checkpoint's original config."""
    for suffix in YAML_SUFFIXES:
        candidate = Path(path).with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def yaml_prediction_type(path: Path) -> str:
    """`model.params.parameterization` of an original LDM config: "v" -> v_prediction, else epsilon."""
    import yaml

    if Path(path).stat().st_size > MAX_YAML:
        raise UserError(f"{path} is over 1 MiB: an original model config is a few kB; give the right YAML file")
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable YAML config ({str(err).splitlines()[0]}): fix or remove it") from None
    params = (data or {}).get("model", {}).get("params", {}) if isinstance(data, dict) else {}
    if not isinstance(params, dict):
        raise UserError(f"{path}: model.params is not a mapping: give an original LDM config (as A1111's configs/)")
    return V_PREDICTION if params.get("parameterization") == "v" else EPSILON


def header_prediction_type(header: Header) -> tuple[str | None, str]:
    meta = header.metadata
    spec = meta.get("modelspec.prediction_type", "").lower()
    if spec in ("v", "v_prediction", "epsilon", "eps"):
        return (V_PREDICTION if spec.startswith("v") else EPSILON), "the file's modelspec.prediction_type"
    if meta.get("ss_v_parameterization", "").lower() == "true":
        return V_PREDICTION, "the file's ss_v_parameterization"
    if "v_pred" in header.shapes:
        return V_PREDICTION, "the file's v_pred key"
    return None, ""


def choose(path: Path, config: str | None = None, *, allow_pickle: bool = False, header: Header | None = None) -> Choice:
    """Which configs `path` loads with (see the module docstring); UserError when nothing fits."""
    path = Path(path)
    header = header or read_header(path, allow_pickle=allow_pickle)
    target = Path(config).expanduser() if config else None
    if target is not None and target.is_dir():
        if not (target / "model_index.json").is_file():
            raise UserError(f"--config {config}: no model_index.json in that folder: give a diffusers folder, a family "
                            f"({', '.join(FAMILIES)}) or an original .yaml")  # fmt: skip
        result = fit(header, str(target), str(target), target)
        if not result.ok:
            raise UserError(f"{path} does not fit --config {config} ({result.matched:,} of {result.total:,} tensors fit; "
                            f"{'; '.join(result.problems[:2])})")  # fmt: skip
        return _checked(Choice(result, None, ""), path)
    if config and config in FAMILIES:
        result = family_fit(header, config)
        if not result.ok:
            raise UserError(f"{path} is not a {result.title} checkpoint ({result.matched:,} of {result.total:,} tensors "
                            f"fit; {'; '.join(result.problems[:2])}): drop --config to let sdkit detect the family")  # fmt: skip
        return _checked(Choice(result, None, ""), path)
    yaml_file = target if target is not None else sibling_yaml(path)
    if target is not None and (not target.is_file() or target.suffix.lower() not in YAML_SUFFIXES):
        raise UserError(f"--config {config}: not a folder, a family ({', '.join(FAMILIES)}) or a .yaml file")
    prediction, source = (yaml_prediction_type(yaml_file), str(yaml_file)) if yaml_file else header_prediction_type(header)
    result = best_fit(header, path)
    if result.name in ("sd2", "sd2-v") and prediction is not None:  # SD 2.x: the two families differ only here
        result = family_fit(header, "sd2-v" if prediction == V_PREDICTION else "sd2")
    return _checked(Choice(result, prediction, source, "ztsnr" in header.shapes), path)


def _checked(choice: Choice, path: Path) -> Choice:
    """Refuse what diffusers' single-file loader would load wrongly: SDXL text encoders of equal width (it picks the
    second encoder's weights by the first one's width)."""
    names = [n for n in ("text_encoder", "text_encoder_2") if (choice.config_dir / n / "config.json").is_file()]
    widths = [read_json(choice.config_dir / n / "config.json").get("hidden_size") for n in names]
    if len(widths) == 2 and widths[0] == widths[1]:
        raise UserError(
            f"{path}: both text encoders are {widths[0]} wide, which diffusers' single-file loader cannot tell apart "
            "(it would load the first one's weights twice): keep this model as a diffusers folder"
        )
    return choice


def _scheduler(config_dir: Path, prediction_type: str, zero_snr: bool):
    import diffusers

    config = read_json(config_dir / "scheduler" / "scheduler_config.json")
    cls = getattr(diffusers, str(config.get("_class_name", "PNDMScheduler")))
    extra = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"} if zero_snr else {}
    return cls.from_config({**config, "prediction_type": prediction_type, **extra})


def _ema_unet(path: Path, choice: Choice, dtype):
    """A UNet from the EMA copy (`model_ema.*`) of a file that holds no other."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    keys = expected_shapes(choice.config_dir)["unet"]
    tensors = load_file(str(path))
    state = {key: tensors[ema_name(key)] for key in keys}
    return UNet2DConditionModel.from_single_file(state, config=str(choice.config_dir), subfolder="unet", dtype=dtype)


def load(path: Path, choice: Choice, *, dtype, vae: Any = None):
    """The txt2img pipeline of a single-file checkpoint, offline (`local_files_only`), with the chosen configs.
    `vae` (a loaded AutoencoderKL) replaces the file's own, and is required when the file has none."""
    import diffusers

    path = Path(path)
    config_dir = choice.config_dir
    if not choice.fit.has_vae and vae is None:
        raise UserError(f"{path} holds no VAE (only the UNet and text encoders): give one with --vae PATH|NAME")
    kwargs: dict[str, Any] = {}
    index = read_json(config_dir / "model_index.json")
    for name in ("tokenizer", "tokenizer_2"):
        if isinstance(index.get(name), list) and index[name][0]:
            kwargs[name] = build_tokenizer(config_dir / name)
    if choice.prediction_type is not None:  # ComfyUI's ztsnr key: zero terminal SNR, sampled with trailing timesteps
        kwargs["scheduler"] = _scheduler(config_dir, choice.prediction_type, choice.zero_snr)
    if vae is not None:
        kwargs["vae"] = vae
    if choice.fit.ema_only:
        kwargs["unet"] = _ema_unet(path, choice, dtype)
    cls = getattr(diffusers, pipeline_class(config_dir))
    try:
        with quiet_libraries(), refusing_code([path]):
            return cls.from_single_file(str(path), config=str(config_dir), local_files_only=True, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:  # a hub lookup (never wanted) or a config that does not fit after all
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load {path} with the configs in {config_dir} ({first}): pass --config DIR") from None


def describe(header: Header, memo: dict | None = None) -> str:
    """A family's title for listings, or "unknown" (`memo`: see sdkit.families.fit)."""
    try:
        return best_fit(header, "", memo).title
    except UserError:
        return "unknown"
