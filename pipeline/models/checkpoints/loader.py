"""Load a checkpoint into an `SDModel`, offline.

Single files (A1111 / original LDM layout) are read once into a state dict (safetensors, or a `.ckpt`
through `torch.load(weights_only=True)` so a pickle that would run code is refused, never executed),
classified by `detect_family`, and their architecture is read from the tensors (`architecture`): UNet,
VAE and text encoders are built with their parameters on the meta device, the keys converted
(`convert`) and the tensors assigned STRICTLY: a parameter the file does not fill, a file key no
parameter takes (apart from the known-harmless extras in `_HARMLESS`) or a shape that disagrees is a
ModelLoadError naming the file and the keys. The family's shipped config (`pipeline/configs/<family>`)
supplies only what tensors cannot show (scheduler, sample size, VAE scaling factor). Diffusers folders load
with `from_pretrained(local_files_only=True)`.

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

from pipeline.models.checkpoints import architecture, convert, folder_layout
from pipeline.models.checkpoints.architecture import TextEncoderSpec
from pipeline.models.checkpoints.convert import Converted
from pipeline.models.checkpoints.detect import Detection, detect_family, shapes_of
from pipeline.models.checkpoints.registry import CheckpointInfo
from pipeline.models.checkpoints.shipped import CONFIGS_DIR, clip_tokenizer
from pipeline.models.sd_model import SDModel
from pipeline.runtime.errors import ModelLoadError

log = logging.getLogger(__name__)

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
                    dtype: torch.dtype = torch.float32, compute_hash: bool = True) -> SDModel:
    """Load `info` onto `device` in `dtype`, fully offline, with the architecture read from the file.

    compute_hash: make sure the sha256 is known (cached after the first time) so the title and the
        infotext's "Model hash" are complete, as A1111 does on load.
    Raises ModelLoadError(path, reason) for anything unreadable, unsupported or incomplete.
    """
    device = torch.device(device)
    if info.kind == "builtin":
        if info.build is None:
            raise ModelLoadError(info.filename, "a builtin entry without a builder")
        return info.build(device, dtype)
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
        model = _load_single_file(info, device, dtype)
    log.info("loaded %s (%s) in %.1fs", info.title, model.family, time.perf_counter() - started)
    return model


def _vae_dtype(family: str, dtype: torch.dtype) -> torch.dtype:
    # SDXL's VAE overflows in fp16 (its config says force_upcast); keep it in fp32 then.
    return torch.float32 if (family == "sdxl" and dtype == torch.float16) else dtype


# File keys that hold no weight any module here uses, skipped on purpose; every other key must be used:
# EMA copies, the DDPM schedule buffers of LDM-era training files and the sigma table of sgm's denoiser
# (our schedule comes from the config), marker keys read by `detect_family`, CLIP's `position_ids` (a
# non-persistent buffer in transformers 5) and open_clip's contrastive `logit_scale` / `attn_mask`.
_HARMLESS = re.compile(
    r"^(model_ema\.|denoiser\.sigmas$|v_pred$|ztsnr$|betas$|alphas_cumprod(_prev)?$|sqrt_|log_one_minus_alphas_cumprod$|"
    r"posterior_|logvar$|lvlb_weights$|(.*\.)?(position_ids|logit_scale|attn_mask)$)")


def _family_base(family: str) -> Path:
    return CONFIGS_DIR / family


def _sub(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _build_strict(path: str, part: str, prefix: str, factory: Callable[[], torch.nn.Module],
                  converted: Converted, dtype: torch.dtype) -> torch.nn.Module:
    """Build `factory()` with its parameters on the meta device, then take every tensor from `converted`
    (assigned, not copied). A parameter the file does not fill, a file key no parameter takes, or a shape
    that disagrees is a ModelLoadError naming the file, the part and the keys."""
    from accelerate import init_empty_weights

    tensors, unused, origin = converted
    try:
        with init_empty_weights():
            module = factory()
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(path, f"{part}: cannot build the architecture read from the file: {exc}") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise ModelLoadError(path, f"{part} weights missing from the file ({len(missing)} tensors, e.g. "
                                   f"{', '.join(missing[:3])})")
    leftover = [prefix + k for k in unused] + sorted({prefix + origin.get(k, k) for k in unexpected})
    if leftover:
        raise ModelLoadError(path, f"{part}: {len(leftover)} file keys fit no parameter of the architecture "
                                   f"read from the file (e.g. {', '.join(leftover[:3])})")
    wrong = [f"{k} {tuple(tensors[k].shape)} != {tuple(expected[k].shape)}" for k in expected
             if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise ModelLoadError(path, f"{part}: tensor shapes disagree with the architecture: {'; '.join(wrong[:3])}")
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    meta = [n for n, t in chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if meta:
        raise ModelLoadError(path, f"{part} weights missing from the file ({len(meta)} tensors, e.g. "
                                   f"{', '.join(meta[:3])})")
    return module.eval().requires_grad_(False)


def _text_encoder(path: str, spec: TextEncoderSpec, sd: dict[str, torch.Tensor],
                  dtype: torch.dtype) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if spec.projection else CLIPTextModel
    config = CLIPTextConfig(**spec.config)
    # transformers >= 5.6: CLIPTextModel's keys have no `text_model.` level, CLIPTextModelWithProjection's do
    module_prefix = "text_model." if spec.projection else ""
    if spec.layout == "hf":
        tensors, unused, origin = convert.hf_clip(_sub(sd, spec.prefix), module_prefix)
    else:
        tensors, unused, origin = convert.openclip(_sub(sd, spec.prefix), module_prefix,
                                           layers=int(spec.config["num_hidden_layers"]), projection=spec.projection)
        # SD 2.x: the last layer and the projection are in the file but unused (it conditions on the
        # penultimate layer), as in every SD 2.x pipeline
        if spec.unused_layers:
            unused = [k for k in unused if not (k.startswith("transformer.resblocks.") or k == "text_projection")]
    unused = [k for k in unused if not _HARMLESS.match(k)]
    return _build_strict(path, spec.label, spec.prefix, lambda: cls(config), (tensors, unused, origin), dtype)


def _load_single_file(info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = info.filename
    sd = read_state_dict(path)
    shapes = shapes_of(sd)
    det = detect_family(shapes, path)
    info.family = det.family
    family = det.family
    cfg_dir = _family_base(family)
    refiner = det.variant.startswith("xl_refiner")
    te_bases = [_read_json(d / "config.json") for d in sorted(cfg_dir.glob("text_encoder*"))]
    specs = architecture.text_encoders(shapes, family, refiner, te_bases, path)
    unet_cfg = architecture.unet_config(shapes, _read_json(cfg_dir / "unet" / "config.json"), path,
                                        pooled_dim=architecture.pooled_width(specs), time_ids=5 if refiner else 6)
    vae_cfg = architecture.vae_config(shapes, _read_json(cfg_dir / "vae" / "config.json"), path)
    vae_dtype = _vae_dtype(family, dtype)

    used_prefixes = [UNET_PREFIX, VAE_PREFIX, *(s.prefix for s in specs)]
    stray = [k for k in sd if not k.startswith(tuple(used_prefixes)) and not _HARMLESS.match(k)]
    if stray:
        raise ModelLoadError(path, f"{len(stray)} file keys belong to no part of a {det.variant} checkpoint "
                                   f"(e.g. {', '.join(sorted(stray)[:3])})")
    unet_tensors, unet_unused, unet_origin = convert.unet(_sub(sd, UNET_PREFIX), int(unet_cfg["layers_per_block"]))
    unet = _build_strict(path, "UNet", UNET_PREFIX, lambda: UNet2DConditionModel.from_config(unet_cfg),
                         (unet_tensors, [k for k in unet_unused if not _HARMLESS.match(k)], unet_origin), dtype)
    vae_tensors, vae_unused, vae_origin = convert.vae(_sub(sd, VAE_PREFIX), len(vae_cfg["block_out_channels"]))
    vae = _build_strict(path, "VAE", VAE_PREFIX, lambda: AutoencoderKL.from_config(vae_cfg),
                        (vae_tensors, [k for k in vae_unused if not _HARMLESS.match(k)], vae_origin), vae_dtype)
    encoders = [_text_encoder(path, spec, sd, dtype) for spec in specs]
    tokenizers = [clip_tokenizer(openclip=spec.role in ("openclip", "xl_bigg")) for spec in specs]
    has_v_pred_key, has_ztsnr = det.v_pred_key, det.ztsnr_key
    sd.clear()  # the modules hold their tensors; drop the rest

    scheduler_config = _read_json(cfg_dir / "scheduler" / "scheduler_config.json")
    prediction, source = _sidecar_prediction(info), "sidecar yaml"
    if prediction is None and has_v_pred_key:
        prediction, source = "v_prediction", "v_pred key"
    if prediction is None and family == "sd2" and det.unet_in_channels == 4:
        prediction, source = ("v_prediction" if probe_v_prediction(unet) else "epsilon"), "weight probe"
    if prediction is None:
        prediction, source = scheduler_config.get("prediction_type", "epsilon"), "config"
    if family == "sd2" and prediction == "epsilon":
        cfg_dir = _family_base("sd2-base")
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
        scheduler_config=scheduler_config, device=device, dtype=dtype, vae_dtype=vae_dtype, refiner=refiner,
        extra={"checkpoint": info, "filename": info.filename, "sha256": info.sha256,
               "model_name": info.model_name, "config_dir": str(cfg_dir), "variant": det.variant,
               "inpainting": det.unet_in_channels == 9, "unet_in_channels": det.unet_in_channels,
               "prediction_type_source": source, "diffusers_model_type": det.diffusers_type},
    )


def _diffusers_family(folder: Path) -> str:
    if (folder / "text_encoder_2").is_dir():
        return "sdxl"
    if not (folder / "unet" / "config.json").is_file():  # read the cross-attention width from the weights
        weights = folder_layout.weights_file(folder / "unet")
        shapes = shapes_of(folder_layout.read_weights(weights)) if weights is not None else {}
        widths = {s[-1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")}
        return "sd2" if 1024 in widths else "sd1"
    try:
        width = int(_read_json(folder / "unet" / "config.json").get("cross_attention_dim", 768))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(str(folder), f"unreadable unet/config.json: {exc}") from exc
    return "sd2" if width == 1024 else "sd1"


def _derived_component(folder: Path, sub: str, family: str, dtype: torch.dtype, roles: list[str]) -> Any:
    """A folder component without `config.json`: its architecture read from its weights (folder_layout)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = str(folder)
    weights = folder_layout.weights_file(folder / sub)
    if weights is None:
        raise ModelLoadError(path, f"{sub}/ has neither config.json nor weights")
    sd = folder_layout.read_weights(weights)
    shapes = shapes_of(sd)
    base_dir = _family_base(family)
    identity = (sd, [], {k: k for k in sd})
    if sub == "unet":
        pooled, time_ids = None, 6
        if family == "sdxl":
            te2 = folder_layout.weights_file(folder / "text_encoder_2")
            proj = shapes_of(folder_layout.read_weights(te2)).get("text_projection.weight") if te2 else None
            pooled = int(proj[0]) if proj else None
            time_ids = 6 if (folder / "text_encoder").is_dir() else 5
        cfg = architecture.unet_config(folder_layout.unet_shapes_as_ldm(shapes),
                                       _read_json(base_dir / "unet" / "config.json"), path, pooled, time_ids)
        return _build_strict(path, "UNet", "unet/", lambda: UNet2DConditionModel.from_config(cfg), identity, dtype)
    if sub == "vae":
        cfg = architecture.vae_config(folder_layout.vae_shapes_as_ldm(shapes),
                                      _read_json(base_dir / "vae" / "config.json"), path)
        return _build_strict(path, "VAE", "vae/", lambda: AutoencoderKL.from_config(cfg), identity, dtype)
    role = roles[-1] if sub == "text_encoder_2" else roles[0]
    projection = role == "xl_bigg"
    base = _read_json(base_dir / sub / "config.json") if (base_dir / sub).is_dir() else {}
    spec = architecture.hf_text_encoder(folder_layout.text_shapes(shapes, ""), "", role, base, path)
    config = CLIPTextConfig(**{**spec.config, "hidden_act": "quick_gelu" if role in ("clip", "xl_clip_l") else "gelu",
                               **({"projection_dim": int(shapes["text_projection.weight"][0])} if projection else {})})
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    module_prefix = "text_model." if projection else ""
    tensors = {(k if k == "text_projection.weight" else module_prefix + k.removeprefix("text_model.")): v
               for k, v in sd.items() if not k.endswith("position_ids")}
    return _build_strict(path, spec.label, f"{sub}/", lambda: cls(config), (tensors, [], {k: k for k in tensors}),
                         dtype)


