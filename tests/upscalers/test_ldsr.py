"""LDSR from an A1111 `models/LDSR` folder: a tiny checkpoint in CompVis' key layout (tests/fixtures/ldsr.py)
is found, listed, upscales at the sizes A1111 gives, matches an independent reference of A1111's run from the
same weights within one 8-bit level, and a pickle payload in its place is refused without running."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.ldsr import reference_upscale, tiny_ldsr_state, write_ldsr, write_lightning_ckpt
from tests.fixtures.tinymodels import write_malicious_ckpt
from upscalers import Interrupted, UnknownUpscaler, UpscalerRegistry, plan_upscale, upscale
from upscalers.ldsr import LdsrOptions


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return tiny_ldsr_state()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor]) -> Path:
    root = tmp_path_factory.mktemp("ldsr") / "models"
    write_ldsr(root / "LDSR", state)
    return root


@pytest.fixture(scope="module")
def registry(models: Path) -> UpscalerRegistry:
    return UpscalerRegistry(models)


def noisy(w: int, h: int, seed: int = 0) -> Image.Image:
    """A photo-like input: smooth gradients plus texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


def test_listed_from_the_folder_as_a1111_names_it(registry: UpscalerRegistry) -> None:
    item = next(i for i in registry.as_api_list() if i["name"] == "LDSR")
    assert item["scale"] == 4.0 and item["model_path"].endswith("LDSR/model.ckpt")
    assert registry.resolve("ldsr").name == "LDSR"


def test_matches_the_reference_within_one_level_over_several_tiles(
        registry: UpscalerRegistry, state: dict[str, torch.Tensor]) -> None:
    # 130x60 pads to 192x128: two UNet tiles and two decoder tiles, blended by their border weights
    image = noisy(130, 60)
    out = upscale(image, 4, registry.resolve("LDSR"), registry, ldsr=LdsrOptions(steps=2))
    expected = reference_upscale(state, image, 4, steps=2)
    assert out.size == expected.size == (520, 240)
    diff = np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int))
    assert diff.max() <= 1
    assert np.asarray(out).std() > 10  # a real picture, not a flat fill


def test_a_factor_other_than_4_resizes_first_then_to_a1111s_destination(
        registry: UpscalerRegistry, state: dict[str, torch.Tensor]) -> None:
    image = noisy(50, 30, seed=1)
    entry = registry.resolve("LDSR")
    # A1111: input resized to ceil(50*2.5/4) x ceil(30*2.5/4) = 32x19, sampled 4x to 128x76, then Lanczos
    # to floor(50*2.5/8)*8 x floor(30*2.5/8)*8 = 120x72
    assert plan_upscale(image.size, 2.5, entry).passes == ((128, 76),)
    out = upscale(image, 2.5, entry, registry, ldsr=LdsrOptions(steps=1))
    assert out.size == (120, 72)
    expected = reference_upscale(state, image, 2.5, steps=1).resize((120, 72), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max() <= 2


def test_alpha_is_kept_the_same_input_gives_the_same_image_and_ldsr_cached_is_honoured(
        registry: UpscalerRegistry) -> None:
    image = noisy(24, 16).convert("RGBA")
    image.putalpha(128)
    entry = registry.resolve("LDSR")
    a = upscale(image, 2, entry, registry, ldsr=LdsrOptions(steps=1, cached=True))
    assert registry.ldsr.is_cached()
    b = upscale(image, 2, entry, registry, ldsr=LdsrOptions(steps=1, cached=False))
    assert not registry.ldsr.is_cached()  # the job leaves no model behind
    assert a.mode == "RGBA" and a.size == (48, 32)
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert set(np.asarray(a)[..., 3].ravel()) == {128}


def test_steps_are_reported_and_an_interrupt_stops_between_steps(registry: UpscalerRegistry) -> None:
    # 3 steps: CompVis' timesteps 1, 334, 667, 1000 (1000 // 3 = 333 apart); the last is past the 1000-step
    # schedule (where A1111 fails) and is dropped
    entry = registry.resolve("LDSR")
    seen: list[tuple[int, int]] = []
    out = upscale(noisy(20, 20), 2, entry, registry, ldsr=LdsrOptions(steps=3),
                  on_tile=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)] and out.size == (40, 40)

    calls: list[tuple[int, int]] = []
    with pytest.raises(Interrupted):
        upscale(noisy(20, 20), 2, entry, registry, ldsr=LdsrOptions(steps=3),
                should_stop=lambda: len(calls) >= 2, on_tile=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3)]


