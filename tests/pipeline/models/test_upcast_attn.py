"""`upcast_attn`'s attention processor (pipeline/models/patches/upcast_attn.py) against A1111's arithmetic
written out by hand: projections in bf16, scores, softmax and weighted sum in float32, the result cast to
bf16 before the output projection; float32 inputs and the VAE's attention are left as they were."""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from pipeline.models.builtin import build_builtin_model
from pipeline.models.patches import PassInfo, apply_patches
from pipeline.models.patches.upcast_attn import UpcastAttention, UpcastAttnProcessor

CPU = torch.device("cpu")


def _reference(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    b, h = x.shape[0], attn.heads
    q, k, v = (t.reshape(b, -1, h, t.shape[-1] // h).transpose(1, 2).float() for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    out = (w @ v).transpose(1, 2).reshape(b, -1, attn.inner_dim).to(x.dtype)
    return attn.to_out[1](attn.to_out[0](out))


def test_the_processor_computes_attention_in_float32_between_bf16_projections() -> None:
    torch.manual_seed(0)
    attn = Attention(64, cross_attention_dim=32, heads=4, dim_head=16).to(torch.bfloat16)
    x = torch.randn(2, 48, 64).to(torch.bfloat16)
    context = torch.randn(2, 7, 32).to(torch.bfloat16) * 8  # large scores: bf16 softmax rounds visibly
    with torch.no_grad():
        plain = attn(x, encoder_hidden_states=context)
        attn.set_processor(UpcastAttnProcessor(attn.processor))
        upcast = attn(x, encoder_hidden_states=context)
        reference = _reference(attn, x, context)
    assert upcast.dtype == torch.bfloat16
    torch.testing.assert_close(upcast.float(), reference.float(), rtol=0, atol=2e-2)
    assert not torch.equal(upcast, plain)


def test_float32_attention_defers_to_the_processor_it_replaced() -> None:
    torch.manual_seed(1)
    attn = Attention(64, heads=4, dim_head=16)
    x = torch.randn(1, 16, 64)
    with torch.no_grad():
        plain = attn(x)
        attn.set_processor(UpcastAttnProcessor(attn.processor))
        assert torch.equal(attn(x), plain)


def test_the_patch_switches_the_unets_attentions_only_for_the_pass() -> None:
    model = build_builtin_model(CPU, torch.bfloat16)
    before = {name: type(m.processor) for name, m in model.unet.named_modules() if isinstance(m, Attention)}
    vae_before = [m.processor for m in model.vae.modules() if isinstance(m, Attention)]
    patch = UpcastAttention()
    with apply_patches(model, [patch], PassInfo(1, 64, 64, 0)):
        inside = [m.processor for m in model.unet.modules() if isinstance(m, Attention)]
        assert patch.count == len(before) > 0
        assert all(isinstance(p, UpcastAttnProcessor) for p in inside)
        assert [m.processor for m in model.vae.modules() if isinstance(m, Attention)] == vae_before
    after = {name: type(m.processor) for name, m in model.unet.named_modules() if isinstance(m, Attention)}
    assert after == before
