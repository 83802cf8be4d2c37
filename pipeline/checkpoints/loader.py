"""Load a checkpoint into an `SDModel`, offline.

Single files (A1111 / original LDM layout) are read once into a state dict (safetensors, or a `.ckpt`
through `torch.load(weights_only=True)` so a pickle that would run code is refused, never executed),
classified by `detect_family`, and each component is built with diffusers' own converters from the
shipped config directory of its family (`pipeline/configs/<family>`), always with
`local_files_only=True`:

    UNet2DConditionModel.from_single_file(sd, config=DIR, subfolder="unet")
    AutoencoderKL.from_single_file(sd, config=DIR, subfolder="vae")
    create_diffusers_clip_model_from_ldm(CLIPTextModel[WithProjection], sd, config=DIR, subfolder=...)

diffusers builds modules on the meta device and silently leaves a tensor there when the file lacks
it; every component is checked and a missing part is a ModelLoadError naming the file and the part.

Prediction type (epsilon or v): a sidecar `<stem>.yaml` saying `parameterization: "v"` (A1111's
convention) wins; else a `v_pred` key in the file (v-pred fine-tunes mark themselves so); else, for
SD 2.x only, the weight probe A1111 uses (run the UNet once on a constant 8x8 latent at t=999: a
v-model's output minus the input has a mean below -1, an epsilon model's does not); else the config's.
SD 2.x then takes the `sd2` (768-v) or `sd2-base` (512, epsilon) config.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
import time
import zipfile
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from pipeline.checkpoints.detect import Detection, detect_family, shapes_of
from pipeline.checkpoints.registry import CheckpointInfo
from pipeline.errors import ModelLoadError
from pipeline.model import SDModel

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Old SD 1.x files lack the `text_model.` level that transformers expects (A1111 renames these too).
_CLIP_RENAMES = {
    "cond_stage_model.transformer.embeddings.": "cond_stage_model.transformer.text_model.embeddings.",
    "cond_stage_model.transformer.encoder.": "cond_stage_model.transformer.text_model.encoder.",
    "cond_stage_model.transformer.final_layer_norm.": "cond_stage_model.transformer.text_model.final_layer_norm.",
}
_V_YAML = re.compile(r"^\s*parameterization\s*:\s*[\"']?v[\"']?\s*(#.*)?$", re.MULTILINE)


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a single-file checkpoint, on the CPU. `.safetensors` preferred; `.ckpt`/`.pt` are
    unpickled with `weights_only=True` (memory-mapped when zip-based), so code in a pickle never runs."""
    path = str(path)
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            raw: Any = load_file(path, device="cpu")
        else:
            mmap = zipfile.is_zipfile(path)
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(path, "refused: the pickle holds more than tensors (it could run code); "
                                   f"convert it to .safetensors. Detail: {first}") from exc
    except Exception as exc:
        raise ModelLoadError(path, f"unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    while isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ModelLoadError(path, f"not a state dict (found {type(raw).__name__})")
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        for old, new in _CLIP_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def header_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a checkpoint; for .safetensors from the header only (no tensor data read)."""
    if str(path).lower().endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        except Exception as exc:
            raise ModelLoadError(str(path), f"unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    return shapes_of(read_state_dict(path))


def detect_checkpoint(info: CheckpointInfo) -> Detection:
    """Detect the family of `info` (header only for safetensors) and remember it on `info.family`."""
    if info.kind == "diffusers":
        family = _diffusers_family(Path(info.filename))
        info.family = family
        return Detection(family, family, 4, False, False, None)
    det = detect_family(header_shapes(info.filename), info.filename)
    info.family = det.family
    return det


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
class _QuietCast(logging.Filter):
    """Drops diffusers' "modules that should be kept in float32: []" notice, which its own
    `from_single_file(torch_dtype=...)` triggers on every load (an empty list: nothing to keep)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


def _checked(path: str, part: str, build: Callable[[], Any]) -> Any:
    """Run a component builder; any failure or tensor left on the meta device is a ModelLoadError."""
    quiet = _QuietCast()
    diffusers_log = logging.getLogger("diffusers.models.modeling_utils")
    diffusers_log.addFilter(quiet)
    try:
        module = build()
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(path, f"{part}: {type(exc).__name__}: {exc}") from exc
    finally:
        diffusers_log.removeFilter(quiet)
    meta = [n for n, t in chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if meta:
        raise ModelLoadError(path, f"{part} weights missing from the file ({len(meta)} tensors, e.g. "
                                   f"{', '.join(meta[:3])})")
    return module.eval().requires_grad_(False)


def _require_prefix(path: str, sd: dict[str, torch.Tensor], prefix: str, part: str) -> None:
    if not any(k.startswith(prefix) for k in sd):
        raise ModelLoadError(path, f"{part} weights missing from the file (no {prefix}* keys)")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _sidecar_prediction(info: CheckpointInfo) -> str | None:
    yaml = Path(info.filename).with_suffix(".yaml") if info.kind != "diffusers" else None
    if yaml is None or not yaml.is_file():
        return None
    text = yaml.read_text(encoding="utf-8", errors="replace")
    return "v_prediction" if _V_YAML.search(text) else "epsilon"


@torch.no_grad()
def probe_v_prediction(unet: Any) -> bool:
    """A1111's test for SD 2.x: at t=999 on a constant latent an epsilon model predicts about the input
    itself, a v-model about its negative; so mean(output - input) < -1 means v-prediction."""
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device)
    ctx = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=param.dtype, device=param.device)
    out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=ctx).sample
    return float((out.float() - x[:, : out.shape[1]].float()).mean()) < -1


