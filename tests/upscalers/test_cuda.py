"""The device path; skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from upscalers import UpscalerRegistry, upscale, upscale_array

from .conftest import photo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cuda_registry(models_dir) -> UpscalerRegistry:
    return UpscalerRegistry(models_dir, device=torch.device("cuda"), max_cached_models=32)


def test_half_precision_where_supported(cuda_registry: UpscalerRegistry) -> None:
    assert cuda_registry.load(cuda_registry.resolve("ESRGAN-x4-old")).dtype == torch.float16
    assert cuda_registry.load(cuda_registry.resolve("DAT-x2")).dtype == torch.bfloat16  # no fp16 support


@pytest.mark.parametrize(
    "name", ["Compact-x4", "ESRGAN-x2-new", "DAT-x2", "HAT-x2", "SwinIR 4x", "SCUNet-1x"],
)
def test_cuda_matches_cpu(cuda_registry: UpscalerRegistry, registry: UpscalerRegistry, name: str) -> None:
    image = photo("coffee", 96, 64)
    on_gpu = np.asarray(upscale(image, 2, cuda_registry.resolve(name), cuda_registry, tile=48), dtype=int)
    on_cpu = np.asarray(upscale(image, 2, registry.resolve(name), registry, tile=48), dtype=int)
    d = np.abs(on_gpu - on_cpu)
    assert d.mean() < 2.0 and np.percentile(d, 99.9) <= 16


def test_tiled_equals_untiled_on_cuda(cuda_registry: UpscalerRegistry) -> None:
    model = cuda_registry.load(cuda_registry.resolve("Compact-x4"))
    image = np.asarray(photo("astronaut", 150, 110))
    whole = upscale_array(model, image, tile=0).astype(int)
    d = np.abs(whole - upscale_array(model, image, tile=64, overlap=16).astype(int))
    assert d.max() <= 2


def test_offloaded_registry_keeps_models_on_the_cpu_between_runs(models_dir) -> None:
    cuda = torch.device("cuda")
    reg = UpscalerRegistry(models_dir, device=cuda, offload=torch.device("cpu"), max_cached_models=32)
    released = []
    reg.make_room = lambda: released.append(True)
    entry = reg.resolve("Compact-x4")
    model = reg.load(entry)
    assert model.device == cuda and next(model.descriptor.model.parameters()).device.type == "cpu"
    seen = []
    hook = model.descriptor.model.register_forward_pre_hook(
        lambda m, *_: seen.append(next(m.parameters()).device.type))
    try:
        out = upscale(photo("coffee", 64, 48), 2, entry, reg)
    finally:
        hook.remove()
    assert out.size == (128, 96) and set(seen) == {"cuda"} and released == [True]
    assert next(model.descriptor.model.parameters()).device.type == "cpu"
    assert reg.placement_log == [("Compact-x4", "in"), ("Compact-x4", "out")]
