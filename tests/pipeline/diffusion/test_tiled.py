"""Tiled diffusion (pipeline/tiled): tile planning geometry, the merge (normalised weights, MultiDiffusion's
average), equivalence with the untiled pass when one tile covers everything, UNet batches, both hires
passes, the seam metric (it flags hard tile borders, not the default blend), closeness to the untiled
picture at low denoise, interrupt/skip inside a tiled step and progress counting tiles."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.diffusion.conditioning import Cond
from pipeline.diffusion.tiled import TiledGuidance, TileSettings, grid_positions, plan_windows
from tests.conftest import Env, count_unet, mean_abs_diff, pixels
from tests.pipeline.jobs.test_img2img import _noise_image, run


@pytest.mark.parametrize("h,w,tile,overlap", [(64, 64, 64, 8), (100, 37, 24, 6), (13, 200, 16, 15),
                                              (9, 9, 4, 1), (96, 128, 96, 8)])
def test_windows_cover_everything_with_the_overlap(h: int, w: int, tile: int, overlap: int) -> None:
    wins = plan_windows(h, w, tile, tile, overlap)
    seen = np.zeros((h, w), int)
    for win in wins:
        assert 0 <= win.y and win.y + win.h <= h and 0 <= win.x and win.x + win.w <= w
        assert (win.h, win.w) == (min(tile, h), min(tile, w))
        seen[win.y:win.y + win.h, win.x:win.x + win.w] += 1
    assert seen.min() >= 1
    effective = min(overlap, min(tile, h, w) - 1)  # the overlap is clamped below the (clamped) tile
    xs = sorted({win.x for win in wins})
    for a, b in zip(xs, xs[1:]):  # neighbours overlap by at least that
        assert a + min(tile, w) - b >= effective


def test_positions_by_hand() -> None:
    assert grid_positions(12, 8, 4) == [0, 4]  # ceil(8 / 4) = 2 tiles
    assert grid_positions(20, 8, 2) == [0, 6, 12]  # ceil(18 / 6) = 3, step 6
    assert grid_positions(21, 8, 2) == [0, 4, 8, 13]  # ceil(19 / 6) = 4 tiles, step 13 / 3 truncated
    assert grid_positions(8, 8, 2) == [0] and grid_positions(5, 8, 2) == [0]
    with pytest.raises(ValueError):
        grid_positions(20, 4, 4)


def _cond(b: int) -> Cond:
    return Cond(torch.zeros(b, 77, 8), None)


@pytest.mark.parametrize("method", ["MultiDiffusion", "Mixture of Diffusers"])
def test_merge_is_normalised(method: str) -> None:
    """A model that returns its input: the merged output is the input exactly, whatever the weights."""
    x = torch.randn(2, 4, 12, 20)
    tiled = TiledGuidance(lambda xi, t, c, u: xi * 1.0, TileSettings(method, 8, 8, 3, 3), 12, 20)
    assert len(tiled.windows) > 1
    assert torch.allclose(tiled(x, 0, _cond(2), _cond(2)), x, atol=1e-6)


def test_multidiffusion_averages_the_tiles() -> None:
    """Each tile predicts its own mean: the overlap gets the plain average of the two tiles' values."""
    x = torch.zeros(1, 1, 4, 12)
    x[..., 6:] = 1.0  # tile 1 (cols 0-7) mean 0.25, tile 2 (cols 4-11) mean 0.75
    tiled = TiledGuidance(lambda xi, t, c, u: xi.mean(dim=(1, 2, 3), keepdim=True).expand_as(xi).clone(),
                          TileSettings("MultiDiffusion", 8, 8, 4, 1), 4, 12)
    out = tiled(x, 0, _cond(1), _cond(1))[0, 0, 0]
    assert torch.allclose(out[:4], torch.tensor(0.25)) and torch.allclose(out[8:], torch.tensor(0.75))
    assert torch.allclose(out[4:8], torch.tensor(0.5))


def test_one_tile_equals_the_untiled_pass(env: Env) -> None:
    src = _noise_image(96, 64)
    a = run(env, [src], width=96, height=64)
    b = run(env, [src], width=96, height=64, tiled_diffusion={"tile_width": 128, "tile_height": 128,
                                                            "overlap": 16})
    assert (pixels(a.images[0]) == pixels(b.images[0])).all()