def _tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=77)


def load_checkpoint(info: CheckpointInfo, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, config_dir: str | Path | None = None,
                    compute_hash: bool = True) -> SDModel:
    """Load `info` onto `device` in `dtype`, fully offline.

    config_dir: a diffusers-layout config directory to use instead of the shipped one of the detected
        family (tests pass the tiny fixture's; real checkpoints use `pipeline/configs/<family>`).
    compute_hash: make sure the sha256 is known (cached after the first time) so the title and the
        infotext's "Model hash" are complete, as A1111 does on load.
    Raises ModelLoadError(path, reason) for anything unreadable, unsupported or incomplete.
    """
    device = torch.device(device)
    if info.kind == "builtin":
        from pipeline.builtin import build_builtin_model

        return build_builtin_model(device, dtype)
    if not Path(info.filename).exists():
        raise ModelLoadError(info.filename, "file not found (refresh the checkpoint list?)")
    started = time.perf_counter()
    if compute_hash:
        try:
            info.ensure_hash()
        except OSError as exc:
            raise ModelLoadError(info.filename, f"cannot read: {exc}") from exc
    if info.kind == "diffusers":
        model = _load_diffusers_folder(info, device, dtype)
    else:
        model = _load_single_file(info, device, dtype, Path(config_dir) if config_dir else None)
    log.info("loaded %s (%s) in %.1fs", info.title, model.family, time.perf_counter() - started)
    return model


def _vae_dtype(family: str, dtype: torch.dtype) -> torch.dtype:
    # SDXL's VAE overflows in fp16 (its config says force_upcast); keep it in fp32 then.
    return torch.float32 if (family == "sdxl" and dtype == torch.float16) else dtype


