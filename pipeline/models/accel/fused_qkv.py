"""Fused attention projections for the UNet (`--fused-qkv`): self-attention computes query, key and value with
one matrix product against the three weights stacked, cross-attention computes key and value with one.

One large GEMM instead of three smaller ones keeps a GPU busier and launches fewer kernels. The stacked
weight is cached per attention module and rebuilt when any of its source weights changes (a weight's
version counter moves with every in-place update, as LoRA patching does; a replaced tensor has a new
address), so extra networks keep working unchanged. Applied to the UNet's transformer attentions only,
those with the plain layout (3-D input, no group/spatial/cross norms, no residual or rescale, no extra key/
value projections, default scale); any other attention, and any call with an attention mask, keeps
diffusers' own processor. The arithmetic is the same as unfused (the same products summed in a different
kernel), so images agree within rounding: tested on the CPU against the unfused UNet."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["FusedQKVProcessor", "fuse_qkv", "is_fused", "plain_attention", "unfuse_qkv"]


def plain_attention(attn: Any) -> bool:
    """Whether `attn` (a diffusers Attention) has the layout this processor computes."""
    return (getattr(attn, "spatial_norm", None) is None and getattr(attn, "group_norm", None) is None
            and getattr(attn, "norm_cross", None) is None and getattr(attn, "norm_q", None) is None
            and getattr(attn, "norm_k", None) is None and not getattr(attn, "residual_connection", False)
            and getattr(attn, "rescale_output_factor", 1.0) == 1.0
            and getattr(attn, "added_kv_proj_dim", None) is None
            and not getattr(attn, "only_cross_attention", False) and getattr(attn, "scale_qk", True)
            and all(isinstance(getattr(attn, n, None), torch.nn.Linear) for n in ("to_q", "to_k", "to_v")))


class FusedQKVProcessor:
    """A diffusers attention processor: stacked projections, then PyTorch SDPA."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback  # the processor it replaced: masks and unusual inputs go there
        self._cache: dict[bool, tuple[tuple[Any, ...], torch.Tensor, torch.Tensor | None]] = {}

    def _stacked(self, self_attention: bool, layers: tuple[torch.nn.Linear, ...]
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = tuple((m.weight.data_ptr(), m.weight._version, m.weight.dtype, m.weight.device,
                     None if m.bias is None else (m.bias.data_ptr(), m.bias._version)) for m in layers)
        hit = self._cache.get(self_attention)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        weight = torch.cat([m.weight for m in layers])
        bias = None
        if any(m.bias is not None for m in layers):
            bias = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features)
                              for m in layers])
        self._cache[self_attention] = (key, weight, bias)
        return weight, bias

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        if attention_mask is not None or hidden_states.ndim != 3:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args,
                                 **kwargs)
        batch = hidden_states.shape[0]
        if encoder_hidden_states is None:
            weight, bias = self._stacked(True, (attn.to_q, attn.to_k, attn.to_v))
            q_dim = attn.to_q.out_features
            k_dim = attn.to_k.out_features
            qkv = F.linear(hidden_states, weight, bias)
            query, key, value = qkv.split([q_dim, k_dim, attn.to_v.out_features], dim=-1)
        else:
            query = attn.to_q(hidden_states)
            weight, bias = self._stacked(False, (attn.to_k, attn.to_v))
            key, value = F.linear(encoder_hidden_states, weight, bias).split(
                [attn.to_k.out_features, attn.to_v.out_features], dim=-1)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query, key, value = (t.reshape(batch, -1, heads, head_dim).transpose(1, 2)
                             for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def fuse_qkv(unet: torch.nn.Module) -> int:
    """Give every plain attention of `unet` a FusedQKVProcessor; returns how many were switched."""
    count = 0
    for module in unet.modules():
        processor = getattr(module, "processor", None)
        if processor is None or not hasattr(module, "set_processor"):
            continue
        if isinstance(processor, FusedQKVProcessor):
            continue
        if plain_attention(module):
            module.set_processor(FusedQKVProcessor(processor))
            count += 1
    return count


def is_fused(unet: torch.nn.Module) -> bool:
    return any(isinstance(getattr(m, "processor", None), FusedQKVProcessor) for m in unet.modules())


def unfuse_qkv(unet: torch.nn.Module) -> int:
    """Give back every fused attention its previous processor; returns how many."""
    count = 0
    for module in unet.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, FusedQKVProcessor):
            module.set_processor(processor.fallback)
            count += 1
    return count
