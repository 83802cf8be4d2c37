"""The speed patches composed with the rest of a pass: the SDXL refiner gets the pass's patches when it
takes over (and both models are left as found), tiled diffusion's tiles are what Hypertile tiles, and
img2img takes A1111's token-merging ratio rule."""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pipeline.jobs import unet_patches
from pipeline.jobs.speed import token_merging_ratio
from pipeline.models.patches import PassInfo, UNetPatcher
from tests.conftest import pixels
from tests.pipeline.jobs.test_img2img import run as run_img2img
from tests.pipeline.jobs.test_refiner import XL, xl_env, xl_files  # noqa: F401 - fixtures
from tests.pipeline.jobs.test_speed_jobs import made  # noqa: F401 - fixture
from tests.pipeline.models.test_unet_patches import Recorder, hook_state


def test_the_refiner_gets_the_patches_and_both_models_are_left_as_found(xl_env, monkeypatch):  # noqa: F811
    seen: list[str] = []

    class Which(Recorder):
        def apply(self, patcher: UNetPatcher) -> None:
            seen.append(patcher.model.title)
            super().apply(patcher)

    rec = Which()
    monkeypatch.setattr(unet_patches, "PROVIDERS", [lambda p, info: rec])
    base, ref = xl_env.model("tiny-xl-base"), xl_env.model("tiny-xl-refiner")
    before = (hook_state(base.unet), hook_state(ref.unet))
    res = xl_env.run(**{**XL, "steps": 6, "refiner_checkpoint": "tiny-xl-refiner", "refiner_switch_at": 0.5})
    assert (hook_state(base.unet), hook_state(ref.unet)) == before
    assert seen == [base.title, ref.title]
    assert len(rec.seen) == res.unet_calls[0]  # every call, base's and refiner's


def test_hypertile_tiles_each_tiled_diffusion_tile(env, made):  # noqa: F811
    """A 512x256 pass sampled in 256-px tiles (tile latents 32x32): each tile's attention is split 2x2,
    the grid read from the tile the UNet receives."""
    tiles = {"tiled_diffusion": {"enabled": True, "method": "MultiDiffusion", "tile_width": 256,
                                 "tile_height": 256, "overlap": 64, "tile_batch_size": 1}}
    opts = {"hypertile_enable_unet": True, "hypertile_max_tile_unet": 128, "hypertile_swap_size_unet": 1}
    plain = env.run(width=512, height=256, steps=2, **tiles)
    tiled = env.run(width=512, height=256, steps=2, options=opts, **tiles)
    assert (2, 2) in made[0][1].tiles and (2, 4) not in made[0][1].tiles  # untiled: 32x64 cells, 2x4
    assert not np.array_equal(pixels(plain.images[0]), pixels(tiled.images[0]))


class _P:
    def __init__(self, options: dict[str, Any], override: dict[str, Any]) -> None:
        self.options = options
        self.request = type("R", (), {"override_settings": override})()


def test_token_merging_ratio_rule_of_a1111():
    img = PassInfo(1, 64, 64, 1, img2img=True)
    txt, hires = PassInfo(1, 64, 64, 1), PassInfo(2, 64, 64, 1)
    opts = {"token_merging_ratio": 0.2, "token_merging_ratio_img2img": 0.4, "token_merging_ratio_hr": 0.0}
    assert token_merging_ratio(_P(opts, {}), img) == 0.4  # img2img's own option first
    assert token_merging_ratio(_P(opts, {"token_merging_ratio": 0.2}), img) == 0.2  # unless overridden
    assert token_merging_ratio(_P({**opts, "token_merging_ratio_img2img": 0.0}, {}), img) == 0.2
    assert token_merging_ratio(_P(opts, {}), txt) == 0.2
    assert token_merging_ratio(_P(opts, {}), hires) == 0.2  # hr 0: the plain ratio
    assert token_merging_ratio(_P({**opts, "token_merging_ratio_hr": 0.6}, {}), hires) == 0.6


def test_img2img_merges_with_the_img2img_ratio(env, made):  # noqa: F811
    init = Image.fromarray((np.random.default_rng(3).random((128, 128, 3)) * 255).astype(np.uint8))
    plain = run_img2img(env, [init], width=128, height=128)
    merged = run_img2img(env, [init], width=128, height=128, options={"token_merging_ratio_img2img": 0.5})
    assert [n for n, _ in made] == [1] and set(made[0][1].merged) == {(256, 128)}
    assert not np.array_equal(pixels(plain.images[0]), pixels(merged.images[0]))
    assert "Token merging ratio: 0.5" in merged.infotexts[0]
