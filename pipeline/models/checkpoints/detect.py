"""Which family a Stable Diffusion state dict belongs to, from its keys and a few shapes.

Our rules are explicit and key-based; diffusers' `infer_diffusers_model_type` is consulted too and
recorded, but not trusted alone: it recognises SDXL only by a deep key of the second text encoder
(`conditioner.embedders.1.model.transformer.resblocks.9...`), so a shallow SDXL (tiny test models,
pruned or merged files) would be called "v1". Here SDXL is any file with an OpenCLIP encoder under
`conditioner.embedders.1.model.` or the UNet's `label_emb` (text_time conditioning).

    sdxl  conditioner.embedders.1.model.* / model.diffusion_model.label_emb.*   (xl_base)
          conditioner.embedders.0.model.* alone, with label_emb                  (xl_refiner, bigG only)
    sd2   cond_stage_model.model.* (OpenCLIP ViT-H), conditioner.embedders.0.model.* without label_emb
          (SD 2.1 Turbo), or 1024-wide cross-attention keys
    sd1   otherwise, with cond_stage_model.transformer.* (CLIP ViT-L) and 768-wide cross-attention
    a UNet input convolution with 9 channels marks an inpainting model of that family.

Refused with a message naming what the file is: UNets taking 5 (SD 2 depth), 7 (x4 upscaler) or 8
(instruct-pix2pix) input channels, which need an input image txt2img does not have; EDM files
(`edm_mean`/`edm_std`: Playground v2.5; `edm_vpred.*`: CosXL), whose noise schedule and latent statistics
are not served; ComfyUI scaled-fp8 files.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.runtime.errors import ModelLoadError

log = logging.getLogger(__name__)

UNET = "model.diffusion_model."
UNET_IN = UNET + "input_blocks.0.0.weight"
XL_OPENCLIP = "conditioner.embedders.1.model."
XL_REFINER_OPENCLIP = "conditioner.embedders.0.model."
SD2_OPENCLIP = "cond_stage_model.model."
SD1_CLIP = "cond_stage_model.transformer."
XL_LABEL_EMB = UNET + "label_emb.0.0.weight"
_IN_CHANNELS_REFUSED = {
    5: "an SD 2 depth-conditioned model (5 input channels: latent + MiDaS depth); it needs a depth map",
    7: "the SD x4 upscaler (7 input channels: latent + low-resolution image)",
    8: "an instruct-pix2pix model (8 input channels: latent + input image); it needs an input image",
}


@dataclass(frozen=True)
class Detection:
    """family: "sd1" | "sd2" | "sdxl"; variant: e.g. "v1", "v1-inpainting", "v2", "xl_base";
    unet_in_channels: 4 normally, 9 for inpainting; v_pred_key: the file carries a `v_pred` marker key;
    diffusers_type: what diffusers' own detector says (informative only)."""

    family: str
    variant: str
    unet_in_channels: int
    v_pred_key: bool
    ztsnr_key: bool
    diffusers_type: str | None


class _ShapeOnly:
    """Stands in for a tensor where only `.shape` is read (diffusers' detector on a header)."""

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(shape)


def _diffusers_type(shapes: Mapping[str, Sequence[int]]) -> str | None:
    try:
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type

        return str(infer_diffusers_model_type({k: _ShapeOnly(v) for k, v in shapes.items()}))
    except Exception as exc:  # noqa: BLE001 - informative only
        log.debug("diffusers could not classify the checkpoint: %s", exc)
        return None


def detect_family(shapes: Mapping[str, Sequence[int]], path: str = "<state dict>") -> Detection:
    """Classify a state dict given as {key: shape}. Raises ModelLoadError for what we cannot load."""
    keys = list(shapes)
    if not any(k.startswith(UNET) for k in keys):
        raise ModelLoadError(path, "not a Stable Diffusion checkpoint: no model.diffusion_model.* (UNet) keys "
                                   "(a VAE, LoRA or embedding in the checkpoint folder?)")
    in_shape = shapes.get(UNET_IN)
    in_ch = int(in_shape[1]) if in_shape is not None and len(in_shape) > 1 else 4

    def has_prefix(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    cross_widths = {int(s[-1]) for k, s in shapes.items()
                    if k.startswith(UNET) and k.endswith("attn2.to_k.weight") and len(s) == 2}
    if "edm_mean" in shapes or "edm_std" in shapes:
        raise ModelLoadError(path, "a Playground v2.5-style EDM checkpoint (edm_mean/edm_std keys): its EDM "
                                   "noise schedule and latent statistics are not supported")
    if any(k.startswith("edm_vpred.") for k in keys):
        raise ModelLoadError(path, "a CosXL-style EDM v-prediction checkpoint (edm_vpred.* keys): not supported")
    if "scaled_fp8" in shapes:
        raise ModelLoadError(path, "a ComfyUI scaled-fp8 checkpoint: not supported (use an fp16/bf16/fp32 file)")
    if in_ch in _IN_CHANNELS_REFUSED or has_prefix("depth_model."):
        raise ModelLoadError(path, f"{_IN_CHANNELS_REFUSED.get(in_ch, _IN_CHANNELS_REFUSED[5])}: not supported")
    if in_ch not in (4, 9):
        raise ModelLoadError(path, f"a UNet with {in_ch} input channels: not a supported Stable Diffusion model")
    if has_prefix(XL_OPENCLIP):
        family, variant = "sdxl", "xl_base"
    elif has_prefix(XL_REFINER_OPENCLIP) and XL_LABEL_EMB in shapes:
        family, variant = "sdxl", "xl_refiner"
    elif XL_LABEL_EMB in shapes and not has_prefix(SD2_OPENCLIP) and not has_prefix(SD1_CLIP):
        family, variant = "sdxl", "xl_base"
    elif has_prefix(SD2_OPENCLIP) or has_prefix(XL_REFINER_OPENCLIP) or 1024 in cross_widths:
        family, variant = "sd2", "v2"
    elif has_prefix(SD1_CLIP) or 768 in cross_widths or not cross_widths:
        family, variant = "sd1", "v1"
    else:
        family, variant = "sd1", "v1"  # an unusual width (tiny models): the tensors give the architecture
    if in_ch == 9:
        variant += "-inpainting"
    return Detection(family=family, variant=variant, unet_in_channels=in_ch, v_pred_key="v_pred" in shapes,
                     ztsnr_key="ztsnr" in shapes, diffusers_type=_diffusers_type(shapes))


def shapes_of(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}
