"""Hires target sizes, A1111 v1.10's arithmetic (reference section 5.2): `hires_size` at real sizes without
running anything, and the returned image sizes and infotexts of real (tiny) runs."""
from __future__ import annotations

import pytest

from pipeline.jobs.hires_size import first_pass_size, hires_size
from tests.conftest import infotext_params

# (width, height, hr_scale, resize_x, resize_y) -> (final_w, final_h, upscale_w, upscale_h, crop(t, b, l, r))
ARITHMETIC = [
    # scale only
    ((512, 512, 2.0, 0, 0), (1024, 1024, 1024, 1024, (0, 0, 0, 0))),
    ((512, 768, 1.5, 0, 0), (768, 1152, 768, 1152, (0, 0, 0, 0))),
    # odd factors: int(512 * 2.55) = 1305 (the float product is 1305.6 minus an ulp), latent 163 -> 1304
    ((512, 512, 2.55, 0, 0), (1304, 1304, 1305, 1305, (0, 0, 0, 0))),
    # the Photoshop plugin's 2.484848...: int(512 * 2.4848...) = 1272, int(768 * 2.4848...) = 1908 -> 1904
    ((512, 768, 2.484848484848485, 0, 0), (1272, 1904, 1272, 1908, (0, 0, 0, 0))),
    # only x: aspect kept, height = x * H // W
    ((512, 768, 2.0, 1000, 0), (1000, 1496, 1000, 1500, (0, 0, 0, 0))),
    # only y
    ((768, 512, 2.0, 0, 1000), (1496, 1000, 1500, 1000, (0, 0, 0, 0))),
    # both, first pass narrower than the target: cover by width, crop 64 latent rows, 32 top / 32 bottom
    ((512, 768, 2.0, 1024, 1024), (1024, 1024, 1024, 1536, (32, 32, 0, 0))),
    # both, first pass wider: cover by height, crop columns; odd truncation (floor left, ceil right)
    ((768, 512, 2.0, 1000, 1000), (1000, 1000, 1500, 1000, (0, 0, 31, 31))),
    ((640, 512, 2.0, 1000, 1000), (1000, 1000, 1250, 1000, (0, 0, 15, 16))),
    # both, same aspect: no crop
    ((512, 512, 2.0, 800, 800), (800, 800, 800, 800, (0, 0, 0, 0))),
    # non-square overshoot that is not a multiple of 8: the result can differ by up to 7 px
    ((512, 768, 2.0, 1020, 1020), (1016, 1024, 1020, 1530, (31, 32, 0, 0))),
]


@pytest.mark.parametrize(("args", "expected"), ARITHMETIC)
def test_hires_size_arithmetic_matches_a1111(args, expected):
    w, h, scale, rx, ry = args
    size = hires_size(w, h, scale, rx, ry)
    final_w, final_h, up_w, up_h, crop = expected
    assert (size.first_w, size.first_h) == (w, h)
    assert (size.upscale_w, size.upscale_h) == (up_w, up_h)
    assert size.crop == crop
    assert (size.final_w, size.final_h) == (final_w, final_h)
    if rx == 0 and ry == 0:
        assert (size.infotext_key, size.infotext_value) == ("Hires upscale", scale)
    else:
        assert (size.infotext_key, size.infotext_value) == ("Hires resize", f"{rx}x{ry}")


def test_reference_example_512x768_to_1024x1024():
    """The reference's worked example: cover at 1024x1536, truncate_y = 64 latent rows, exactly 1024x1024."""
    size = hires_size(512, 768, 2.0, 1024, 1024)
    assert (size.upscale_w, size.upscale_h) == (1024, 1536)
    assert (size.truncate_x, size.truncate_y) == (0, 64)
    assert (size.final_w, size.final_h) == (1024, 1024)


def test_firstphase_sets_the_first_pass_size_and_the_target_comes_from_hr_scale():
    # v1.10: width/height are remembered as a target, then recomputed from hr_scale anyway
    size = hires_size(1024, 1024, 2.0, 0, 0, firstphase_width=512, firstphase_height=384)
    assert (size.first_w, size.first_h) == (512, 384)
    assert (size.final_w, size.final_h) == (1024, 768)
    assert first_pass_size(100, 70) == (96, 64)  # rounded down to whole latent cells


# Real runs on the builtin model: (request fields) -> (returned size, first-pass Size, hires key, value)
RUNS = [
    ({"hr_scale": 2.0}, (128, 128), "64x64", "Hires upscale", "2.0"),
    ({"width": 64, "height": 96, "hr_scale": 1.5}, (96, 144), "64x96", "Hires upscale", "1.5"),
    ({"hr_scale": 2.55}, (160, 160), "64x64", "Hires upscale", "2.55"),  # int(163.2) = 163 -> 160
    ({"width": 64, "height": 96, "hr_scale": 2.484848484848485}, (152, 232), "64x96", "Hires upscale",
     "2.484848484848485"),
    ({"width": 64, "height": 96, "hr_resize_x": 100}, (96, 144), "64x96", "Hires resize", "100x0"),
    ({"width": 96, "height": 64, "hr_resize_y": 100}, (144, 96), "96x64", "Hires resize", "0x100"),
    ({"width": 64, "height": 96, "hr_resize_x": 128, "hr_resize_y": 128}, (128, 128), "64x96", "Hires resize",
     "128x128"),
    ({"width": 96, "height": 64, "hr_resize_x": 120, "hr_resize_y": 128}, (120, 128), "96x64", "Hires resize",
     "120x128"),
    ({"width": 200, "height": 200, "firstphase_width": 64, "firstphase_height": 72, "hr_scale": 2.0}, (128, 144),
     "64x72", "Hires upscale", "2.0"),
]


@pytest.mark.parametrize(("fields", "size", "first", "key", "value"), RUNS)
@pytest.mark.parametrize("upscaler", [None, "Lanczos"])
def test_returned_size_and_infotext(env, fields, size, first, key, value, upscaler):
    res = env.run(enable_hr=True, steps=2, denoising_strength=0.5, hr_upscaler=upscaler, **fields)
    assert res.images[0].size == size
    params = infotext_params(res.infotexts[0])
    assert params["Size"] == first
    assert params[key] == value
    other = {"Hires upscale", "Hires resize"} - {key}
    assert not other & params.keys()
    assert (res.info["width"], res.info["height"]) == tuple(int(v) for v in first.split("x"))
    assert res.unet_calls == [2, 2]
