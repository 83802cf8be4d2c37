"""Hypertile, token merging and Deep Shrink in real (tiny) jobs: each changes the image when on, acts on
the passes A1111 / Forge act on (observed where it acts: tile counts at the attention call, merged token
counts, the downscaled feature size), writes A1111's / Forge's infotext keys, is reproducible to the byte,
leaves the model as found, and changes nothing when off."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.jobs import unet_patches
from pipeline.runtime.errors import InvalidRequest
from tests.conftest import infotext_params, pixels
from tests.pipeline.models.test_unet_patches import hook_state

HIRES = {"enable_hr": True, "hr_scale": 2.0, "width": 128, "height": 128, "seed": 77}  # 128 -> 256 px
# 256 px, 128-px max tile, one option: 2x2 tiles at the full-resolution level of pass two (32x32 latent)
HYPERTILE_2ND = {"hypertile_enable_unet_secondpass": True, "hypertile_max_tile_unet": 128,
                 "hypertile_swap_size_unet": 1}


@pytest.fixture
def made(monkeypatch) -> list[tuple[int, Any]]:
    """(pass_no, patch) of every patch the real providers make."""
    seen: list[tuple[int, Any]] = []

    def observe(provider):
        def wrapped(p, info):
            patch = provider(p, info)
            if patch is not None:
                seen.append((info.pass_no, patch))
            return patch
        return wrapped

    monkeypatch.setattr(unet_patches, "PROVIDERS", [observe(f) for f in unet_patches.PROVIDERS])
    return seen


def same(a, b) -> bool:
    return np.array_equal(pixels(a.images[0]), pixels(b.images[0]))


def test_defaults_written_out_change_nothing(env, made):
    plain = env.run(**HIRES)
    explicit = env.run(**HIRES, options={
        "hypertile_enable_unet": False, "hypertile_enable_unet_secondpass": False, "token_merging_ratio": 0.0,
        "token_merging_ratio_hr": 0.0, "token_merging_ratio_img2img": 0.0},
        alwayson_scripts={"Kohya HRFix Integrated": {"args": [False, 3, 2.0, 0.0, 0.35, True, "bicubic",
                                                               "bicubic"]}})
    assert made == [] and same(plain, explicit) and plain.infotexts == explicit.infotexts


def test_hypertile_second_pass_tiles_pass_two_only(env, made):
    unet = env.model().unet
    before = hook_state(unet)
    plain = env.run(**HIRES)
    tiled = env.run(**HIRES, options=HYPERTILE_2ND)
    again = env.run(**HIRES, options=HYPERTILE_2ND)
    assert hook_state(unet) == before
    assert [n for n, _ in made] == [2, 2]
    tiles = made[0][1].tiles
    # every full-resolution self-attention call of pass two (1 down + 2 up per call) in 2x2 tiles
    assert tiles.count((2, 2)) == 3 * plain.unet_calls[1] and set(tiles) == {(2, 2), (1, 1)}
    assert not same(plain, tiled) and same(tiled, again)
    params = infotext_params(tiled.infotexts[0])
    assert params["Hypertile U-Net second pass"] == "True" and params["Hypertile U-Net max tile size"] == "128"
    assert "Hypertile U-Net" not in params and "Hypertile U-Net swap size" in params


def test_hypertile_unet_option_covers_both_passes_with_seeded_draws(env, made):
    opts = {"hypertile_enable_unet": True, "hypertile_max_tile_unet": 128}  # swap size 3: counts 2 or 1
    a = env.run(**HIRES, options=opts)
    b = env.run(**HIRES, options=opts)
    c = env.run(**{**HIRES, "seed": 78}, options=opts)
    assert [n for n, _ in made] == [1, 2, 1, 2, 1, 2]
    assert made[1][1].tiles == made[3][1].tiles != made[5][1].tiles  # drawn from the job's seed
    assert same(a, b) and infotext_params(a.infotexts[0])["Hypertile U-Net"] == "True"
    assert not same(a, c)


def test_token_merging_hr_merges_pass_two_tokens_only(env, made):
    unet = env.model().unet
    before = hook_state(unet)
    plain = env.run(**HIRES)
    merged = env.run(**HIRES, options={"token_merging_ratio_hr": 0.5})
    again = env.run(**HIRES, options={"token_merging_ratio_hr": 0.5})
    assert hook_state(unet) == before
    assert [n for n, _ in made] == [2, 2]
    counts = made[0][1].merged
    assert set(counts) == {(32 * 32, 32 * 32 - 512)} and len(counts) == 3 * plain.unet_calls[1]
    assert not same(plain, merged) and same(merged, again)
    params = infotext_params(merged.infotexts[0])
    assert params["Token merging ratio hr"] == "0.5" and "Token merging ratio" not in params


def test_token_merging_ratio_applies_to_both_passes(env, made):
    res = env.run(**HIRES, options={"token_merging_ratio": 0.3})
    assert [n for n, _ in made] == [1, 2]
    assert set(made[0][1].merged) == {(16 * 16, 16 * 16 - 76)}
    params = infotext_params(res.infotexts[0])
    assert params["Token merging ratio"] == "0.3" and params["Token merging ratio hr"] == "0.3"


KOHYA = {"Kohya HRFix Integrated": {"args": [True, 1, 2.0, 0.0, 0.5, True, "bicubic", "bicubic"]}}


def test_deep_shrink_downscales_block_one_early_in_sampling(env, made):
    """Block 1 (after the first resnet) at half size for the calls in the first half of the noise range;
    one 256-px pass (the single-pass use)."""
    unet = env.model().unet
    before = hook_state(unet)
    plain = env.run(width=256, height=256, seed=9, steps=6)
    shrunk = env.run(width=256, height=256, seed=9, steps=6, alwayson_scripts=KOHYA)
    again = env.run(width=256, height=256, seed=9, steps=6, alwayson_scripts=KOHYA)
    assert hook_state(unet) == before
    ds = made[0][1]
    assert set(ds.shrunk) == {((32, 32), (16, 16))}
    assert 0 < len(ds.shrunk) < plain.unet_calls[0]  # only early calls
    assert not same(plain, shrunk) and same(shrunk, again)
    params = infotext_params(shrunk.infotexts[0])
    assert params["kohya_hrfix_enabled"] == "True" and params["kohya_hrfix_block_number"] == "1"
    assert params["kohya_hrfix_end_percent"] == "0.5"


@pytest.mark.parametrize("method", ["bislerp", "nearest-exact", "area", "bilinear"])
def test_deep_shrink_methods_and_before_skip(env, made, method):
    args = [True, 2, 2.0, 0.0, 1.0, False, method, method]  # the downsample's output, skip included
    env.run(width=256, height=256, seed=9, steps=2,
            alwayson_scripts={"Kohya HRFix Integrated": {"args": args}})
    assert set(made[0][1].shrunk) == {((16, 16), (8, 8))}


@pytest.mark.parametrize("args,field", [
    ([True, 0], "args[1]"), ([True, 3, 20.0], "args[2]"), ([True, 3, 2.0, 0.0, 2.0], "args[4]"),
    ([True, 3, 2.0, 0.0, 0.3, True, "lanczos"], "args[6]"), ([1, 2, 3, 4, 5, 6, 7, 8, 9], "args"),
    (["yes"], "args[0]"),
])
def test_bad_kohya_args_are_refused_before_the_job(env, args, field):
    with pytest.raises(InvalidRequest) as err:
        env.prepare(alwayson_scripts={"Kohya HRFix Integrated": {"args": args}})
    assert f"alwayson_scripts.Kohya HRFix Integrated.{field}" in str(err.value.args) or \
        field in str(err.value)


def test_hypertile_vae_tiles_the_decode(env, made):
    plain = env.run(width=256, height=256, steps=2)
    tiled = env.run(width=256, height=256, steps=2, options={"hypertile_enable_vae": True,
                                                            "hypertile_max_tile_vae": 64})
    assert made == []  # the UNet untouched
    assert not same(plain, tiled) and "Hypertile VAE: True" in tiled.infotexts[0]
    assert "Hypertile VAE max tile size: 64" in tiled.infotexts[0]


def test_deep_shrink_is_installed_on_both_passes_and_acts_where_the_noise_is_high(env, made):
    """Forge patches every sampling; with its defaults (0-35%) the hires pass at denoising 0.5 starts at
    timestep ~500 (50%), so only pass one is shrunk."""
    env.run(**HIRES, alwayson_scripts={"Kohya HRFix Integrated": {"args": [True, 1]}})
    assert [n for n, _ in made] == [1, 2]
    assert made[0][1].shrunk and not made[1][1].shrunk