def test_safetensors_without_ema_and_without_yaml_loads(tmp_path: Path) -> None:
    state = tiny_ldsr_state(seed=3, ema=False)
    write_ldsr(tmp_path / "LDSR", state, fmt="safetensors", yaml=False)
    registry = UpscalerRegistry(tmp_path)
    entry = registry.resolve("LDSR")
    assert entry.path is not None and entry.path.name == "model.safetensors"
    image = noisy(40, 24, seed=2)
    out = upscale(image, 4, entry, registry, ldsr=LdsrOptions(steps=1))
    expected = reference_upscale(state, image, 4, steps=1)
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_a_moved_folder_is_used(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    write_ldsr(tmp_path / "elsewhere", state)
    assert "LDSR" not in UpscalerRegistry(tmp_path / "models").names()
    assert "LDSR" in UpscalerRegistry(tmp_path / "models", folders={"LDSR": tmp_path / "elsewhere"}).names()


class CreatesFile:
    """Unpickling this calls `open(path, "w")`: proof that a loader ran pickle code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_a_lightning_checkpoint_like_the_released_one_loads(tmp_path: Path) -> None:
    # the released model.ckpt names Lightning's ModelCheckpoint and holds numpy scalars besides the tensors
    state = tiny_ldsr_state(seed=5, ema=False)
    write_lightning_ckpt(tmp_path / "LDSR" / "model.ckpt", state)
    registry = UpscalerRegistry(tmp_path)
    image = noisy(20, 16, seed=4)
    out = upscale(image, 4, registry.resolve("LDSR"), registry, ldsr=LdsrOptions(steps=1))
    expected = reference_upscale(state, image, 4, steps=1)
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_a_lightning_checkpoint_with_a_payload_is_refused_and_never_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "pwned"
    write_lightning_ckpt(tmp_path / "LDSR" / "model.ckpt", tiny_ldsr_state(ema=False),
                         extra_global=CreatesFile(marker))
    with caplog.at_level(logging.WARNING):
        registry = UpscalerRegistry(tmp_path)
    assert not marker.exists() and "LDSR" not in registry.names()
    assert any("io.open" in r.getMessage() and "never loaded" in r.getMessage() for r in caplog.records)


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "pwned"
    write_malicious_ckpt(tmp_path / "models" / "LDSR" / "model.ckpt", marker)
    with caplog.at_level(logging.WARNING):
        registry = UpscalerRegistry(tmp_path / "models")
    assert not marker.exists()
    assert "LDSR" not in registry.names()
    assert any("model.ckpt" in r.getMessage() and "never loaded" in r.getMessage() for r in caplog.records)
    with pytest.raises(UnknownUpscaler):
        registry.resolve("LDSR")


def _broken(state: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    if case == "another model":
        return {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}
    if case == "a flat conv":
        return {**state, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32)}
    if case == "a 2x first stage":
        return {k: v for k, v in state.items() if not k.startswith("first_stage_model.decoder.up.2.")}
    return {**state, "model.diffusion_model.out.2.weight": torch.zeros(5, 32, 3, 3)}


@pytest.mark.parametrize(("case", "reason"), [("another model", "first_stage_model"),
                                              ("a flat conv", "do not form an LDSR model"),
                                              ("a 2x first stage", "LDSR's is 4x"),
                                              ("wrong UNet channels", "do not form an LDSR model")])
def test_a_checkpoint_that_is_not_ldsr_is_skipped_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, state: dict[str, torch.Tensor], case: str,
        reason: str) -> None:
    folder = tmp_path / "LDSR"
    folder.mkdir()
    torch.save({"state_dict": _broken(state, case)}, folder / "model.ckpt")
    with caplog.at_level(logging.WARNING):
        registry = UpscalerRegistry(tmp_path)
    assert "LDSR" not in registry.names()
    assert any(reason in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
