"""ControlLoRA files (Stability's `control-lora-*`, a `lora_controlnet` key): a ControlNet stored as the
difference to the checkpoint's UNet encoder, as the extension (its `controlnet_lora.py`) and ComfyUI run
them. In the original layout without the `control_model.` prefix:
    `<layer>.up` / `<layer>.down`      a low-rank change: weight = the UNet's weight + up @ down
    `<name>.weight` / `.bias`          a tensor of its own (hint encoder, zero convs, norms, biases, ...)
    absent                             the checkpoint UNet's tensor
The network's shape is the checkpoint UNet's encoder (nothing else would fit the low-rank changes), with
the hint encoder read from the file. Family from the tensors: SDXL with a vector condition (`label_emb`),
SD 2.x with Linear projections, else SD 1.x."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pipeline.runtime.errors import ModelLoadError

MARK = "lora_controlnet"


def family(shapes: Mapping[str, Sequence[int]]) -> tuple[str, int | None]:
    """(family, context width) of a ControlLoRA file's {name: shape}."""
    if any(k.startswith("label_emb.") for k in shapes):
        fam = "sdxl"
    else:
        proj = next((s for k, s in sorted(shapes.items()) if k.endswith(("proj_in.weight", "proj_in.down"))), None)
        fam = "sd2" if proj is not None and len(proj) == 2 else "sd1"
    to_k = next((s for k, s in sorted(shapes.items()) if k.endswith(("attn2.to_k.weight", "attn2.to_k.down"))), None)
    return fam, (int(to_k[1]) if to_k is not None else None)


def build(tensors: Mapping[str, torch.Tensor], base_unet: Any, hint: tuple[int, tuple[int, ...]], path: str) -> Any:
    """The ControlNet: the base UNet's encoder with the file's tensors (diffusers names, `.up` / `.down`
    kept as suffixes) put in and its low-rank changes added. `hint`: (channels, embedding widths)."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(
        base_unet, conditioning_channels=hint[0], conditioning_embedding_out_channels=hint[1],
        load_weights_from_unet=True,
    )
    state = {k: v.detach().float().clone() for k, v in net.state_dict().items()}
    own = {k for k in state if k.startswith("controlnet_")}
    for key, value in tensors.items():
        if key.endswith(".down"):
            continue
        if key.endswith(".up"):
            name = key[: -len(".up")] + ".weight"
            down = tensors.get(key[: -len(".up")] + ".down")
            if name not in state or down is None:
                raise ModelLoadError(path, f"ControlLoRA: {key} has no matching layer or .down")
            delta = value.float().flatten(1) @ down.float().flatten(1)
            if delta.numel() != state[name].numel():
                raise ModelLoadError(path, f"ControlLoRA: {key} does not fit {tuple(state[name].shape)}")
            state[name] += delta.reshape(state[name].shape)
            continue
        if key not in state:
            raise ModelLoadError(path, f"ControlLoRA: {key} has no place in the checkpoint's UNet encoder")
        if tuple(value.shape) != tuple(state[key].shape):
            raise ModelLoadError(
                path, f"ControlLoRA: {key} is {tuple(value.shape)}, the checkpoint's {tuple(state[key].shape)}"
            )
        state[key] = value.float()
        own.discard(key)
    if own:
        raise ModelLoadError(path, f"ControlLoRA: the file lacks {len(own)} ControlNet tensors, e.g. {sorted(own)[:2]}")
    net.load_state_dict(state, strict=True)
    return net
