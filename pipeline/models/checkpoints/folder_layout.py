"""Diffusers folders whose components lack a `config.json`: the architecture read from the weights.

A component folder (`unet/`, `vae/`, `text_encoder/`, `text_encoder_2/`) that holds weights but no config
is read like a single file: its diffusers-layout key shapes are renamed to the LDM layout (shapes only, no
tensor is touched) so that `architecture` derives the config with the same rules, and the weights, already
named as the module names them, are then assigned strictly. Text encoders in a folder are always in the
transformers layout; whether they are OpenAI CLIP-L (quick_gelu) or OpenCLIP (gelu, and bigG's projection)
follows from the family and position, as in every diffusers pipeline.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from pipeline.runtime.errors import ModelLoadError

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin")
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}


def weights_file(component: Path) -> Path | None:
    """The weights of a component folder (safetensors preferred), or None."""
    for name in WEIGHT_NAMES:
        if (component / name).is_file():
            return component / name
    return None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a component weights file: safetensors, or a `.bin` through `weights_only=True`."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(str(path), f"unreadable weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(str(path), f"not a state dict (found {type(raw).__name__})")
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def _rename(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}" if tail else rest


def unet_shapes_as_ldm(shapes: Mapping[str, Sequence[int]], prefix: str = "model.diffusion_model."
                       ) -> dict[str, tuple[int, ...]]:
    """diffusers `UNet2DConditionModel` key shapes -> the same shapes under openaimodel (LDM) names."""
    lpb = len({k.split(".")[3] for k in shapes if k.startswith("down_blocks.0.resnets.")})
    per = lpb + 1
    up_attn = {k.split(".")[1] for k in shapes if k.startswith("up_blocks.") and ".attentions." in k}
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        new = next((ldm + key[len(d):] for d, ldm in _TOP.items() if key.startswith(d)), None)
        parts = key.split(".")
        if new is None and parts[0] in ("down_blocks", "up_blocks") and len(parts) > 4:
            b, kind, j, rest = int(parts[1]), parts[2], parts[3], ".".join(parts[4:])
            if parts[0] == "down_blocks":
                if kind == "downsamplers":
                    new = f"input_blocks.{1 + b * per + lpb}.0.op.{rest.removeprefix('conv.')}"
                else:
                    block = 1 + b * per + int(j)
                    new = (f"input_blocks.{block}.0.{_rename(rest)}" if kind == "resnets"
                           else f"input_blocks.{block}.1.{rest}")
            elif kind == "upsamplers":
                slot = 2 if parts[1] in up_attn else 1
                new = f"output_blocks.{b * per + lpb}.{slot}.conv.{rest.removeprefix('conv.')}"
            else:
                block = b * per + int(j)
                new = (f"output_blocks.{block}.0.{_rename(rest)}" if kind == "resnets"
                       else f"output_blocks.{block}.1.{rest}")
        elif new is None and parts[0] == "mid_block" and len(parts) > 3:
            rest = ".".join(parts[3:])
            new = (f"middle_block.{2 * int(parts[2])}.{_rename(rest)}" if parts[1] == "resnets"
                   else f"middle_block.1.{rest}")
        if new is not None:
            out[prefix + new] = tuple(shape)
    return out


def vae_shapes_as_ldm(shapes: Mapping[str, Sequence[int]], prefix: str = "first_stage_model."
                      ) -> dict[str, tuple[int, ...]]:
    """The few `AutoencoderKL` shapes `architecture.vae_config` reads, under ldm autoencoder names."""
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        parts = key.split(".")
        if key in ("encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight",
                   "quant_conv.weight", "post_quant_conv.weight"):
            out[prefix + key] = tuple(shape)
        elif parts[:2] == ["encoder", "down_blocks"] and parts[3] == "resnets":
            out[prefix + f"encoder.down.{parts[2]}.block.{parts[4]}.{'.'.join(parts[5:])}"] = tuple(shape)
    return out


def text_shapes(shapes: Mapping[str, Sequence[int]], prefix: str) -> dict[str, tuple[int, ...]]:
    """transformers CLIP key shapes (with or without the `text_model.` level) under `prefix`."""
    return {prefix + k.removeprefix("text_model."): tuple(v) for k, v in shapes.items()}
