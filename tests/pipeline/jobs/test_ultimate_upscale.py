"""The Ultimate SD Upscale img2img script: its geometry by hand (upscale factors, grid, chess order, the pass
counts and masks of every seam-fix mode, target sizes), argument parsing and the 400s, and runs on the
builtin model: output size and image count, one img2img per pass, paste-back that leaves unmasked pixels
exactly as they were, progress counting passes, interrupt between and inside passes, skip."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.jobs.ultimate_upscale import ARGS, UltimateSDUpscale
from pipeline.jobs.ultimate_upscale_plan import CHESS, LINEAR, NO_REDRAW, Plan, radial, tent, upscale_factors
from pipeline.runtime.errors import InvalidRequest
from tests.conftest import Env, count_unet, infotext_params
from tests.pipeline.jobs.test_img2img import _noise_image, run

NAMES = ["None", "Lanczos", "Nearest", "4x-Tiny"]
RESOLVE = {"lanczos": "Lanczos", "4x-tiny": "4x-Tiny"}.get


def resolve(name: str) -> str:
    from upscalers.errors import UnknownUpscaler

    found = RESOLVE(name.lower())
    if found is None:
        raise UnknownUpscaler(name, NAMES)
    return found


def usdu(*args: Any, **named: Any) -> UltimateSDUpscale:
    """The script parsed from positional args, with named ones (by ARGS name) put at their positions."""
    values = [default for _, default in ARGS]
    values[:len(args)] = args
    for name, value in named.items():
        values[[n for n, _ in ARGS].index(name)] = value
    return UltimateSDUpscale.parse(values, NAMES, resolve)


def args_for(**named: Any) -> list[Any]:
    values = [default for _, default in ARGS]
    for name, value in named.items():
        values[[n for n, _ in ARGS].index(name)] = value
    return values


# -- geometry -------------------------------------------------------------------------------------

def test_upscale_factors_decompose_into_x4_x3_x2() -> None:
    assert upscale_factors(1) == []
    assert [upscale_factors(s) for s in (2, 3, 4, 6, 8, 9, 12, 16)] == \
        [[2], [3], [4], [3, 2], [4, 2], [3, 3], [4, 3], [4, 4]]
    assert upscale_factors(5) == [3, 2] and upscale_factors(7) == [4, 2]  # raised to 6 and 8, as USDU
    assert upscale_factors(10) == [4, 3]  # the extension would ask for a x0 pass here; we go on to 12


def test_grid_and_tile_orders() -> None:
    plan = Plan(200, 130, 64, 64)  # 4 columns (the last reaches past x=200), 3 rows
    assert (plan.rows, plan.cols) == (3, 4)
    assert plan.tile_order(LINEAR) == [(r, c) for r in range(3) for c in range(4)]
    chess = plan.tile_order(CHESS)
    assert chess[:6] == [(0, 0), (0, 2), (1, 1), (1, 3), (2, 0), (2, 2)]  # the "white" squares first
    assert sorted(chess) == sorted(plan.tile_order(LINEAR)) and len(set(chess)) == 12
    assert plan.tile_order(NO_REDRAW) == []
    assert Plan(64, 64, 512, 512).tile_order(LINEAR) == [(0, 0)]  # a tile bigger than the image: one tile


def test_redraw_passes_cover_the_image_tile_by_tile() -> None:
    s = usdu("", 48, 32, 4, 24)  # 48x32 tiles, padding 24
    redraw, seams = s.passes(128, 80)  # 3 cols (the last to 144) x 3 rows (the last to 96)
    assert len(redraw) == 9 and seams == []
    first = redraw[0]
    assert (first.width, first.height) == (128, 64)  # ceil((48 + 24) / 64) * 64, ceil((32 + 24) / 64) * 64
    assert (first.padding, first.mask_blur) == (24, 4)
    m = np.asarray(first.mask(128, 80))
    assert (m[:33, :49] == 255).all() and m[33:].max() == 0 and m[:, 49:].max() == 0  # the far edge included
    covered = np.zeros((80, 128), bool)
    for step in redraw:
        covered |= np.asarray(step.mask(128, 80)) > 0
    assert covered.all()
    assert [step.at for step in redraw[:4]] == [(0, 0), (48, 0), (96, 0), (0, 32)]


@pytest.mark.parametrize(("seams_fix_type", "count"), [(0, 0), (1, 3 + 4 - 2), (2, 3 * 3 + 2 * 4),
                                                       (3, 3 * 3 + 2 * 4 + 2 * 3)])
def test_seam_fix_pass_counts(seams_fix_type: int, count: int) -> None:
    # 4 cols x 3 rows: band rows + cols - 2; half tile rows (cols - 1) + (rows - 1) cols; + (rows-1)(cols-1)
    redraw, seams = usdu("", 32, 32, seams_fix_type=seams_fix_type, seams_fix_width=8).passes(128, 96)
    assert len(redraw) == 12 and len(seams) == count
    assert all(s.seam_fix for s in seams) and not any(s.seam_fix for s in redraw)


def test_band_pass_masks_sit_on_the_seams() -> None:
    _, seams = usdu("", 32, 32, seams_fix_type=1, seams_fix_width=8, seams_fix_padding=4).passes(96, 64)
    assert len(seams) == 2 + 1
    vertical = np.asarray(seams[0].mask(96, 64)).astype(int)
    assert (seams[0].width, seams[0].height, seams[0].mask_blur) == (16, 64, 0)  # band + 2 padding x height
    cols = np.nonzero(vertical.max(axis=0))[0]
    assert cols.min() == 28 and cols.max() == 35  # 8 px centred on the seam at x = 32
    assert vertical[:, 31].min() > 200 and vertical[:, 28].max() < 60  # white on the seam, fading out
    assert (vertical == vertical[0]).all()  # the full height
    horizontal = np.asarray(seams[2].mask(96, 64))
    assert (seams[2].width, seams[2].height) == (96, 16)
    rows = np.nonzero(horizontal.max(axis=1))[0]
    assert rows.min() == 28 and rows.max() == 35 and (horizontal[:, 0] == horizontal[:, 95]).all()


def test_half_tile_and_intersection_masks() -> None:
    _, seams = usdu("", 32, 32, seams_fix_type=3, seams_fix_padding=6, seams_fix_mask_blur=2).passes(64, 64)
    kinds = [s.kind for s in seams]
    assert kinds == ["half tile"] * 4 + ["intersection"]  # 2 on the horizontal seam, 2 on the vertical one
    first = np.asarray(seams[0].mask(64, 64)).astype(int)  # across the seam y = 32, tile column 0
    assert (seams[0].width, seams[0].height, seams[0].padding, seams[0].mask_blur) == (32, 32, 6, 2)
    assert first[:, 32:].max() == 0 and first[:16].max() == 0 and first[48:].max() == 0
    assert first[31, 0] > 240 and first[16, 0] < 10 and (np.diff(first[16:32, 5]) >= 0).all()
    col = np.asarray(seams[2].mask(64, 64)).astype(int)  # across the seam x = 32, tile row 0
    assert col[32:].max() == 0 and col[0, 31] > 240 and col[0, 16] < 10
    corner = seams[4]
    assert corner.padding == 0 and corner.at == (16, 16)
    c = np.asarray(corner.mask(64, 64)).astype(int)
    assert c[32, 32] > 240 and c[16, 16] == 0 and c[32, 17] < 30  # white on the corner, black half a tile out


def test_patches_by_hand() -> None:
    t = np.asarray(tent(4, 6, vertical=True))[:, 0].tolist()
    assert t == [42, 128, 212, 212, 128, 42]
    r = np.asarray(radial(9, 9))
    assert r[4, 4] == max(r.flatten()) and r[0, 0] == 0 and (r == r.T).all()


def test_target_sizes() -> None:
    class P:
        width, height = 320, 256

    assert usdu().target_size(P, 100, 80) == (320, 256)  # type 0: the request's width x height
    assert usdu(target_size_type=1, custom_width=640, custom_height=384).target_size(P, 100, 80) == (640, 384)
    # type 2: ceil(side * scale / 64) * 64
    assert usdu(target_size_type=2, custom_scale=2.5).target_size(P, 100, 80) == (256, 256)
    assert usdu(target_size_type=2, custom_scale=4).target_size(P, 128, 96) == (512, 384)


# -- arguments ------------------------------------------------------------------------------------

def test_parse_defaults_and_positions() -> None:
    s = UltimateSDUpscale.parse([], NAMES, resolve)
    assert (s.tile_width, s.tile_height, s.mask_blur, s.padding) == (512, 512, 8, 32)  # tile_height 0 = width
    assert (s.seams_fix_width, s.seams_fix_denoise, s.seams_fix_padding) == (64, 0.35, 16)
    assert s.seams_fix_mask_blur == 4
    assert (s.upscaler, s.redraw_mode, s.seams_fix_type, s.target_size_type) == ("None", 0, 0, 0)
    assert (s.custom_width, s.custom_height, s.custom_scale) == (2048, 2048, 2.0)
    assert s.save_upscaled_image is True and s.save_seams_fix_image is False
    s = UltimateSDUpscale.parse([None, 0, 256.0, 4, 16, 32, 0.2, 8, 3, False, 1, True, 2, 3, 2, 512, 512, 4],
                                NAMES, resolve)
    assert (s.tile_width, s.tile_height, s.upscaler, s.redraw_mode, s.seams_fix_type, s.custom_scale) == \
        (256, 256, "4x-Tiny", 1, 3, 4.0)
    assert usdu(upscaler_index="lanczos").upscaler == "Lanczos"  # a name: our leniency
    assert usdu(upscaler_index="3").upscaler == NAMES[3]  # digits naming no upscaler: an index, sent as text


@pytest.mark.parametrize(("args", "where", "words"), [
    ([""] * 19, "script_args", "takes 18 arguments"),
    (["", "512"], "script_args[1]", "tile_width must be a whole number"),
    (["", 0, 0], "script_args[1]", "both 0"),
    (["", -64], "script_args[1]", "tile_width"),
    (["", 512, 4], "script_args[2]", "tile_height 4 is below 8"),
    (["", 512, 0, 8, -1], "script_args[4]", "padding must be a whole number"),
    (args_for(seams_fix_denoise=1.5), "script_args[6]", "seams_fix_denoise must be a number from 0.0 to 1.0"),
    (args_for(upscaler_index=4), "script_args[8]", "upscaler_index index 4 is out of range: 0..3"),
    (args_for(upscaler_index="R-ESRGAN 4x+"), "script_args[8]", "R-ESRGAN"),
    (args_for(save_upscaled_image="yes"), "script_args[9]", "save_upscaled_image must be true or false"),
    (args_for(redraw_mode=3), "script_args[10]", "redraw_mode must be one of 0 Linear, 1 Chess, 2 None"),
    (args_for(seams_fix_type=4), "script_args[13]", "seams_fix_type must be one of 0 None, 1 Band pass"),
    (args_for(target_size_type=-1), "script_args[14]", "target_size_type must be one of"),
    (args_for(custom_width=2.5), "script_args[15]", "custom_width"),
    (args_for(custom_scale=0), "script_args[17]", "custom_scale must be a number above 0"),
    (args_for(seams_fix_type=1, seams_fix_width=0), "script_args[5]", "seams_fix_width is 0"),
    (args_for(mask_blur=True), "script_args[3]", "mask_blur"),
])
def test_bad_arguments_name_position_and_form(args: list[Any], where: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        UltimateSDUpscale.parse(args, NAMES, resolve)
    assert e.value.field == where and words in str(e.value)


# -- runs on the builtin model --------------------------------------------------------------------

def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_redraw_only_one_image_at_the_target_size(env: Env, builtin_model: Any) -> None:
    src = _noise_image(48, 40)
    with count_unet(builtin_model) as c:
        r = run(env, [src], script_name="Ultimate SD Upscale", width=96, height=80, steps=2, seed=21,
                denoising_strength=0.5, script_args=["", 48, 40, 2, 8, 64, 0.35, 16, "Lanczos"])
    assert len(r.images) == 1 and r.images[0].size == (96, 80)
    assert len(r.unet_calls) == 4 and c.count() == 4 * 2  # 2x2 tiles, int(0.5 * 2) + 1 steps each
    params = infotext_params(r.infotexts[0])
    assert params["Ultimate SD upscale upscaler"] == "Lanczos"
    assert params["Ultimate SD upscale tile_width"] == "48"
    assert params["Ultimate SD upscale tile_height"] == "40" and params["Ultimate SD upscale padding"] == "8"
    assert params["Ultimate SD upscale mask_blur"] == "2" and params["Inpaint area"] == "Only masked"
    assert params["Size"] == "96x80" and params["Seed"] == "21" and params["Denoising strength"] == "0.5"
    assert r.info["width"] == 96 and r.info["all_seeds"] == [21]


def test_seam_fix_adds_the_second_image(env: Env, builtin_model: Any) -> None:
    src = _noise_image(32, 32)
    with count_unet(builtin_model) as c:
        r = run(env, [src], script_name="ultimate sd upscale", width=64, height=64, steps=2, seed=3,
                denoising_strength=0.5,
                script_args=args_for(tile_width=32, padding=8, mask_blur=2, upscaler_index=1,
                                     seams_fix_type=2, seams_fix_denoise=0.2, seams_fix_padding=8,
                                     seams_fix_mask_blur=2))
    assert [im.size for im in r.images] == [(64, 64), (64, 64)]
    assert len(r.unet_calls) == 4 + 4  # 2x2 tiles, then 2 + 2 half-tile passes
    assert c.count() == 4 * 2 + 4 * 1  # int(0.5 * 2) + 1 steps per tile; int(0.2 * 2) + 1 per seam pass
    assert not np.array_equal(_array(r.images[0]), _array(r.images[1]))
    assert infotext_params(r.infotexts[0])["Denoising strength"] == "0.5"
    assert infotext_params(r.infotexts[1])["Denoising strength"] == "0.2"


def test_no_redraw_returns_the_upscaled_image(env: Env, builtin_model: Any) -> None:
    src = _noise_image(40, 24)
    with count_unet(builtin_model) as c:
        r = run(env, [src], script_name="ultimate sd upscale", width=64, height=64, steps=2,
                script_args=args_for(tile_width=32, redraw_mode=2, upscaler_index=1, target_size_type=2,
                                     custom_scale=2))
    assert c.count() == 0 and len(r.images) == 1
    assert r.images[0].size == (128, 64)  # ceil(40 * 2 / 64) * 64, ceil(24 * 2 / 64) * 64
    # factor ceil(128 / 40) = 4: one x4 pass of the Lanczos upscaler, then Lanczos to the exact size
    x4 = src.resize((160, 96), Image.Resampling.LANCZOS)
    assert np.array_equal(_array(r.images[0]), _array(x4.resize((128, 64), Image.Resampling.LANCZOS)))


def test_interrupt_inside_a_tile_stops_and_leaves_the_rest_exact(env: Env, builtin_model: Any) -> None:
    # 96x64, 32 px tiles (3x2), 4 steps a tile: interrupted during tile 0's second step, the script keeps
    # that tile as sampled so far and runs no other pass; every pixel beyond the tile's blurred mask (x or
    # y > 32 + the blur's reach 5) is the (un-upscaled) input, exactly
    src = _noise_image(96, 64, seed=8)

    def on_call(n: int, _t: float) -> None:
        if n == 2:
            env.state.interrupt()

    with count_unet(builtin_model, on_call=on_call) as c:
        r = run(env, [src], script_name="ultimate sd upscale", width=96, height=64, steps=4,
                denoising_strength=0.9, script_args=args_for(tile_width=32, padding=8, mask_blur=2,
                                                            seams_fix_type=2))
    assert c.count() == 2 and len(r.images) == 2  # the seam fix was asked for: still two images
    out, before = _array(r.images[0]), _array(src)
    assert np.array_equal(out, _array(r.images[1]))
    outside = np.ones((64, 96), bool)
    outside[:38, :38] = False
    assert np.array_equal(out[outside], before[outside])
    assert np.abs(out[:30, :30] - before[:30, :30]).mean() > 5  # the tile itself was (partly) redrawn


def test_pixel_budget_covers_the_target_and_the_largest_pass(env: Env) -> None:
    from pipeline.runtime.errors import TooLarge

    with pytest.raises(TooLarge, match="target size"):
        run(env, [_noise_image(64, 64)], script_name="ultimate sd upscale",
            script_args=args_for(target_size_type=1, custom_width=8192, custom_height=8192))
    with pytest.raises(TooLarge, match="redraw pass size"):  # a 4096 tile: processed at 4160x4160
        run(env, [_noise_image(64, 64)], script_name="ultimate sd upscale",
            script_args=args_for(tile_width=4096))


def test_band_pass_changes_only_the_bands(env: Env) -> None:
    # redraw None and no upscale: the first image is the input; the band-pass image differs from it only
    # under the 8 px bands on the seams (mask blur 0 for the band pass), exactly nowhere else
    src = _noise_image(64, 64, seed=9)
    r = run(env, [src], script_name="ultimate sd upscale", width=64, height=64, steps=2,
            script_args=args_for(tile_width=32, redraw_mode=2, upscaler_index=0, seams_fix_type=1,
                                 seams_fix_width=8, seams_fix_padding=8, seams_fix_denoise=0.9))
    upscaled, fixed = _array(r.images[0]), _array(r.images[1])
    assert np.array_equal(upscaled, _array(src))
    changed = np.abs(fixed - upscaled).max(axis=2) > 0
    bands = np.zeros((64, 64), bool)
    bands[:, 28:36] = True  # the vertical band on x = 32
    bands[28:36, :] = True  # the horizontal band on y = 32
    assert changed[bands].mean() > 0.3 and not changed[~bands].any()


def test_chess_and_linear_orders_see_different_neighbours(env: Env) -> None:
    # with padding a tile's crop shows its already-redrawn neighbours: the order changes the result
    src = _noise_image(64, 64, seed=2)
    kw: dict[str, Any] = {"script_name": "ultimate sd upscale", "width": 64, "height": 64, "steps": 2}
    linear = run(env, [src], **kw, script_args=args_for(tile_width=32, padding=16, mask_blur=0))
    chess = run(env, [src], **kw, script_args=args_for(tile_width=32, padding=16, mask_blur=0,
                                                       redraw_mode=CHESS))
    assert len(linear.unet_calls) == len(chess.unet_calls) == 4
    a, b = _array(linear.images[0]), _array(chess.images[0])
    assert np.array_equal(a[:31, :31], b[:31, :31])  # tile (0, 0) goes first in both, and is redrawn last
    assert not np.array_equal(a[34:, 34:], b[34:, 34:])  # tile (1, 1): fourth in linear, second in chess


def test_progress_counts_passes_and_skip_moves_on(env: Env, builtin_model: Any) -> None:
    src = _noise_image(64, 64, seed=4)
    seen: list[tuple[int, int]] = []
    jobs: list[str] = []

    def on_call(n: int, _t: float) -> None:
        snap = env.state.snapshot()["state"]
        seen.append((snap["job_no"], snap["job_count"]))
        jobs.append(snap["job"])
        if n == 1:
            env.state.skip()  # tile 0 stops after its first step; the others run

    with count_unet(builtin_model, on_call=on_call) as c:
        r = run(env, [src], script_name="ultimate sd upscale", width=64, height=64, steps=2,
                denoising_strength=0.9,
                script_args=args_for(tile_width=32, seams_fix_type=1, seams_fix_width=8,
                                     seams_fix_denoise=0.9))
    # 4 tiles + 2 bands = 6 jobs of 2 steps, the first cut to 1
    assert c.count() == 1 + 5 * 2 and len(r.images) == 2
    assert [job for job, _ in seen] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert {count for _, count in seen} == {6}
    assert jobs[0] == "Ultimate SD upscale: redraw 1 of 4" and jobs[-1] == "Ultimate SD upscale: band 2 of 2"


def test_runs_on_a_nine_channel_inpainting_checkpoint(tiny_env: Env, tiny_checkpoints: dict[str, Any]
                                                      ) -> None:
    # the tiles are inpaints: an inpainting checkpoint gets its mask + masked-image conditioning for each
    name = tiny_checkpoints["sd1_inpaint"]
    model = tiny_env.model(name)
    seen: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        r = run(tiny_env, [_noise_image(32, 32)], checkpoint=name, script_name="ultimate sd upscale",
                width=64, height=64, steps=2,
                script_args=args_for(tile_width=32, padding=8, upscaler_index=1))
    finally:
        hook.remove()
    assert set(seen) == {9} and len(seen) == 4 * 2  # 4 tiles of int(0.5 * 2) + 1 steps
    assert r.images[0].size == (64, 64) and r.info["is_using_inpainting_conditioning"] is True


def test_a_pass_on_its_crop_box_equals_the_whole_image_inpaint(env: Env) -> None:
    # each pass runs on the box it can change (with its mask blurred beforehand) instead of the whole image:
    # the pixels must be exactly those of A1111's whole-image "only masked" inpaint with the blurred mask
    import dataclasses

    from pipeline.jobs.common import JobContext
    from pipeline.jobs.dispatch import prepare_img2img
    from pipeline.jobs.extensions import Extensions
    from pipeline.jobs.img2img.run import img2img_batches
    from pipeline.jobs.pixel_upscale import HiresUpscaler
    from pipeline.jobs.ultimate_upscale import inpaint_pass
    from schemas.img2img import Img2ImgRequest
    from tests.conftest import FAST, MAX_PIXELS

    src = _noise_image(100, 76, seed=12)
    s = usdu("", 40, 32, 6, 12, seams_fix_type=3, seams_fix_padding=6, seams_fix_mask_blur=3)
    redraw, seams = s.passes(100, 76)
    band = usdu("", 40, 32, seams_fix_type=1, seams_fix_width=10, seams_fix_padding=4).passes(100, 76)[1]
    picked = [redraw[0], redraw[-1], seams[0], seams[-4], seams[-1], band[0], band[-1]]  # edges, all kinds
    assert {step.kind for step in picked} == {"redraw", "half tile", "intersection", "band"}
    req = Img2ImgRequest(**{**FAST, "init_images": ["sent"], "steps": 2, "denoising_strength": 0.6})
    p = prepare_img2img(req, env.options, env.models, env.upscalers, MAX_PIXELS, [src], None)
    ctx = JobContext(env.models, HiresUpscaler(env.upscalers, p.options), Extensions(), env.state)
    env.state.begin("test", 1)
    try:
        for step in picked:
            whole = img2img_batches(dataclasses.replace(
                p, init_images=[src], mask=step.mask(100, 76), width=step.width, height=step.height,
                inpaint_full_res=True, inpaint_full_res_padding=step.padding, mask_blur_x=step.mask_blur,
                mask_blur_y=step.mask_blur, inpainting_fill=1, extra_generation_params={}), ctx).images[0]
            boxed = src.copy()
            q, _ = inpaint_pass(p, ctx, boxed, step, 0.6, 0)
            assert np.array_equal(_array(boxed), _array(whole)), step
            assert not np.array_equal(_array(boxed), _array(src))
            assert q.extra_generation_params["Mask blur"] == step.mask_blur
    finally:
        env.state.end()


def _seam_step(img: Image.Image, at: int) -> float:
    """The mean pixel step across the tile borders x = at and y = at, over the median step anywhere: about
    1 or below when the borders cannot be told from the rest of the image, above when there is a seam."""
    a = np.asarray(img, np.float32)
    dx = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))  # dx[i]: between columns i and i + 1
    dy = np.abs(np.diff(a, axis=0)).mean(axis=(1, 2))
    return float((dx[at - 1] + dy[at - 1]) / (np.median(dx) + np.median(dy)))


def test_seams_show_without_blur_and_go_with_blur_padding_or_the_seam_fix(env: Env) -> None:
    # a smooth gradient redrawn in 64 px tiles at denoise 0.5: hard-edged tiles (no blur, no padding) leave a
    # step on the borders; the extension's defaults (blur 8, padding 32) do not, and the half-tile seam fix
    # repairs the hard-edged result
    y, x = np.mgrid[0:128, 0:128]
    src = Image.fromarray(np.stack([x * 2, y * 2, x + y], -1).clip(0, 255).astype(np.uint8))
    kw: dict[str, Any] = {"script_name": "ultimate sd upscale", "width": 128, "height": 128, "steps": 2}
    hard = run(env, [src], **kw, script_args=args_for(tile_width=64, padding=0, mask_blur=0, seams_fix_type=2,
                                                      seams_fix_denoise=0.5, seams_fix_padding=16,
                                                      seams_fix_mask_blur=8))
    soft = run(env, [src], **kw, script_args=args_for(tile_width=64, padding=32, mask_blur=8))
    assert _seam_step(src, 64) < 1.1  # the input has none
    assert _seam_step(hard.images[0], 64) > 1.4
    assert _seam_step(hard.images[1], 64) < 1.1
    assert _seam_step(soft.images[0], 64) < 1.1


def test_eta_weights_follow_pass_area_and_steps(env: Env) -> None:
    # the redraw tiles (processed at 64x64, int(0.5 * 4) + 1 = 3 steps) and the band passes (8 + 2 * 8 = 24 x
    # 64 and 64 x 24, int(0.25 * 4) + 1 = 2 steps) weigh what they cost in /progress's ETA
    weights: list[list[float]] = []

    class Watch(type(env.state)):  # type: ignore[misc]
        def begin(self, job: str, job_count: int, w: list[float] | None = None) -> None:
            weights.append(list(w or []))
            super().begin(job, job_count, w)

    watched = Env(env.models, env.upscalers, Watch(), env.options)
    run(watched, [_noise_image(64, 64)], script_name="ultimate sd upscale", width=64, height=64, steps=4,
        denoising_strength=0.5,
        script_args=args_for(tile_width=32, padding=8, seams_fix_type=1, seams_fix_width=8,
                             seams_fix_padding=8, seams_fix_denoise=0.25))
    assert weights[0] == [64 * 64 * 3.0] * 4 + [24 * 64 * 2.0, 64 * 24 * 2.0]
