"""Hires fix's pixel path with LDSR: the job's `ldsr_steps` reach the sampler, its steps are reported as
progress, and an interrupt between steps falls back to a Lanczos resize as for any upscaler."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.jobs.pixel_upscale import HiresUpscaler
from tests.fixtures.ldsr import tiny_ldsr_state, write_ldsr
from upscalers import UpscalerRegistry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> UpscalerRegistry:
    root = tmp_path_factory.mktemp("ldsr_hires")
    write_ldsr(root / "LDSR", tiny_ldsr_state())
    return UpscalerRegistry(root)


def first_pass() -> Image.Image:
    rng = np.random.default_rng(2)
    return Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))


def test_ldsr_steps_option_drives_the_sampler_and_its_progress(registry: UpscalerRegistry) -> None:
    seen: list[tuple[int, int]] = []
    hires = HiresUpscaler(registry, {"ldsr_steps": 2}, on_progress=lambda d, t: seen.append((d, t)))
    out = hires.upscale_to(first_pass(), "LDSR", 64, 48, lambda: False)
    assert out.size == (64, 48) and seen == [(1, 2), (2, 2)]


def test_an_interrupt_between_steps_falls_back_to_lanczos(registry: UpscalerRegistry) -> None:
    seen: list[tuple[int, int]] = []
    hires = HiresUpscaler(registry, {"ldsr_steps": 4}, on_progress=lambda d, t: seen.append((d, t)))
    image = first_pass()
    out = hires.upscale_to(image, "LDSR", 64, 48, lambda: len(seen) >= 1)
    assert seen == [(1, 4)]
    lanczos = image.resize((64, 48), Image.Resampling.LANCZOS)
    assert np.asarray(out).tobytes() == np.asarray(lanczos).tobytes()