def _load_single_file(info: CheckpointInfo, device: torch.device, dtype: torch.dtype,
                      override: Path | None) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    path = info.filename
    sd = read_state_dict(path)
    det = detect_family(shapes_of(sd), path)
    info.family = det.family
    family = det.family

    if override is not None:
        cfg_dir = override
    elif family == "sd1":
        cfg_dir = CONFIGS_DIR / ("sd1-inpainting" if det.unet_in_channels == 9 else "sd1")
    else:
        cfg_dir = CONFIGS_DIR / family
    if not (cfg_dir / "unet" / "config.json").is_file():
        raise ModelLoadError(path, f"config directory {cfg_dir} has no unet/config.json")

    unet_cfg = _read_json(cfg_dir / "unet" / "config.json")
    unet_kwargs: dict[str, Any] = {}
    if int(unet_cfg.get("in_channels", 4)) != det.unet_in_channels:
        unet_kwargs["in_channels"] = det.unet_in_channels
    common = {"config": str(cfg_dir), "local_files_only": True}
    vae_dtype = _vae_dtype(family, dtype)

    _require_prefix(path, sd, UNET_PREFIX, "UNet")
    unet = _checked(path, "UNet", lambda: UNet2DConditionModel.from_single_file(
        sd, subfolder="unet", torch_dtype=dtype, **common, **unet_kwargs))
    _require_prefix(path, sd, VAE_PREFIX, "VAE")
    vae = _checked(path, "VAE", lambda: AutoencoderKL.from_single_file(
        sd, subfolder="vae", torch_dtype=vae_dtype, **common))

    if family == "sdxl":
        _require_prefix(path, sd, "conditioner.embedders.0.transformer.", "text encoder 1 (CLIP ViT-L)")
        _require_prefix(path, sd, "conditioner.embedders.1.model.", "text encoder 2 (OpenCLIP ViT-bigG)")
        encoders = [
            _checked(path, "text encoder 1 (CLIP ViT-L)", lambda: create_diffusers_clip_model_from_ldm(
                CLIPTextModel, sd, subfolder="text_encoder", torch_dtype=dtype, **common)),
            _checked(path, "text encoder 2 (OpenCLIP ViT-bigG)", lambda: create_diffusers_clip_model_from_ldm(
                CLIPTextModelWithProjection, sd, subfolder="text_encoder_2", torch_dtype=dtype, **common)),
        ]
        tokenizers = [_tokenizer(cfg_dir / "tokenizer"), _tokenizer(cfg_dir / "tokenizer_2")]
    else:
        prefix = "cond_stage_model.model." if family == "sd2" else "cond_stage_model.transformer."
        part = "text encoder (OpenCLIP ViT-H)" if family == "sd2" else "text encoder (CLIP ViT-L)"
        _require_prefix(path, sd, prefix, part)
        encoders = [_checked(path, part, lambda: create_diffusers_clip_model_from_ldm(
            CLIPTextModel, sd, subfolder="text_encoder", torch_dtype=dtype, **common))]
        tokenizers = [_tokenizer(cfg_dir / "tokenizer")]
    has_v_pred_key, has_ztsnr = det.v_pred_key, det.ztsnr_key
    sd.clear()  # drop what the modules did not take over

    scheduler_config = _read_json(cfg_dir / "scheduler" / "scheduler_config.json")
    prediction, source = _sidecar_prediction(info), "sidecar yaml"
    if prediction is None and has_v_pred_key:
        prediction, source = "v_prediction", "v_pred key"
    if prediction is None and family == "sd2" and override is None:
        prediction, source = ("v_prediction" if probe_v_prediction(unet) else "epsilon"), "weight probe"
    if prediction is None:
        prediction, source = scheduler_config.get("prediction_type", "epsilon"), "config"
    if family == "sd2" and override is None and prediction == "epsilon":
        cfg_dir = CONFIGS_DIR / "sd2-base"
        scheduler_config = _read_json(cfg_dir / "scheduler" / "scheduler_config.json")
        unet.register_to_config(sample_size=_read_json(cfg_dir / "unet" / "config.json")["sample_size"])
    scheduler_config["prediction_type"] = prediction
    if has_ztsnr:
        scheduler_config["rescale_betas_zero_snr"] = True

    for module in (unet, *encoders):
        module.to(device)
    vae.to(device)
    info.config = info.config or str(cfg_dir)
    return SDModel(
        title=info.title, family=family, unet=unet, vae=vae, text_encoders=encoders, tokenizers=tokenizers,
        scheduler_config=scheduler_config, device=device, dtype=dtype, vae_dtype=vae_dtype,
        extra={"checkpoint": info, "filename": info.filename, "sha256": info.sha256,
               "model_name": info.model_name, "config_dir": str(cfg_dir), "variant": det.variant,
               "inpainting": det.unet_in_channels == 9, "unet_in_channels": det.unet_in_channels,
               "prediction_type_source": source, "diffusers_model_type": det.diffusers_type},
    )


def _diffusers_family(folder: Path) -> str:
    if (folder / "text_encoder_2").is_dir():
        return "sdxl"
    try:
        width = int(_read_json(folder / "unet" / "config.json").get("cross_attention_dim", 768))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(str(folder), f"unreadable unet/config.json: {exc}") from exc
    return "sd2" if width == 1024 else "sd1"


def _load_diffusers_folder(info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(info.filename)
    path = str(folder)
    family = _diffusers_family(folder)
    info.family = family
    vae_dtype = _vae_dtype(family, dtype)
    opts = {"local_files_only": True}
    unet = _checked(path, "UNet", lambda: UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet", torch_dtype=dtype, **opts))
    vae = _checked(path, "VAE", lambda: AutoencoderKL.from_pretrained(
        folder, subfolder="vae", torch_dtype=vae_dtype, **opts))
    encoders = [_checked(path, "text encoder", lambda: CLIPTextModel.from_pretrained(
        folder / "text_encoder", dtype=dtype, **opts))]
    tokenizers = [_tokenizer(folder / "tokenizer")]
    if family == "sdxl":
        encoders.append(_checked(path, "text encoder 2", lambda: CLIPTextModelWithProjection.from_pretrained(
            folder / "text_encoder_2", dtype=dtype, **opts)))
        tokenizers.append(_tokenizer(folder / "tokenizer_2"))
    try:
        scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(path, f"scheduler config: {exc}") from exc
    for module in (unet, vae, *encoders):
        module.to(device)
    return SDModel(
        title=info.title, family=family, unet=unet, vae=vae, text_encoders=encoders, tokenizers=tokenizers,
        scheduler_config=scheduler_config, device=device, dtype=dtype, vae_dtype=vae_dtype,
        extra={"checkpoint": info, "filename": info.filename, "sha256": info.sha256,
               "model_name": info.model_name, "config_dir": path, "variant": family,
               "inpainting": int(unet.config.in_channels) == 9, "unet_in_channels": int(unet.config.in_channels),
               "prediction_type_source": "config", "diffusers_model_type": None},
    )
