from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from upscalers import BadImage, Interrupted, TooLarge, UpscalerRegistry, plan_upscale, upscale

from .conftest import photo

FACTORS = [0.5, 1, 1.5, 2, 2.55, 3, 4, 8]


def expected_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    return int(size[0] * factor) // 8 * 8, int(size[1] * factor) // 8 * 8


@pytest.mark.parametrize(
    "name", ["Lanczos", "Nearest", "None", "ESRGAN-x2-old", "Compact-x4", "SCUNet-1x-sf"]
)
@pytest.mark.parametrize("factor", FACTORS)
def test_output_size_table(registry: UpscalerRegistry, name: str, factor: float) -> None:
    image = photo("coffee", 45, 30)
    out = upscale(image, factor, registry.resolve(name), registry)
    assert out.size == expected_size(image.size, factor)
    assert out.mode == "RGB"


def test_pass_planning_follows_a1111(registry: UpscalerRegistry) -> None:
    x4 = registry.resolve("Compact-x4")
    assert plan_upscale((100, 80), 2, x4).passes == ((400, 320),)  # one pass, then downscaled
    assert plan_upscale((100, 80), 8, x4).passes == ((400, 320), (1600, 1280))
    assert len(plan_upscale((10, 8), 100, x4).passes) == 3  # stops after three passes
    assert plan_upscale((100, 80), 1, x4).passes == ((400, 320),)  # factor 1 still runs once
    assert plan_upscale((100, 80), 0.5, x4).passes == ()  # already covered: Lanczos only
    assert plan_upscale((100, 80), 4, registry.resolve("SCUNet-1x")).passes == ((100, 80),)  # no growth: stop
    assert plan_upscale((100, 80), 2.55, registry.resolve("Lanczos")).passes == ((254, 204),)


def test_model_result_is_the_model_output_resized(registry: UpscalerRegistry) -> None:
    """A 4x model asked for 2x runs once and is Lanczos-downscaled, it is not a plain Lanczos."""
    image = photo("astronaut", 48)
    entry = registry.resolve("Compact-x4")
    out = np.asarray(upscale(image, 2, entry, registry), dtype=float)
    model = registry.load(entry)
    from upscalers import upscale_array

    direct = Image.fromarray(upscale_array(model, np.asarray(image), tile=0))
    direct = direct.resize((96, 96), Image.Resampling.LANCZOS)
    lanczos = np.asarray(image.resize((96, 96), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(out - np.asarray(direct, dtype=float)).max() <= 1
    assert np.abs(out - lanczos).mean() > 5


def test_none_is_identity_plus_lanczos_correction(registry: UpscalerRegistry) -> None:
    image = photo("chelsea", 64, 40)
    assert np.array_equal(np.asarray(upscale(image, 1, registry.resolve("None"))), np.asarray(image))
    out = upscale(photo("chelsea", 61, 43), 1, registry.resolve("None"))
    assert out.size == (56, 40)


def test_alpha_survives(registry: UpscalerRegistry) -> None:
    rgb = photo("astronaut", 40)
    alpha = Image.linear_gradient("L").resize(rgb.size)
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    for name in ("Compact-x4", "Lanczos"):
        out = upscale(rgba, 2, registry.resolve(name), registry)
        assert out.mode == "RGBA" and out.size == (80, 80)
        expected = np.asarray(alpha.resize((80, 80), Image.Resampling.LANCZOS), dtype=int)
        assert np.abs(np.asarray(out.getchannel("A"), dtype=int) - expected).max() <= 1
        # colour comes from the same upscaler run on RGB alone
        plain = upscale(rgb, 2, registry.resolve(name), registry)
        assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(plain))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PT", "I;16", "I", "1", "CMYK"])
def test_other_modes_become_rgb_or_rgba(registry: UpscalerRegistry, mode: str) -> None:
    rgb = photo("coffee", 48, 32)
    grey = rgb.convert("L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode == "I":
        image = Image.fromarray(np.asarray(grey, dtype=np.int32) * 257).convert("I")
    elif mode == "PT":
        image = rgb.convert("P")
        image.info["transparency"] = 0
    else:
        image = rgb.convert(mode)
    out = upscale(image, 2, registry.resolve("Compact-x4"), registry)
    assert out.size == (96, 64)
    assert out.mode == ("RGBA" if mode in ("LA", "PT") else "RGB")
    if mode in ("I;16", "I"):
        # 16-bit greys are scaled, not clipped to white
        reference = upscale(grey, 2, registry.resolve("Compact-x4"), registry)
        assert np.abs(np.asarray(out, dtype=int) - np.asarray(reference, dtype=int)).max() <= 1
        assert np.asarray(out).mean() < 200


def test_budget_is_checked_before_the_model_loads(copy_models) -> None:
    reg = UpscalerRegistry(copy_models(**{"ESRGAN/x4.pth": "ESRGAN/ESRGAN-x4-old.pth"}))
    image = photo("chelsea", 64, 40)
    with pytest.raises(TooLarge, match="512x320"):
        upscale(image, 8, reg.resolve("x4"), reg, max_pixels=512 * 319)
    # the output fits but the second 4x pass would not
    with pytest.raises(TooLarge, match="intermediate"):
        upscale(image, 4.5, reg.resolve("x4"), reg, max_pixels=300 * 200)
    assert reg.cached_names() == []


def test_empty_results_are_rejected(registry: UpscalerRegistry) -> None:
    with pytest.raises(BadImage, match="0x"):
        upscale(photo("chelsea", 12, 10), 0.5, registry.resolve("Lanczos"))
    with pytest.raises(BadImage):
        upscale(photo("chelsea", 12, 10), float("nan"), registry.resolve("Lanczos"))


def test_interrupt_before_a_pass(registry: UpscalerRegistry) -> None:
    with pytest.raises(Interrupted):
        upscale(photo("chelsea", 32, 20), 2, registry.resolve("Lanczos"), should_stop=lambda: True)


def test_progress_spans_all_passes(registry: UpscalerRegistry) -> None:
    calls: list[tuple[int, int]] = []
    upscale(
        photo("chelsea", 40, 30),
        4,
        registry.resolve("ESRGAN-x2-old"),
        registry,
        tile=32,
        overlap=8,
        on_tile=lambda done, total: calls.append((done, total)),
    )
    totals = {t for _, t in calls}
    assert len(totals) == 1
    total = totals.pop()
    assert [d for d, _ in calls] == list(range(1, total + 1))
    assert total > 2  # the second pass (80x60 input) needs several 32px tiles
