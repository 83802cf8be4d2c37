"""Attention speed paths (pipeline/accel/fused_qkv.py, sdpa.py) and the GPU flags, checked on the CPU: fused
query/key/value projections give the unfused images (within rounding), follow in-place weight changes as
LoRA patching makes them, and leave masked calls to diffusers; the SDPA backend order per flag; the flags
reach the policy. The CUDA side (kernels, CUDA graphs) is in tests/pipeline/test_cuda.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.accel import Accel, choose
from pipeline.models.accel.fused_qkv import FusedQKVProcessor, fuse_qkv, is_fused, unfuse_qkv
from pipeline.models.accel.sdpa import backend_order, current_order, set_sdpa_backend
from pipeline.models.builtin import build_builtin_model
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from server.config import from_args
from server.services import pick_accel
from tests.conftest import Env, pixels
from upscalers.registry import UpscalerRegistry

CPU = torch.device("cpu")
B = torch.nn.attention.SDPBackend


def _unet_inputs(unet: torch.nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, unet.config.in_channels, 16, 16, generator=g)
    c = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([500.0, 500.0]), c


def _env(root, fused: str) -> Env:
    mm = ModelManager(CheckpointRegistry(root, root / "data"), CPU, torch.float32,
                      accel=Accel(choose(CPU, "fp32"), fused_qkv=fused))
    return Env(mm, UpscalerRegistry(root))


def test_fused_unet_output_equals_unfused_and_follows_in_place_weight_changes() -> None:
    unet = build_builtin_model(CPU, torch.float32).unet
    x, t, c = _unet_inputs(unet)
    with torch.inference_mode():
        plain = unet(x, t, encoder_hidden_states=c).sample
        assert fuse_qkv(unet) > 0 and is_fused(unet)
        fused = unet(x, t, encoder_hidden_states=c).sample
        assert torch.allclose(fused, plain, atol=1e-5, rtol=1e-5)
        # a LoRA-style in-place update of to_q/to_k/to_v after the stacked weights were cached
        for m in unet.modules():
            if isinstance(getattr(m, "processor", None), FusedQKVProcessor):
                for name in ("to_q", "to_k", "to_v"):
                    getattr(m, name).weight.add_(0.05)
        patched_fused = unet(x, t, encoder_hidden_states=c).sample
        assert unfuse_qkv(unet) > 0 and not is_fused(unet)
        patched_plain = unet(x, t, encoder_hidden_states=c).sample
    assert (patched_plain - plain).abs().max() > 1e-2  # the update matters...
    assert torch.allclose(patched_fused, patched_plain, atol=1e-5, rtol=1e-5)  # ...and the fused path sees it


def test_masked_calls_go_to_the_replaced_processor() -> None:
    unet = build_builtin_model(CPU, torch.float32).unet
    fuse_qkv(unet)
    attn = next(m for m in unet.modules() if isinstance(getattr(m, "processor", None), FusedQKVProcessor))
    seen = []
    fallback = attn.processor.fallback
    attn.processor.fallback = lambda *a, **k: seen.append(a[3]) or fallback(*a, **k)
    h = torch.randn(1, 6, attn.to_q.in_features)
    mask = torch.zeros(1, 6)
    with torch.inference_mode():
        out = attn(h, attention_mask=mask)
        assert len(seen) == 1 and torch.allclose(out, attn(h), atol=1e-5)  # a zero additive mask: no change
    assert len(seen) == 1  # the unmasked call stayed on the fused path


def test_fused_hires_job_gives_the_unfused_image(tmp_path) -> None:
    job = {"enable_hr": True, "hr_scale": 2.0, "seed": 21}
    on, off = _env(tmp_path / "on", "on"), _env(tmp_path / "off", "off")
    assert is_fused(on.model().unet) and not is_fused(off.model().unet)
    a, b = pixels(on.run(**job).images[0]).astype(int), pixels(off.run(**job).images[0]).astype(int)
    d = np.abs(a - b)
    assert d.mean() < 0.05 and d.max() <= 2, (d.mean(), d.max())  # stated tolerance: rounding only


def test_fused_qkv_policy_per_device_and_flag() -> None:
    cuda = torch.device("cuda")
    assert not Accel(choose(CPU, "fp32")).wants_fused_qkv(CPU)  # auto: off (no reliable gain measured)
    assert not Accel(choose(CPU, "fp32")).wants_fused_qkv(cuda)  # auto: off on CUDA (not measured)
    assert Accel(choose(CPU, "fp32"), fused_qkv="on").wants_fused_qkv(cuda)
    assert not Accel(choose(CPU, "fp32"), fused_qkv="off").wants_fused_qkv(CPU)
    assert not Accel(choose(CPU, "fp32"), fused_qkv="on", compile=True).wants_fused_qkv(CPU)


def test_sdpa_backend_order_per_choice() -> None:
    assert backend_order("auto") == [B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.CUDNN_ATTENTION, B.MATH]
    assert backend_order("cudnn") == [B.CUDNN_ATTENTION, B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH]
    assert backend_order("math") == [B.MATH, B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.CUDNN_ATTENTION]
    assert backend_order("flash", no_mem_efficient=True) == [B.FLASH_ATTENTION, B.CUDNN_ATTENTION, B.MATH]
    with pytest.raises(ValueError, match="flash"):
        backend_order("xformers")
    # nothing changes on the CPU, nor for auto
    assert set_sdpa_backend(CPU, "flash") is None and current_order() is None
    assert set_sdpa_backend(torch.device("cuda"), "auto") is None and current_order() is None


def test_gpu_flags_reach_the_policy() -> None:
    cfg = from_args(["--fused-qkv", "off", "--sdpa-backend", "flash", "--cuda-graphs", "--compile",
                     "--opt-sdp-no-mem-attention"], environ={})
    accel = pick_accel(cfg)
    assert (accel.fused_qkv, accel.sdpa_backend, accel.sdp_no_mem) == ("off", "flash", True)
    assert accel.cuda_graphs
    default = pick_accel(from_args([], environ={}))
    assert (default.fused_qkv, default.sdpa_backend, default.cuda_graphs) == ("auto", "auto", False)