def test_tiles_are_batched_and_change_the_result(env: Env, builtin_model: Any) -> None:
    src = _noise_image(128, 64)
    plain = run(env, [src], width=128, height=64, steps=4, denoising_strength=0.5)
    with count_unet(builtin_model) as c:  # latent 16x8, tiles 8x8 overlap 4: 3 tiles, 2 per UNet batch
        t = run(env, [src], width=128, height=64, steps=4, denoising_strength=0.5,
                tiled_diffusion={"method": "MultiDiffusion", "tile_width": 64, "tile_height": 64,
                                 "overlap": 32, "tile_batch_size": 2})
    assert c.count() == 3 * 2 and t.unet_calls == [3]
    assert t.images[0].size == (128, 64)
    assert not (pixels(plain.images[0]) == pixels(t.images[0])).all()


def test_both_hires_passes_are_tiled(env: Env, builtin_model: Any) -> None:
    with count_unet(builtin_model) as c:
        r = env.run(enable_hr=True, hr_scale=2, steps=3, width=128, height=64, tiled_diffusion={
            "tile_width": 64, "tile_height": 64, "overlap": 16, "tile_batch_size": 1})
    # tiles 8x8 cells overlapping by 2: pass one 128x64 (latent 16x8) 3x1 tiles, pass two 256x128
    # (latent 32x16) 5x3 tiles; 3 steps each
    assert r.images[0].size == (256, 128) and r.unet_calls == [3, 3]
    assert c.count() == 3 * 3 + 15 * 3


# -- seams ------------------------------------------------------------------------------------------
# The seam metric. A seam is a line along a tile border where the picture steps. The untiled pass of the same
# request (same seed, same noise) is the reference: its pixel gradients (the gradient image's own slope, the
# tiny VAE's texture) cancel in the difference, so what remains is what tiling added. For every pixel column
# the horizontal gradient of (tiled - untiled) is averaged over all rows and channels: a seam is a step
# consistent along the whole border, random texture averages out. Border score: the mean |profile| at the
# columns where a tile ends or starts inside the picture (latent cell boundaries); inside score: the same at
# every other latent cell boundary (same 8-pixel phase, so the VAE's upsampling pattern is compared with
# itself). Measured on tiny-sd1 (seeds 1, 99, 1234): overlap 0 gives border/inside 5.1-7.2, the default
# Mixture of Diffusers with a 64 px overlap 0.5-1.0.
SEAM_W, SEAM_H = 256, 128


def _gradient_image() -> Image.Image:
    x = np.linspace(0.0, 1.0, SEAM_W)[None, :]
    y = np.linspace(0.0, 1.0, SEAM_H)[:, None]
    rgb = np.stack([x + 0 * y, 0.5 + 0 * x * y, 1 - 0.5 * x - 0.3 * y], axis=2) * 200 + 20
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def _column_profile(image: Image.Image) -> np.ndarray:
    return np.diff(pixels(image).astype(np.float64), axis=1).mean(axis=(0, 2))


