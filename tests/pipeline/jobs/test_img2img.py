"""img2img and inpainting on tiny real models: resize geometry and mask preparation against hand-worked
cases, A1111's step rule counted in UNet calls, unmasked pixels kept exactly, only-masked geometry, the
empty and all-white masks, a 9-channel inpainting checkpoint, and hires pass two == img2img."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.jobs.common import JobContext, JobResult
from pipeline.jobs.dispatch import prepare_img2img, run_job
from pipeline.jobs.extensions import Extensions
from pipeline.jobs.img2img import masks
from pipeline.jobs.img2img.resize import placement, resize_image
from pipeline.jobs.pixel_upscale import HiresUpscaler
from pipeline.runtime.errors import InvalidRequest
from schemas.img2img import Img2ImgRequest
from tests.conftest import MAX_PIXELS, Env, count_unet, infotext_params, pixels

FAST = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 1234, "cfg_scale": 7.0,
        "sampler_name": "Euler", "denoising_strength": 0.5}


def _noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def _box_mask(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    m = Image.new("L", (w, h))
    m.paste(255, box)
    return m


def run(env: Env, images: list[Image.Image], mask: Image.Image | None = None,
        options: dict[str, Any] | None = None, checkpoint: str | None = None, **fields: Any) -> JobResult:
    opts = {**env.options, **(options or {})}
    if checkpoint is not None:
        opts["sd_model_checkpoint"] = checkpoint
    req = Img2ImgRequest(**{**FAST, "init_images": ["sent"] * len(images), **fields})
    p = prepare_img2img(req, opts, env.models, env.upscalers, MAX_PIXELS, images, mask)
    ctx = JobContext(env.models, HiresUpscaler(env.upscalers, p.options), Extensions(), env.state)
    try:
        return run_job(p, ctx)
    finally:
        env.state.end()


# -- geometry -------------------------------------------------------------------------------------

def test_resize_mode_geometry_by_hand() -> None:
    # 200x100 onto 100x100: just resize stretches; crop scales to cover (200x100 -> 200x100 at height 100,
    # centred at -50); fill scales to fit (100x50, centred at top 25)
    assert placement(0, 200, 100, 100, 100) == placement(3, 200, 100, 100, 100)
    p0 = placement(0, 200, 100, 100, 100)
    assert (p0.scaled_w, p0.scaled_h, p0.left, p0.top) == (100, 100, 0, 0)
    p1 = placement(1, 200, 100, 100, 100)
    assert (p1.scaled_w, p1.scaled_h, p1.left, p1.top, p1.fill) == (200, 100, -50, 0, False)
    p2 = placement(2, 200, 100, 100, 100)
    assert (p2.scaled_w, p2.scaled_h, p2.left, p2.top, p2.fill) == (100, 50, 0, 25, True)
    # a tall source: 60x120 onto 90x60 -> cover by width (90x180 at top -60), fit by height (30x60 at left 30)
    p1 = placement(1, 60, 120, 90, 60)
    assert (p1.scaled_w, p1.scaled_h, p1.left, p1.top) == (90, 180, 0, -60)
    p2 = placement(2, 60, 120, 90, 60)
    assert (p2.scaled_w, p2.scaled_h, p2.left, p2.top) == (30, 60, 30, 0)


def test_resize_modes_pixels() -> None:
    # left half red, right half blue, 200x100
    src = Image.new("RGB", (200, 100), (255, 0, 0))
    src.paste((0, 0, 255), (100, 0, 200, 100))
    crop = np.asarray(resize_image(1, src, 100, 100))
    assert crop.shape == (100, 100, 3)
    assert tuple(crop[50, 10]) == (255, 0, 0) and tuple(crop[50, 90]) == (0, 0, 255)  # the middle 100 columns
    fill = np.asarray(resize_image(2, src, 100, 100))
    # the bands above and below repeat the edge rows: the same colours column by column as the image
    assert (fill[0] == fill[25]).all() and (fill[99] == fill[74]).all()
    assert tuple(fill[5, 5]) == (255, 0, 0) and tuple(fill[95, 95]) == (0, 0, 255)
    gray = resize_image(2, Image.new("L", (200, 100), 200), 100, 100)
    assert gray.mode == "L" and np.asarray(gray).min() == 200  # a mask stays a mask, bands filled


# -- masks -----------------------------------------------------------------------------------------

def test_mask_alpha_round_invert_and_blur() -> None:
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.putpixel((3, 3), (0, 0, 0, 129))
    rgba.putpixel((4, 4), (0, 0, 0, 128))
    m = masks.binary_mask(rgba, round_=True)
    assert m.getpixel((3, 3)) == 255 and m.getpixel((4, 4)) == 0  # alpha > 128 is repaint
    assert masks.binary_mask(rgba, round_=False).getpixel((4, 4)) == 128
    opaque = Image.new("RGBA", (16, 16), (255, 255, 255, 255))
    assert np.asarray(masks.binary_mask(opaque)).min() == 255  # opaque: its luminance
    inv = masks.prepare_mask(_box_mask(16, 16, (4, 4, 8, 8)), invert=True, blur_x=0, blur_y=0, round_=True)
    assert inv.getpixel((0, 0)) == 255 and inv.getpixel((5, 5)) == 0
    # blur x only: a vertical line spreads sideways, not up or down
    line = _box_mask(32, 32, (16, 10, 17, 20))
    bx = np.asarray(masks.blur(line, 2, 0))
    assert bx[15, 14] > 0 and bx[15, 18] > 0 and bx[5, 16] == 0
    by = np.asarray(masks.blur(line, 0, 2))
    assert by[8, 16] > 0 and by[15, 14] == 0


def test_crop_region_by_hand() -> None:
    m = _box_mask(100, 80, (40, 30, 50, 40))  # bbox (40, 30, 50, 40)
    assert masks.crop_region(m, 0, 64, 64) == (40, 30, 50, 40)
    assert masks.crop_region(m, 10, 64, 64) == (30, 20, 60, 50)
    # a 2:1 target widens the 10x10 box to 20x10, centred
    assert masks.crop_region(m, 0, 128, 64) == (35, 30, 55, 40)
    # near the edge: the grown box is shifted back inside
    edge = _box_mask(100, 80, (0, 0, 10, 10))
    assert masks.crop_region(edge, 0, 128, 64) == (0, 0, 20, 10)
    assert masks.crop_region(Image.new("L", (10, 10)), 4, 64, 64) is None


def test_whole_picture_overlay_mask_doubles() -> None:
    m = Image.fromarray(np.array([[0, 64, 128, 200]], dtype=np.uint8))
    assert np.asarray(masks.overlay_mask_whole(m)).tolist() == [[0, 128, 255, 255]]


def test_latent_mask_rounds() -> None:
    lm = masks.latent_mask(_box_mask(64, 64, (0, 0, 32, 64)), 8, 8, True)
    assert lm.shape == (1, 1, 8, 8)
    assert lm[0, 0, :, :4].eq(1).all() and lm[0, 0, :, 4:].eq(0).all()


def test_fill_paints_the_hole_with_surrounding_colour() -> None:
    img = Image.new("RGB", (64, 64), (200, 40, 40))
    img.paste((0, 0, 0), (24, 24, 40, 40))
    out = np.asarray(masks.fill(img, _box_mask(64, 64, (24, 24, 40, 40))))
    assert np.abs(out[32, 32].astype(int) - (200, 40, 40)).max() <= 2


# -- sampling -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("d,steps,expected", [(0.75, 8, 7), (0.5, 4, 3), (1.0, 10, 10), (0.3, 7, 3), (0.05, 8, 1)])
def test_step_rule_counted_by_unet_calls(env: Env, builtin_model: Any, d: float, steps: int,
                                        expected: int) -> None:
    with count_unet(builtin_model) as c:
        r = run(env, [_noise_image(64, 64)], denoising_strength=d, steps=steps)
    assert c.count() == expected  # int(min(d, 0.999) * steps) + 1
    assert r.unet_calls == [expected]
    assert infotext_params(r.infotexts[0])["Steps"] == str(steps)  # the requested count, as A1111


def test_img2img_fix_steps_runs_exactly_steps(env: Env, builtin_model: Any) -> None:
    with count_unet(builtin_model) as c:
        run(env, [_noise_image(64, 64)], denoising_strength=0.3, steps=7, options={"img2img_fix_steps": True})
    assert c.count() == 7


def test_denoising_zero_returns_the_encoded_decoded_input(env: Env, builtin_model: Any) -> None:
    src = _noise_image(64, 64)
    with count_unet(builtin_model) as c:
        r = run(env, [src], denoising_strength=0.0)
    assert c.count() == 0
    again = run(env, [src], denoising_strength=0.0)
    assert (pixels(r.images[0]) == pixels(again.images[0])).all()
    other = run(env, [_noise_image(64, 64, seed=5)], denoising_strength=0.0)
    assert not (pixels(r.images[0]) == pixels(other.images[0])).all()


def test_same_seed_same_image_and_seed_changes_it(env: Env) -> None:
    src = _noise_image(64, 64)
    a, b = run(env, [src]), run(env, [src])
    c = run(env, [src], seed=99)
    assert (pixels(a.images[0]) == pixels(b.images[0])).all()
    assert not (pixels(a.images[0]) == pixels(c.images[0])).all()


def test_init_images_make_the_batch(env: Env) -> None:
    one = run(env, [_noise_image(64, 64)], batch_size=3)
    assert len(one.images) == 3 and one.info["all_seeds"] == [1234, 1235, 1236]
    two = run(env, [_noise_image(64, 64), _noise_image(64, 64, seed=1)], batch_size=4, n_iter=2)
    assert len(two.images) == 4 and two.info["all_seeds"] == [1234, 1235, 1236, 1237]  # batch of 2, twice
    with pytest.raises(InvalidRequest, match="batch_size"):
        run(env, [_noise_image(64, 64)] * 3, batch_size=2)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_every_resize_mode_gives_the_request_size(env: Env, mode: int) -> None:
    r = run(env, [_noise_image(96, 64)], resize_mode=mode, width=64, height=72)
    assert r.images[0].size == (64, 72)


# -- inpainting ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DDIM"])
def test_whole_picture_inpaint_keeps_unmasked_pixels_exactly(env: Env, sampler: str) -> None:
    src = _noise_image(64, 64)
    mask = _box_mask(64, 64, (16, 16, 48, 48))
    r = run(env, [src], mask, inpaint_full_res=False, mask_blur=2, sampler_name=sampler, denoising_strength=0.9)
    out, orig = pixels(r.images[0]), pixels(src)
    far = np.ones((64, 64), bool)
    far[10:54, 10:54] = False  # beyond the blurred edge the overlay restores the original
    assert (out[far] == orig[far]).all()
    assert np.abs(out[24:40, 24:40] - orig[24:40, 24:40]).mean() > 20  # the hole was repainted
    params = infotext_params(r.infotexts[0])
    assert params["Mask blur"] == "2" and params["Masked content"] == "fill" and "Inpaint area" not in params
    keys = list(params)  # A1111's order: the strength after the seed, the inpainting keys after the model's
    assert keys.index("Seed") < keys.index("Denoising strength") < keys.index("Mask blur")
    assert "RNG" not in params  # A1111 writes no RNG key for its default source, GPU


def test_only_masked_pastes_back_at_the_input_size(env: Env) -> None:
    src = _noise_image(160, 96)
    mask = _box_mask(160, 96, (100, 40, 120, 60))
    r = run(env, [src], mask, inpaint_full_res=True, inpaint_full_res_padding=8, mask_blur=0,
            width=64, height=64)
    out, orig = pixels(r.images[0]), pixels(src)
    assert r.images[0].size == (160, 96)
    outside = np.ones((96, 160), bool)
    outside[40:60, 100:120] = False
    assert (out[outside] == orig[outside]).all()
    assert np.abs(out[42:58, 102:118] - orig[42:58, 102:118]).mean() > 20
    params = infotext_params(r.infotexts[0])
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == "8"
    assert params["Size"] == "64x64"


def test_empty_and_all_white_masks(env: Env) -> None:
    src = _noise_image(64, 64)
    empty = Image.new("L", (64, 64))
    whole = run(env, [src], empty, inpaint_full_res=False)
    assert (pixels(whole.images[0]) == pixels(src)).all()  # nothing to repaint: the original, exactly
    plain = run(env, [src])
    only = run(env, [src], empty, inpaint_full_res=True)  # A1111 1.10: plain img2img without a mask
    assert (pixels(only.images[0]) == pixels(plain.images[0])).all()
    white = Image.new("L", (64, 64), 255)
    all_white = run(env, [src], white, inpaint_full_res=False, inpainting_fill=1)
    assert (pixels(all_white.images[0]) == pixels(plain.images[0])).all()  # everything repainted


def test_mask_of_another_size(env: Env) -> None:
    src = _noise_image(64, 64)
    half = _box_mask(32, 32, (8, 8, 24, 24))  # same aspect: stretched to the image
    full = _box_mask(64, 64, (16, 16, 48, 48))
    a = run(env, [src], half, inpaint_full_res=False, mask_round=True)
    b = run(env, [src], full, inpaint_full_res=False, mask_round=True)
    assert np.abs(pixels(a.images[0]) - pixels(b.images[0])).mean() < 2
    with pytest.raises(InvalidRequest, match="mask"):
        run(env, [src], Image.new("L", (64, 32)))


def test_invert_repaints_the_black_area(env: Env) -> None:
    src = _noise_image(64, 64)
    mask = _box_mask(64, 64, (16, 16, 48, 48))
    r = run(env, [src], mask, inpaint_full_res=False, inpainting_mask_invert=1, mask_blur=0)
    out, orig = pixels(r.images[0]), pixels(src)
    assert (out[20:44, 20:44] == orig[20:44, 20:44]).all()
    assert infotext_params(r.infotexts[0])["Mask mode"] == "Inpaint not masked"


@pytest.mark.parametrize("fill,label", [(2, "latent noise"), (3, "latent nothing")])
def test_latent_fills(env: Env, fill: int, label: str) -> None:
    src = _noise_image(64, 64)
    r = run(env, [src], _box_mask(64, 64, (16, 16, 48, 48)), inpaint_full_res=False, inpainting_fill=fill,
            denoising_strength=1.0)
    assert infotext_params(r.infotexts[0])["Masked content"] == label


def test_nine_channel_inpainting_checkpoint(tiny_env: Env, tiny_checkpoints: dict[str, Any]) -> None:
    name = tiny_checkpoints["sd1_inpaint"]
    model = tiny_env.model(name)
    assert model.unet.config.in_channels == 9
    src = _noise_image(64, 64)
    mask = _box_mask(64, 64, (16, 16, 48, 48))
    seen: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        r = run(tiny_env, [src], mask, checkpoint=name, inpaint_full_res=False, mask_blur=0)
        plain = run(tiny_env, [src], checkpoint=name)  # no mask: the whole image counts as masked
    finally:
        hook.remove()
    assert set(seen) == {9}
    assert r.info["is_using_inpainting_conditioning"] is True
    assert infotext_params(r.infotexts[0])["Conditional mask weight"] == "1.0"
    out, orig = pixels(r.images[0]), pixels(src)
    assert (out[:8] == orig[:8]).all()
    w0 = run(tiny_env, [src], mask, checkpoint=name, inpaint_full_res=False, mask_blur=0,
             options={"inpainting_mask_weight": 0.0})
    assert not (pixels(w0.images[0]) == out).all()  # the masked-image conditioning reaches the UNet
    assert plain.images[0].size == (64, 64)


# -- hires pass two is img2img ------------------------------------------------------------------------------

def test_firstpass_hires_equals_img2img_of_the_upscaled_image(env: Env) -> None:
    first = _noise_image(64, 64, seed=3)
    hires = env.run(firstpass_image=first, hr_upscaler="Lanczos", hr_scale=1.5, denoising_strength=0.6,
                    steps=5, sampler_name="DPM++ 2M")
    upscaled = first.resize((96, 96), Image.Resampling.LANCZOS)
    img = run(env, [upscaled], width=96, height=96, denoising_strength=0.6, steps=5, sampler_name="DPM++ 2M",
              options={"img2img_fix_steps": True})
    assert hires.unet_calls == img.unet_calls == [5]
    assert (pixels(hires.images[0]) == pixels(img.images[0])).all()


def test_progress_counts_the_steps_run_and_interrupt_ends_the_job(env: Env, builtin_model: Any) -> None:
    seen: list[tuple[int, int, int]] = []

    def on_call(n: int, _t: float) -> None:
        s = env.state.snapshot()["state"]
        seen.append((s["job_no"], s["job_count"], s["sampling_steps"]))
        if n == 3:
            env.state.interrupt()

    with count_unet(builtin_model, on_call=on_call) as c:
        r = run(env, [_noise_image(64, 64)], n_iter=3, steps=10, denoising_strength=0.5)
    assert c.count() == 3  # stopped in the first batch's third step
    assert len(r.images) == 1 and r.images[0].size == (64, 64)  # its partial result; no later batch ran
    assert seen[0][:2] == (0, 3) and seen[-1][2] == 6  # int(0.5 * 10) + 1 steps of this pass


@pytest.fixture(scope="module")
def xl_inpaint_env(tmp_path_factory) -> Env:
    import torch

    from pipeline.models.checkpoints import CheckpointRegistry
    from pipeline.models.manager import ModelManager
    from tests.fixtures.tinymodels import build_tiny_sdxl
    from upscalers.registry import UpscalerRegistry

    root = tmp_path_factory.mktemp("models-xl-inpaint")
    build_tiny_sdxl(tmp_path_factory.mktemp("xl-inpaint-build"), seed=80, unet={"in_channels": 9}) \
        .write_safetensors(root / "Stable-diffusion" / "tiny-xl-inpaint.safetensors")
    env = Env(ModelManager(CheckpointRegistry(root, root / "data"), torch.device("cpu"), torch.float32),
              UpscalerRegistry(root))
    env.options["sd_model_checkpoint"] = "tiny-xl-inpaint.safetensors"
    return env


def test_sdxl_nine_channel_inpainting_through_img2img(xl_inpaint_env: Env) -> None:
    env = xl_inpaint_env
    model = env.model("tiny-xl-inpaint")
    assert model.family == "sdxl" and model.unet.config.in_channels == 9
    src, mask = _noise_image(64, 64), _box_mask(64, 64, (16, 16, 48, 48))
    seen: list[tuple[int, tuple[int, ...]]] = []
    def grab(_module, args, kwargs):
        seen.append((args[0].shape[1], tuple(kwargs["added_cond_kwargs"]["time_ids"].shape)))

    hook = model.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        r = run(env, [src], mask, inpaint_full_res=False, mask_blur=0)
    finally:
        hook.remove()
    assert {c for c, _ in seen} == {9} and {ids for _, ids in seen} == {(2, 6)}  # SDXL vector cond with CFG
    assert r.info["is_using_inpainting_conditioning"] is True
    out, orig = pixels(r.images[0]), pixels(src)
    assert (out[:8] == orig[:8]).all() and np.abs(out[24:40, 24:40] - orig[24:40, 24:40]).mean() > 5
    w0 = run(env, [src], mask, inpaint_full_res=False, mask_blur=0, options={"inpainting_mask_weight": 0.0})
    assert not (pixels(w0.images[0]) == out).all()  # the masked-image conditioning reaches the UNet
