"""A1111's LDSR files (`models/LDSR/model.safetensors` or `model.ckpt`, with `project.yaml`) read safely and
turned into the model: the UNet and the VQ decoder built from the tensors, the diffusion schedule from the
checkpoint's `alphas_cumprod` (else from the YAML's linear schedule, else LDSR's own).

`.ckpt` files are read with `torch.load(weights_only=True)` only. The released LDSR checkpoint is a PyTorch
Lightning one: its pickle also names Lightning's `ModelCheckpoint` class (a dict key of its callback states)
and may hold numpy scalars; those few names, and nothing else, are allowed, the Lightning class as an inert
stand-in that has no code (A1111's safe unpickler allows the same names). A file needing any other global is
refused (UnsafeModelFile) and nothing in it runs. Nothing is downloaded: without the files, no LDSR.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ..errors import ModelLoadError, UnsafeModelFile, UpscalerError
from ..loading import read_state_dict
from .unet import UNet, read_shape
from .vq import VQDecoder

log = logging.getLogger(__name__)

MODEL_NAMES: tuple[str, ...] = ("model.safetensors", "model.ckpt")
"""The file names A1111 looks for, in its order of preference."""
CONFIG_NAME = "project.yaml"
MAX_CONFIG_BYTES = 10 * 1024 * 1024
"""A1111 deletes a project.yaml this big as a failed download; it is ignored here (never deleted)."""
UNET_PREFIX = "model.diffusion_model."
FIRST_STAGE_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."
SCALE = 4
"""LDSR is a 4x model: A1111 hard-codes the factor in its pre- and post-processing."""


@dataclass(frozen=True)
class LdsrFiles:
    model: Path
    config: Path | None


@dataclass(frozen=True)
class LdsrConfig:
    """What project.yaml contributes (defaults: LDSR's released project.yaml)."""

    linear_start: float = 0.0015
    linear_end: float = 0.0155
    timesteps: int = 1000
    head_channels: int = 32
    num_heads: int | None = None
    use_ema: bool = True


def _first(folder: Path, name: str) -> Path | None:
    if not folder.is_dir():
        return None
    direct = folder / name
    if direct.is_file():
        return direct
    found = sorted(p for p in folder.rglob("*") if p.name.lower() == name and p.is_file())
    return found[0] if found else None


def find_files(folder: Path) -> LdsrFiles | None:
    """The model file (model.safetensors before model.ckpt, as A1111) and project.yaml of an LDSR folder."""
    for name in MODEL_NAMES:
        model = _first(folder, name)
        if model is not None:
            config = _first(folder, CONFIG_NAME)
            if config is not None and config.stat().st_size >= MAX_CONFIG_BYTES:
                log.warning("ignoring %s: %d bytes is not a config (a failed download?)", config,
                            config.stat().st_size)
                config = None
            return LdsrFiles(model, config)
    return None


def read_config(path: Path | None) -> LdsrConfig:
    """The schedule and attention head width of a CompVis latent-diffusion project.yaml."""
    if path is None:
        return LdsrConfig()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        params: dict[str, Any] = (doc.get("model") or {}).get("params") or {}
        unet: dict[str, Any] = (params.get("unet_config") or {}).get("params") or {}
        heads = unet.get("num_heads")
        head_channels = unet.get("num_head_channels")
        return LdsrConfig(
            linear_start=float(params.get("linear_start", 0.0015)),
            linear_end=float(params.get("linear_end", 0.0155)),
            timesteps=int(params.get("timesteps", 1000)),
            head_channels=int(head_channels) if head_channels not in (None, -1) else 32,
            num_heads=int(heads) if heads not in (None, -1) and head_channels in (None, -1) else None,
            use_ema=bool(params.get("use_ema", True)),
        )
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:
        raise ModelLoadError(path, f"not a readable latent-diffusion project.yaml ({exc})") from exc


class LightningCallbackStandIn:
    """Stands for `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` while a checkpoint is read:
    a plain class with no behaviour, so naming it in a pickle runs nothing."""


_LIGHTNING_CALLBACK = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"


def _allowed_globals() -> dict[str, object]:
    """The globals (by the name a pickle uses) a Lightning checkpoint may need beyond tensors: data only."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    scalar = core.multiarray.scalar
    allowed: dict[str, object] = {
        _LIGHTNING_CALLBACK: LightningCallbackStandIn,
        "numpy.core.multiarray.scalar": scalar,
        "numpy._core.multiarray.scalar": scalar,
        "numpy.dtype": np.dtype,
    }
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, name):
            allowed[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return allowed


def _load_pickle(path: Path, allowed: list[tuple[object, str]]) -> object:
    """`torch.load(weights_only=True)` with `allowed` globals, memory-mapped when the file is a zip."""
    with torch.serialization.safe_globals(allowed):  # type: ignore[arg-type]
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def _refused(path: Path, detail: str) -> UnsafeModelFile:
    return UnsafeModelFile(path, f"{detail}, which is never loaded here (only tensors and a Lightning "
                           "checkpoint's callback names are); convert it to .safetensors")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an LDSR file. `.safetensors` as `read_state_dict`; a `.ckpt` through `weights_only`
    (memory-mapped: a 2 GB file is not copied into memory first), allowing exactly the globals of
    `_allowed_globals` that its pickle names and refusing it when it names any other."""
    if path.suffix.lower() != ".ckpt":
        return read_state_dict(path)
    try:
        try:
            raw = _load_pickle(path, [])
        except pickle.UnpicklingError:
            try:
                needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # a legacy (non-zip) pickle: only plain weights_only applies
                raise _refused(path, "it holds pickled objects other than tensors") from None
            allowed = _allowed_globals()
            extra = [name for name in needed if name not in allowed]
            if extra:
                raise _refused(path, f"its pickle needs {', '.join(sorted(extra))}") from None
            # numpy's dtype classes are built (not named) by a dtype's pickle: allowed with numpy's names
            stand_ins = [(allowed[name], name) for name in needed]
            stand_ins += [(v, k) for k, v in allowed.items()
                          if k.startswith("numpy.dtypes.") and k not in needed]
            try:
                raw = _load_pickle(path, stand_ins)
            except pickle.UnpicklingError as exc:
                raise _refused(path, "its pickle holds objects other than tensors and plain data") from exc
    except UpscalerError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... on garbage
        raise ModelLoadError(path, f"not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ModelLoadError(path, f"holds a {type(raw).__name__}, not a state dict")
    tensors = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(path, "holds no tensors")
    return tensors


def linear_alphas_cumprod(start: float, end: float, timesteps: int) -> torch.Tensor:
    """The DDPM "linear" schedule (linear in sqrt(beta)), as float64."""
    betas = torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class LdsrModel(nn.Module):
    """The denoiser, the first stage's decoder and the schedule (float64 cumulative alphas)."""

    def __init__(self, unet: UNet, first_stage: VQDecoder, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.first_stage = first_stage
        self.alphas_cumprod = alphas_cumprod.to(torch.float64).cpu()
        self.latent_channels = first_stage.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device


def _unet_weights(state: dict[str, torch.Tensor], use_ema: bool) -> dict[str, torch.Tensor]:
    """The UNet's tensors; its EMA copies instead when the checkpoint has them all (A1111 samples inside
    the model's `ema_scope`, which swaps them in)."""
    weights = {k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    if use_ema:
        ema = {k: state.get(EMA_PREFIX + "diffusion_model" + k.replace(".", "")) for k in weights}
        if all(v is not None and v.shape == weights[k].shape for k, v in ema.items()):
            return {k: v for k, v in ema.items() if v is not None}
    return weights


def build_model(state: dict[str, torch.Tensor], config: LdsrConfig, source: Path) -> LdsrModel:
    """The model of an LDSR state dict (CompVis key layout), on the CPU in float32, in eval mode."""
    unet_sd = {k: v.float() for k, v in _unet_weights(state, config.use_ema).items()}
    vq_sd = {k[len(FIRST_STAGE_PREFIX):]: v.float() for k, v in state.items()
             if k.startswith(FIRST_STAGE_PREFIX)}
    if not unet_sd or not vq_sd:
        raise ModelLoadError(source, "not an LDSR checkpoint: it needs `model.diffusion_model.*` (the UNet) "
                             "and `first_stage_model.*` (the VQ autoencoder) tensors")
    try:
        shape = read_shape(unet_sd, config.head_channels, config.num_heads)
        unet = UNet(shape)
        unet.load_state_dict(unet_sd, strict=True)
        first_stage = VQDecoder(vq_sd)
        decoding = {k: v for k, v in vq_sd.items() if not k.startswith(("encoder.", "quant_conv."))}
        first_stage.load_state_dict(decoding, strict=True)
    except (UpscalerError, RuntimeError, KeyError, ValueError) as exc:
        raise ModelLoadError(source, f"its tensors do not form an LDSR model ({exc})") from exc
    if first_stage.factor != SCALE:
        raise ModelLoadError(source, f"its first stage upscales {first_stage.factor}x; LDSR's is 4x")
    if shape.in_channels != first_stage.embed_dim + 3 or shape.out_channels != first_stage.embed_dim:
        raise ModelLoadError(
            source, f"its UNet takes {shape.in_channels} channels and gives {shape.out_channels}; an LDSR "
            f"UNet takes the {first_stage.embed_dim} latent channels plus the 3 of the low-resolution image")
    stored = state.get("alphas_cumprod")
    if stored is not None and stored.ndim == 1 and stored.numel() > 1:
        alphas = stored.to(torch.float64)
    else:
        alphas = linear_alphas_cumprod(config.linear_start, config.linear_end, config.timesteps)
    return LdsrModel(unet, first_stage, alphas).eval()


def load_model(files: LdsrFiles) -> LdsrModel:
    """Read and build the model of `files`. Raises UnsafeModelFile / ModelLoadError."""
    config = read_config(files.config)
    state = read_checkpoint(files.model)
    try:
        return build_model(state, config, files.model)
    except UpscalerError:
        raise
    except Exception as exc:  # tensors of unexpected ranks or sizes anywhere in the file
        raise ModelLoadError(files.model, f"its tensors do not form an LDSR model ({type(exc).__name__}: "
                             f"{exc})") from exc