def seam_ratio(tiled: Image.Image, untiled: Image.Image, settings: TileSettings) -> float:
    """Border score / inside score (see above) for the windows `settings` plans over the picture."""
    lw = SEAM_W // 8
    wins = settings.windows(SEAM_H // 8, lw)
    edges = {w.x for w in wins if w.x > 0} | {w.x + w.w for w in wins if w.x + w.w < lw}
    inside = [c for c in range(1, lw) if c not in edges]
    prof = np.abs(_column_profile(tiled) - _column_profile(untiled))
    return float(prof[[8 * c - 1 for c in sorted(edges)]].mean() / prof[[8 * c - 1 for c in inside]].mean())


def _seam_run(tiny_env: Env, seed: int, tiled: dict[str, Any] | None, denoise: float = 0.6):
    return run(tiny_env, [_gradient_image()], width=SEAM_W, height=SEAM_H, steps=4,
               denoising_strength=denoise, seed=seed, checkpoint="tiny-sd1.safetensors",
               **({"tiled_diffusion": tiled} if tiled else {}))


@pytest.mark.parametrize("seed", [1, 1234])
def test_seam_metric_flags_hard_tile_borders_and_passes_the_default_blend(tiny_env: Env, seed: int) -> None:
    """Tiles 128 px (16 cells) over a 256x128 gradient at denoise 0.6: with no overlap the border is a seam
    (ratio > 3); the default method and overlap (Mixture of Diffusers, 64 px) leave no step there beyond the
    inside level (ratio < 1.5)."""
    untiled = _seam_run(tiny_env, seed, None).images[0]
    hard = {"method": "MultiDiffusion", "tile_width": 128, "tile_height": 128, "overlap": 0}
    blended = {"tile_width": 128, "tile_height": 128}  # default method and overlap
    hard_ratio = seam_ratio(_seam_run(tiny_env, seed, hard).images[0], untiled,
                            TileSettings("MultiDiffusion", 16, 16, 0))
    blended_ratio = seam_ratio(_seam_run(tiny_env, seed, blended).images[0], untiled,
                               TileSettings(tile_width=16, tile_height=16))
    assert hard_ratio > 3.0, hard_ratio
    assert blended_ratio < 1.5, blended_ratio


def test_tiled_is_close_to_untiled_at_low_denoise(tiny_env: Env) -> None:
    """At denoise 0.3 the tiled picture (default blend, 128 px tiles) differs from the untiled one by less
    than a quarter of what another seed changes (measured: 5.5 vs 43.7 levels mean absolute difference)."""
    tiles = {"tile_width": 128, "tile_height": 128}
    untiled = _seam_run(tiny_env, 1234, None, 0.3).images[0]
    tiled = _seam_run(tiny_env, 1234, tiles, 0.3).images[0]
    other_seed = _seam_run(tiny_env, 5, None, 0.3).images[0]
    assert mean_abs_diff(tiled, untiled) < 0.25 * mean_abs_diff(other_seed, untiled)
    assert mean_abs_diff(tiled, untiled) > 0  # the tiles did run


# -- interrupt, skip and progress inside a tiled call ---------------------------------------------------
# 128x128 img2img (latent 16x16) in 64 px tiles with a 16 px overlap: 3x3 = 9 tiles, one per UNet batch, so
# a tiled step is 9 UNet calls. The flags are set from a UNet pre-hook, as an HTTP handler would mid-step.
TILES_9 = {"tile_width": 64, "tile_height": 64, "overlap": 16, "tile_batch_size": 1}


def _flag_at(env: Env, k: int, flag: str):
    def on_call(n: int, _t: float) -> None:
        if n == k:
            getattr(env.state, flag)()
    return on_call


@pytest.mark.parametrize("flag", ["interrupt", "skip"])
def test_a_flag_stops_the_pass_inside_a_tiled_step(env: Env, builtin_model: Any, flag: str) -> None:
    src = _noise_image(128, 128)
    with count_unet(builtin_model, on_call=_flag_at(env, 9 + 4, flag)) as c:  # tile 4 of step 2
        res = run(env, [src], width=128, height=128, steps=4, denoising_strength=1.0, tiled_diffusion=TILES_9)
    assert c.count() == 9 + 4  # stopped after the tile batch in which the flag arrived, not at the step's end
    assert res.unet_calls == [1]  # one whole model call; the second was cut short
    assert len(res.images) == 1 and res.images[0].size == (128, 128)
    assert pixels(res.images[0]).std() > 1  # the first step's denoised estimate, a real picture


def test_progress_counts_tiles_within_a_step(env: Env, builtin_model: Any) -> None:
    snaps: list[dict] = []
    with count_unet(builtin_model, on_call=lambda n, t: snaps.append(env.state.snapshot())):
        run(env, [_noise_image(128, 128)], width=128, height=128, steps=2, denoising_strength=1.0,
            tiled_diffusion={**TILES_9, "tile_batch_size": 2})  # 9 tiles in batches of 2
    texts = [s["textinfo"] for s in snaps]
    progress = [s["progress"] for s in snaps]
    steps = snaps[0]["state"]["sampling_steps"]
    per_step = 5  # ceil(9 / 2) UNet calls
    assert len(snaps) == steps * per_step
    # before each UNet call, the tiles of the batches before it in this step are reported as done
    assert texts[1:per_step] == [f"Tiled Diffusion: tile {d}/9 of step 1/{steps}" for d in (2, 4, 6, 8)]
    assert texts[per_step + 1] == f"Tiled Diffusion: tile 2/9 of step 2/{steps}"
    assert progress == sorted(progress) and len(set(progress)) == len(progress)  # moves with every batch
    assert progress[1] == pytest.approx(0.01 + (2 / 9) / steps)
    assert progress[per_step] == pytest.approx(0.01 + 1 / steps)  # a new step starts at the step count
