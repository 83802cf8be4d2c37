"""A1111's "SD upscale" img2img script: tile grid geometry by hand, the feathered join, argument parsing and
the 400s, and a run on the builtin model (size, one img2img per tile with seed + i, infotext keys)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.jobs.sd_upscale import SDUpscale, combine, split_grid
from pipeline.runtime.errors import InvalidRequest
from tests.conftest import Env, count_unet, infotext_params
from tests.pipeline.jobs.test_img2img import _noise_image, run

NAMES = ["None", "Lanczos", "Nearest"]


def test_grid_by_hand() -> None:
    g = split_grid(128, 96, 64, 64, 16)  # cols ceil(112/48) = 3 every 32 px; rows ceil(80/48) = 2
    assert g.rows == [(0, [0, 32, 64]), (32, [0, 32, 64])]
    g = split_grid(1000, 512, 512, 512, 64)  # cols ceil(936/448) = 3, dx = 244
    assert g.rows == [(0, [0, 244, 488])]
    g = split_grid(512, 512, 512, 512, 64)  # one tile
    assert g.boxes == [(0, 0, 512, 512)]
    g = split_grid(200, 64, 64, 64, 0)  # no overlap: ceil(200/64) = 4 tiles, the last snapped to the edge
    assert g.rows == [(0, [0, 45, 90, 136])]
    for g in (split_grid(300, 170, 96, 80, 24), split_grid(97, 131, 64, 64, 8)):
        covered = np.zeros((g.height, g.width), bool)
        for x1, y1, x2, y2 in g.boxes:
            assert 0 <= x1 and x2 <= g.width and 0 <= y1 and y2 <= g.height
            covered[y1:y2, x1:x2] = True
        assert covered.all()


def test_combine_feathers_the_overlap() -> None:
    g = split_grid(96, 64, 64, 64, 32)  # two tiles at x 0 and 32
    black, white = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), (255, 255, 255))
    out = np.asarray(combine(g, [black, white]))[10, :, 0].astype(int)
    assert (out[:32] == 0).all() and (out[64:] == 255).all()
    ramp = out[32:64]
    assert (np.diff(ramp) >= 0).all() and ramp[0] < 10 and ramp[-1] > 240  # a linear blend, no step


def test_parse_arguments() -> None:
    resolve = {"lanczos": "Lanczos"}.__getitem__
    s = SDUpscale.parse([], NAMES, resolve)
    assert (s.overlap, s.upscaler, s.scale) == (64, "None", 2.0)  # A1111's defaults
    s = SDUpscale.parse(["", 32, 1, 3], NAMES, resolve)
    assert (s.overlap, s.upscaler, s.scale) == (32, "Lanczos", 3.0)
    assert SDUpscale.parse([None, 8.0, "lanczos", 2.5], NAMES, resolve).upscaler == "Lanczos"
    for args, where in [(["", 64, 0, 2, 5], "script_args"), (["", -1], "script_args[1]"),
                        (["", 64, 7], "script_args[2]"), (["", 64, [1]], "script_args[2]"),
                        (["", 64, 0, 0.5], "script_args[3]"), (["", "x"], "script_args[1]")]:
        with pytest.raises(InvalidRequest) as e:
            SDUpscale.parse(args, NAMES, resolve)
        assert e.value.field == where


def test_sd_upscale_runs_one_img2img_per_tile(env: Env, builtin_model: Any) -> None:
    src = _noise_image(64, 48)
    with count_unet(builtin_model) as c:
        r = run(env, [src], script_name="SD upscale", script_args=["", 16, "Lanczos", 1.5], width=64, height=64,
                steps=4, denoising_strength=0.5, seed=10)
    assert r.images[0].size == (96, 72)
    assert len(r.unet_calls) == 4 and c.count() == 4 * 3  # 2x2 tiles, int(0.5 * 4) + 1 steps each
    params = infotext_params(r.infotexts[0])
    assert params["SD upscale overlap"] == "16" and params["SD upscale upscaler"] == "Lanczos"
    assert params["Size"] == "64x64" and params["Seed"] == "10"  # the first tile batch's infotext, as A1111


def test_sd_upscale_bad_requests(env: Env) -> None:
    with pytest.raises(InvalidRequest, match="smaller than the tile"):
        run(env, [_noise_image(64, 64)], script_name="sd upscale", script_args=["", 64, 1, 2.0])
    with pytest.raises(InvalidRequest, match="script 'loopback' not found"):
        run(env, [_noise_image(64, 64)], script_name="loopback")
