"""A1111's `upcast_attn` ("Upcast cross attention layer to float32"): the UNet's transformer attentions
(self- and cross-attention) compute their scores, softmax and weighted sum in float32.

As A1111 1.10's attention forwards do it (modules/sd_hijack_optimizations.py: Doggettx on CUDA and InvokeAI
on the CPU, the optimizations its "Automatic" picks, and sdp, sub-quadratic, V1, xformers alike): the
query, key and value projections run in the model's dtype, their outputs are cast to float32, attention is
computed in float32, and the result is cast back to the model's dtype before the output projection. The
VAE's attention is untouched, as under A1111's Automatic choice (InvokeAI leaves the VAE's AttnBlock as
it is; Doggettx's AttnBlock forward has no upcast). On a float32 model the processor defers to the one it
replaced, so the option changes nothing there, as in A1111 (`.float()` of a float32 tensor is itself)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pipeline.models.accel.fused_qkv import plain_attention
from pipeline.models.patches.layer import UNetPatcher

__all__ = ["UpcastAttention", "UpcastAttnProcessor", "upcast_attention_processors"]


class UpcastAttnProcessor:
    """A diffusers attention processor: projections in the model's dtype, attention in float32. Inputs it
    does not compute (float32 ones, attention masks, 4-D hidden states) go to the processor it replaced."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        if (attention_mask is not None or hidden_states.ndim != 3 or hidden_states.dtype == torch.float32
                or temb is not None):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args,
                                 **kwargs)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        dtype = query.dtype
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query, key, value = (t.reshape(batch, -1, heads, head_dim).transpose(1, 2).float()
                             for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(dtype)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def upcast_attention_processors(module: torch.nn.Module) -> list[tuple[Any, Any]]:
    """Give every plain attention of `module` an UpcastAttnProcessor; returns (attention, previous processor)
    pairs for the undo."""
    swapped: list[tuple[Any, Any]] = []
    for m in module.modules():
        processor = getattr(m, "processor", None)
        if processor is None or not hasattr(m, "set_processor") or isinstance(processor, UpcastAttnProcessor):
            continue
        if plain_attention(m):
            m.set_processor(UpcastAttnProcessor(processor))
            swapped.append((m, processor))
    return swapped


class UpcastAttention:
    """The UNet patch: every plain transformer attention of the UNet upcast for the pass. `count` is how many
    attentions it switched (0 on a float32 UNet, where it installs nothing)."""

    count = 0

    def apply(self, patcher: UNetPatcher) -> None:
        if getattr(patcher.model, "dtype", None) == torch.float32:
            return
        swapped = upcast_attention_processors(patcher.unet)
        self.count = len(swapped)

        def undo() -> None:
            for attn, previous in reversed(swapped):
                attn.set_processor(previous)

        patcher.on_exit(undo)
