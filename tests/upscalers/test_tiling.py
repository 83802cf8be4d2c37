"""Tiled inference: seams, padding, tiling hints, out-of-memory fallback, interrupt, progress."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from upscalers import DeviceOutOfMemory, Interrupted, UpscalerRegistry, upscale_array
from upscalers.registry import LoadedModel
from upscalers.tiling import SizeSpec, _edge_weights, _pad, count_tiles, initial_tile, tile_starts

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


@dataclass
class ConvNet:
    """A tiny random conv upscaler of any scale and size multiple, which tiles freely."""

    scale: int
    multiple_of: int = 1
    fail_calls: tuple[int, ...] = ()
    """1-based calls that raise an out-of-memory error."""
    calls: int = 0
    output_channels: int = 3
    tiling: str = "supported"
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.scale * 100 + self.multiple_of)
        self.w1 = torch.randn(8, 3, 3, 3, generator=g) * 0.3
        self.w2 = torch.randn(3 * self.scale**2, 8, 3, 3, generator=g) * 0.3

    @property
    def size_requirements(self) -> SizeSpec:
        return SizeSpec(multiple_of=self.multiple_of)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert x.shape[-1] % self.multiple_of == 0 and x.shape[-2] % self.multiple_of == 0
        if self.calls in self.fail_calls:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        y = F.pixel_shuffle(F.conv2d(F.conv2d(x, self.w1, padding=1).relu(), self.w2, padding=1), self.scale)
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") + 0.2 * torch.tanh(y)


Rect = tuple[int, int, int, int]


def grid(width: int, height: int, tile: int, overlap: int, multiple_of: int = 1) -> list[Rect]:
    """The tiles of one pass, (x, y, w, h) in input pixels, in the order they run."""
    xs, w = tile_starts(width, tile, overlap, multiple_of)
    ys, h = tile_starts(height, tile, overlap, multiple_of)
    return [(x, y, w, h) for y in ys for x in xs]


def blended_reference(model, image: np.ndarray, rects: list[Rect], overlap: int) -> np.ndarray:
    """Obviously correct, and memory-hungry: full-size float sums of every tile's weighted output
    (the same per-tile padding and feather weights as tiling.py), divided once at the end."""
    s, (height, width) = model.scale, image.shape[:2]
    value = torch.zeros((3, height * s, width * s))
    weight = torch.zeros((height * s, width * s))
    for x, y, w, h in rects:
        t = torch.from_numpy(image[y : y + h, x : x + w].copy()).permute(2, 0, 1)[None].float() / 255
        padded_w, padded_h = model.size_requirements.padded(w, h)
        with torch.inference_mode():
            out = model(_pad(t, padded_w - w, padded_h - h))[0, :, : h * s, : w * s]
        out = torch.nan_to_num(out.float(), nan=0.0).clamp(0, 1)
        wy = torch.from_numpy(_edge_weights(y, h, height, overlap, s))
        wx = torch.from_numpy(_edge_weights(x, w, width, overlap, s))
        value[:, y * s : (y + h) * s, x * s : (x + w) * s] += out * (wy[:, None] * wx[None, :])
        weight[y * s : (y + h) * s, x * s : (x + w) * s] += wy[:, None] * wx[None, :]
    mean = value / weight.clamp(min=1e-6)
    return mean.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    ("scale", "multiple_of", "width", "height", "tile", "overlap"),
    [
        (1, 1, 97, 61, 32, 8),
        (2, 1, 150, 41, 40, 12),  # two rows, four columns
        (3, 1, 75, 53, 33, 5),  # odd overlap, uneven tile starts
        (4, 1, 130, 90, 48, 0),  # abutting tiles (the rounding still overlaps some)
        (4, 1, 200, 30, 48, 8),  # one row of tiles
        (2, 1, 30, 130, 40, 8),  # one column of tiles
        (2, 64, 250, 130, 128, 8),  # padded tiles; three of them cover the same columns
    ],
)
def test_streamed_blend_matches_a_full_size_accumulator(
    scale: int, multiple_of: int, width: int, height: int, tile: int, overlap: int
) -> None:
    """Writing each pixel as soon as its last tile is done gives the full-size weighted mean."""
    model = ConvNet(scale, multiple_of)
    image = np.asarray(photo("astronaut", width, height))
    size = initial_tile(width, height, "supported", model.size_requirements, tile, overlap)
    assert size is not None
    rects = grid(width, height, size, overlap, multiple_of)
    assert len(rects) > 1
    out = upscale_array(model, image, tile=tile, overlap=overlap)
    assert out.shape == (height * scale, width * scale, 3)
    assert diff(out, blended_reference(model, image, rects, overlap)).max() <= 1


@pytest.mark.parametrize("name", ["Compact-x4", "RealESRGAN-x2plus-sf"])
def test_streamed_blend_matches_a_full_size_accumulator_for_real_models(registry, name: str) -> None:
    model = registry.load(registry.resolve(name))
    image = np.asarray(photo("coffee", 75, 53))
    rects = grid(75, 53, 32, 8, model.size_requirements.multiple_of)
    out = upscale_array(model, image, tile=32, overlap=8)
    assert diff(out, blended_reference(model, image, rects, 8)).max() <= 1


def test_streamed_blend_after_an_oom_in_the_middle_of_a_row() -> None:
    """The third tile fails: it and every later tile run as halved sub-tiles, which blend with
    the finished tiles around them as if all had been accumulated at full size."""
    image = np.asarray(photo("astronaut", 250, 190))
    flaky = ConvNet(2, fail_calls=(3,))
    out = upscale_array(flaky, image, tile=96, overlap=8)
    rects = grid(250, 190, 96, 8)
    half = max(rects[0][2:]) // 2
    split = [(x + sx, y + sy, sw, sh) for x, y, w, h in rects[2:] for sx, sy, sw, sh in grid(w, h, half, 8)]
    assert flaky.calls == 1 + len(rects[:2] + split)
    assert diff(out, blended_reference(ConvNet(2), image, rects[:2] + split, 8)).max() <= 1
