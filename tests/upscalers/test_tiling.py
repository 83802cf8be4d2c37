"""Tiled inference: seams, padding, tiling hints, out-of-memory fallback, interrupt, progress."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from upscalers import DeviceOutOfMemory, Interrupted, UpscalerRegistry, upscale_array
from upscalers.registry import LoadedModel
from upscalers.tiling import count_tiles

from .conftest import photo


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape
    return np.abs(a.astype(int) - b.astype(int))


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return np.asarray(photo("astronaut", 150, 110))


def test_tiles_are_seamless_when_the_margin_covers_the_receptive_field(registry, picture) -> None:
    """Compact(num_conv=2) sees 4 px around each pixel; overlap 16 gives a 4 px margin, so
    blending must reproduce the untiled result up to rounding."""
    model = registry.load(registry.resolve("Compact-x4"))
    whole = upscale_array(model, picture, tile=0)
    calls: list[tuple[int, int]] = []
    tiled = upscale_array(model, picture, tile=64, overlap=16, on_tile=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)
    assert whole.shape == (440, 600, 3)
    assert diff(whole, tiled).max() <= 1


def test_default_overlap_blends_away_visible_seams(registry, picture) -> None:
    """With the default 8 px overlap the model's 4 px context is not fully inside the margin;
    the feathered blend keeps the error tiny, unlike abutting tiles."""
    model = registry.load(registry.resolve("Compact-x4"))
    whole = upscale_array(model, picture, tile=0)
    blended = diff(whole, upscale_array(model, picture, tile=48, overlap=8))
    abutting = diff(whole, upscale_array(model, picture, tile=48, overlap=0))
    assert blended.max() <= 4 and blended.mean() < 0.1
    assert abutting.max() > 2 * blended.max()


@pytest.mark.parametrize("name", ["ESRGAN-x4-new", "DAT-x2", "HAT-x2", "RealESRGAN-x2plus-sf"])
def test_every_tileable_family_tiles_close_to_untiled(registry, name: str) -> None:
    image = np.asarray(photo("coffee", 75, 53))  # odd sizes: x2plus needs multiples of 4 (padding)
    model = registry.load(registry.resolve(name))
    whole = upscale_array(model, image, tile=0)
    tiled = upscale_array(model, image, tile=32, overlap=8)
    assert whole.shape == tiled.shape == (53 * model.scale, 75 * model.scale, 3)
    # Near the image border the untiled run saw padding the tiles did not (odd sizes are padded
    # to the model's multiple, window models pad internally): compare the inside, where seams are.
    border = 8 * model.scale
    d = diff(whole, tiled)[border:-border, border:-border]
    assert d.max() <= 8 and d.mean() < 0.5


@pytest.mark.parametrize("name", ["SwinIR 4x", "SCUNet-1x"])
def test_discouraged_models_run_whole(registry, name: str) -> None:
    model = registry.load(registry.resolve(name))
    image = np.asarray(photo("chelsea", 70, 50))
    calls: list[tuple[int, int]] = []
    out = upscale_array(model, image, tile=32, overlap=8, on_tile=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]
    assert out.shape == (50 * model.scale, 70 * model.scale, 3)


@dataclass
class FlakyModel:
    """Wraps a loaded model; inputs larger than `limit` px raise an out-of-memory error."""

    inner: LoadedModel
    limit: int
    error: type[Exception] = torch.OutOfMemoryError
    tiling: str = "supported"
    seen: list[tuple[int, int]] = field(default_factory=list)

    scale = property(lambda self: self.inner.scale)
    output_channels = property(lambda self: self.inner.output_channels)
    size_requirements = property(lambda self: self.inner.size_requirements)
    device = property(lambda self: self.inner.device)
    dtype = property(lambda self: self.inner.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        self.seen.append((w, h))
        if max(h, w) > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 58.00 GiB")
        return self.inner(x)


def test_oom_halves_the_tile_and_still_gets_it_right(registry) -> None:
    model = registry.load(registry.resolve("Compact-x4"))
    image = np.asarray(photo("astronaut", 96, 80))
    reference = upscale_array(model, image, tile=48, overlap=8)
    flaky = FlakyModel(model, limit=50)
    out = upscale_array(flaky, image, tile=192, overlap=8)  # 96 px fits one tile: OOM, then 48
    assert flaky.seen[0] == (96, 80)
    assert max(max(s) for s in flaky.seen[1:]) <= 48
    assert diff(out, reference).max() <= 1
    assert diff(out, upscale_array(model, image, tile=0)).max() <= 4


def test_oom_message_in_a_runtime_error_also_halves(registry) -> None:
    model = registry.load(registry.resolve("Compact-x4"))
    image = np.asarray(photo("astronaut", 96, 80))
    flaky = FlakyModel(model, limit=40, error=RuntimeError)
    out = upscale_array(flaky, image, tile=64, overlap=8)
    assert out.shape == (320, 384, 3)
    # one failure, then the halved size (kept at the 32 px minimum) is used for every later tile
    assert [s for s in flaky.seen if max(s) > 40] == [flaky.seen[0]]
    assert max(max(s) for s in flaky.seen[1:]) <= 32


def test_oom_at_the_smallest_tile_is_a_typed_error(registry) -> None:
    model = registry.load(registry.resolve("Compact-x4"))
    with pytest.raises(DeviceOutOfMemory):
        upscale_array(FlakyModel(model, limit=10), np.asarray(photo("astronaut", 96, 80)), tile=64)


def test_internal_tiling_models_are_never_tiled(registry) -> None:
    model = registry.load(registry.resolve("Compact-x4"))
    flaky = FlakyModel(model, limit=50, tiling="internal")
    with pytest.raises(DeviceOutOfMemory, match="must not be tiled"):
        upscale_array(flaky, np.asarray(photo("astronaut", 96, 80)), tile=32)
    assert flaky.seen == [(96, 80)]


def test_discouraged_models_tile_after_an_oom(registry) -> None:
    model = registry.load(registry.resolve("Compact-x4"))
    flaky = FlakyModel(model, limit=50, tiling="discouraged")
    calls: list[tuple[int, int]] = []
    image = np.asarray(photo("astronaut", 96, 80))
    out = upscale_array(flaky, image, tile=48, on_tile=lambda d, t: calls.append((d, t)))
    assert flaky.seen[0] == (96, 80) and len(flaky.seen) > 2
    assert calls[-1][0] == calls[-1][1] > 1  # progress follows the new grid
    assert diff(out, upscale_array(model, image, tile=48)).max() <= 1


def test_other_runtime_errors_propagate(registry) -> None:
    model = registry.load(registry.resolve("Compact-x4"))
    flaky = FlakyModel(model, limit=10, error=ValueError)
    with pytest.raises(ValueError):
        upscale_array(flaky, np.asarray(photo("astronaut", 64)), tile=32)


def test_interrupt_between_tiles(registry) -> None:
    model = registry.load(registry.resolve("ESRGAN-x2-old"))
    image = np.asarray(photo("astronaut", 128, 96))
    calls: list[tuple[int, int]] = []
    with pytest.raises(Interrupted):
        upscale_array(
            model, image, tile=32, overlap=8,
            should_stop=lambda: len(calls) >= 2,
            on_tile=lambda d, t: calls.append((d, t)),
        )
    total = count_tiles(128, 96, "supported", model.size_requirements, 32, 8)
    assert calls == [(1, total), (2, total)]


def test_cpu_runs_fp32(registry: UpscalerRegistry) -> None:
    for name in ("ESRGAN-x4-old", "DAT-x2"):
        assert registry.load(registry.resolve(name)).dtype == torch.float32