def _load_diffusers_folder(info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(info.filename)
    path = str(folder)
    family = _diffusers_family(folder)
    info.family = family
    vae_dtype = _vae_dtype(family, dtype)
    opts = {"local_files_only": True}
    refiner = family == "sdxl" and not (folder / "text_encoder").is_dir()
    roles = {"sd1": ["clip"], "sd2": ["openclip"], "sdxl": ["xl_clip_l", "xl_bigg"]}[family]
    roles = roles[-1:] if refiner else roles

    def component(sub: str, load: Callable[[], Any], part: str, part_dtype: torch.dtype) -> Any:
        if (folder / sub / "config.json").is_file():
            return _checked(path, part, load)
        return _derived_component(folder, sub, family, part_dtype, roles)

    unet = component("unet", lambda: UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet", torch_dtype=dtype, **opts), "UNet", dtype)
    vae = component("vae", lambda: AutoencoderKL.from_pretrained(
        folder, subfolder="vae", torch_dtype=vae_dtype, **opts), "VAE", vae_dtype)
    encoders, tokenizers = [], []
    if not refiner:
        encoders.append(component("text_encoder", lambda: CLIPTextModel.from_pretrained(
            folder / "text_encoder", dtype=dtype, **opts), "text encoder", dtype))
        tokenizers.append(_folder_tokenizer(folder / "tokenizer", openclip=family == "sd2"))
    if family == "sdxl":
        encoders.append(component("text_encoder_2", lambda: CLIPTextModelWithProjection.from_pretrained(
            folder / "text_encoder_2", dtype=dtype, **opts), "text encoder 2", dtype))
        tokenizers.append(_folder_tokenizer(folder / "tokenizer_2", openclip=True))
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_path.is_file():
        scheduler_path = _family_base(family) / "scheduler" / "scheduler_config.json"
    try:
        scheduler_config = _read_json(scheduler_path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(path, f"scheduler config: {exc}") from exc
    for module in (unet, vae, *encoders):
        module.to(device)
    return SDModel(
        title=info.title, family=family, unet=unet, vae=vae, text_encoders=encoders, tokenizers=tokenizers,
        scheduler_config=scheduler_config, device=device, dtype=dtype, vae_dtype=vae_dtype, refiner=refiner,
        extra={"checkpoint": info, "filename": info.filename, "sha256": info.sha256,
               "model_name": info.model_name, "config_dir": path, "variant": family,
               "inpainting": int(unet.config.in_channels) == 9, "unet_in_channels": int(unet.config.in_channels),
               "prediction_type_source": "config", "diffusers_model_type": None},
    )


def _folder_tokenizer(folder: Path, openclip: bool) -> Any:
    """The folder's tokenizer, or the shipped CLIP tokenizer when the folder has none."""
    return _tokenizer(folder) if (folder / "vocab.json").is_file() else clip_tokenizer(openclip=openclip)
