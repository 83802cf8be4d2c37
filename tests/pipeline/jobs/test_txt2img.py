"""The two-pass txt2img sampler end to end on the builtin tiny model: upscale paths, exact UNet evaluation
counts, the fixed-steps schedule, overrides, seeds, firstpass_image, tiling and the SDXL family.

UNet evaluations are counted with forward pre-hooks on `model.unet` (each forward on a CFG batch counts
once), so the counts are what the model really ran, not what the pipeline reports."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.diffusion import samplers
from pipeline.infotext.codec import parse_infotext
from pipeline.runtime.errors import InvalidRequest, UnknownName
from tests.conftest import count_unet, count_vae, infotext_params, mean_abs_diff, pixels
from upscalers.latent import latent_mode_names

HR = {"enable_hr": True, "hr_scale": 2.0}  # denoising_strength 0.5 comes from FAST


# -- upscale paths ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [None, *latent_mode_names()])
def test_every_latent_mode_runs_with_no_vae_round_trip(env, builtin_model, mode):
    with count_vae(builtin_model) as vae_calls:
        res = env.run(**HR, hr_upscaler=mode)
    assert res.images[0].size == (128, 128)
    assert vae_calls == {"encode": 0, "decode": 1}  # only the final decode: no decode/encode between passes
    params = infotext_params(res.infotexts[0])
    if mode is None:
        assert "Hires upscaler" not in params  # null means Latent, and A1111 writes no key for it
    else:
        assert params["Hires upscaler"] == mode


def test_latent_modes_interpolate_differently(env):
    # denoising 0 returns the upscaled first pass itself, so the interpolation is what we see
    run = lambda mode: env.run(**{**HR, "denoising_strength": 0.0}, hr_upscaler=mode).images[0]  # noqa: E731
    nearest, bilinear, default = run("Latent (nearest)"), run("Latent"), run(None)
    bicubic_aa = run("Latent (bicubic antialiased)")
    assert np.array_equal(pixels(default), pixels(bilinear))  # null is plain bilinear "Latent"
    assert mean_abs_diff(nearest, bilinear) > 0.5
    assert mean_abs_diff(bicubic_aa, bilinear) > 0.1


@pytest.mark.parametrize("name", ["None", "Lanczos", "Nearest"])
def test_pixel_path_decodes_upscales_and_encodes(env, builtin_model, name):
    with count_vae(builtin_model) as vae_calls:
        res = env.run(**HR, hr_upscaler=name)
    assert res.images[0].size == (128, 128)
    assert vae_calls == {"encode": 1, "decode": 2}  # pass-one decode, re-encode, final decode
    assert infotext_params(res.infotexts[0])["Hires upscaler"] == name
    assert res.unet_calls == [4, 4]


def test_pixel_upscalers_give_different_results(env):
    lanczos = env.run(**HR, hr_upscaler="Lanczos").images[0]
    nearest = env.run(**HR, hr_upscaler="Nearest").images[0]
    assert mean_abs_diff(lanczos, nearest) > 0.1


@pytest.mark.parametrize("upscaler", [None, "Lanczos"])
def test_denoising_zero_returns_the_upscaled_first_pass_at_the_cropped_size(env, upscaler):
    res = env.run(**{**HR, "denoising_strength": 0.0}, hr_upscaler=upscaler, width=64, height=96,
                  hr_resize_x=128, hr_resize_y=128)
    assert res.unet_calls == [4]  # no second sampling
    assert res.images[0].size == (128, 128)  # cropped like the latent, not the 128x192 cover size


# -- UNet evaluations per pass and the fixed-steps schedule ---------------------------------------------

@pytest.mark.parametrize(("steps", "hr_steps", "expected"), [(5, 0, [5, 5]), (5, 3, [5, 3]), (3, 7, [3, 7])])
def test_unet_evaluations_per_pass(env, builtin_model, steps, hr_steps, expected):
    with count_unet(builtin_model) as counter:
        res = env.run(**HR, steps=steps, hr_second_pass_steps=hr_steps)
    assert counter.count() == sum(expected)
    assert res.unet_calls == expected
    params = infotext_params(res.infotexts[0])
    assert params["Steps"] == str(steps)
    assert params.get("Hires steps") == (str(hr_steps) if hr_steps else None)


@pytest.mark.parametrize("upscaler", [None, "Lanczos"])
def test_denoising_zero_runs_no_second_pass(env, builtin_model, upscaler):
    with count_unet(builtin_model) as counter:
        res = env.run(**{**HR, "denoising_strength": 0.0}, hr_upscaler=upscaler, steps=5)
    assert counter.count() == 5
    assert res.images[0].size == (128, 128)


@pytest.mark.parametrize(("hr_steps", "d"), [(3, 0.5), (4, 0.3), (5, 0.75), (4, 1.0)])
def test_pass_two_follows_a1111_fixed_steps_rule(env, builtin_model, hr_steps, d):
    """S steps from the tail of an int(S / min(d, 0.999)) schedule: the first pass-two timestep is the
    full schedule's timestep at index total - S."""
    with count_unet(builtin_model) as counter:
        env.run(**HR, steps=3, hr_second_pass_steps=hr_steps, denoising_strength=d)
    second = [t for _, t in counter.calls[3:]]
    assert len(second) == hr_steps
    total = int(hr_steps / min(d, 0.999))
    assert total == samplers.fixed_steps_total(hr_steps, d)
    sampler, schedule = samplers.resolve("Euler", None, None)
    full = samplers.make_plan(sampler, schedule, builtin_model.scheduler_config, steps=total)
    assert second == pytest.approx(full.timesteps[total - hr_steps:].tolist(), rel=1e-5, abs=1e-3)
    if d >= 0.999:
        assert second[0] == pytest.approx(float(full.timesteps[0]), abs=1e-3)  # from maximum noise


def test_second_order_hires_sampler_evaluates_twice_per_step(env, builtin_model):
    with count_unet(builtin_model) as counter:
        res = env.run(**HR, steps=3, hr_second_pass_steps=3, hr_sampler_name="Heun")
    assert res.unet_calls == [3, 5]  # Heun: 2 per step, the last step to sigma 0 is first-order
    assert counter.count() == 8


# -- overrides -----------------------------------------------------------------------------------------

def test_hires_sampler_and_scheduler_overrides(env):
    base = env.run(**HR)
    sampler = env.run(**HR, hr_sampler_name="Euler a")
    sched = env.run(**HR, hr_scheduler="Karras")
    p_s, p_k = infotext_params(sampler.infotexts[0]), infotext_params(sched.infotexts[0])
    assert p_s["Hires sampler"] == "Euler a" and p_s["Sampler"] == "Euler"
    assert p_k["Hires schedule type"] == "Karras" and p_k["Schedule type"] == "Automatic"
    assert "Hires sampler" not in infotext_params(base.infotexts[0])
    assert "Hires schedule type" not in infotext_params(base.infotexts[0])
    assert mean_abs_diff(base.images[0], sampler.images[0]) > 0.1
    assert mean_abs_diff(base.images[0], sched.images[0]) > 0.1


@pytest.mark.parametrize(("sampler", "scheduler"), [("Use same sampler", "Use same scheduler"), ("", ""),
                                                    ("Euler", "Automatic")])
def test_same_sampler_spellings_change_nothing(env, sampler, scheduler):
    base = env.run(**HR)
    same = env.run(**HR, hr_sampler_name=sampler, hr_scheduler=scheduler)
    assert np.array_equal(pixels(base.images[0]), pixels(same.images[0]))
    assert same.infotexts == base.infotexts


def test_hires_prompts_change_pass_two_only(env, builtin_model):
    base = env.run(**HR, negative_prompt="blurry")
    pos = env.run(**HR, negative_prompt="blurry", hr_prompt="a dog, detailed")
    neg = env.run(**HR, negative_prompt="blurry", hr_negative_prompt="ugly")
    same = env.run(**HR, negative_prompt="blurry", hr_prompt="a cat", hr_negative_prompt="")
    assert mean_abs_diff(base.images[0], pos.images[0]) > 0.1
    assert mean_abs_diff(base.images[0], neg.images[0]) > 0.1
    assert np.array_equal(pixels(base.images[0]), pixels(same.images[0]))
    assert infotext_params(pos.infotexts[0])["Hires prompt"] == "a dog, detailed"
    assert infotext_params(neg.infotexts[0])["Hires negative prompt"] == "ugly"
    assert not {"Hires prompt", "Hires negative prompt"} & infotext_params(same.infotexts[0]).keys()
    # png-info parses the hires prompt back
    parsed = parse_infotext(pos.infotexts[0])
    assert parsed["Hires prompt"] == "a dog, detailed" and parsed["Prompt"] == "a cat"


def test_hires_cfg_absent_means_cfg_scale(env):
    base = env.run(**HR, cfg_scale=6.0)
    explicit = env.run(**HR, cfg_scale=6.0, hr_cfg=6.0)
    lower = env.run(**HR, cfg_scale=6.0, hr_cfg=2.5)
    assert np.array_equal(pixels(base.images[0]), pixels(explicit.images[0]))  # never Forge's silent 1.0
    assert "Hires CFG Scale" not in infotext_params(base.infotexts[0])
    assert "Hires CFG Scale" not in infotext_params(explicit.infotexts[0])
    assert infotext_params(lower.infotexts[0])["Hires CFG Scale"] == "2.5"
    assert mean_abs_diff(base.images[0], lower.images[0]) > 0.1


@pytest.mark.parametrize(("field", "value", "listed"), [
    ("hr_sampler_name", "Euler Z", "DPM++ 2M"),
    ("hr_scheduler", "Wobbly", "Karras"),
    ("hr_upscaler", "R-ESRGAN 9x", "Lanczos"),
    ("hr_checkpoint_name", "no-such-model", "hiresd-builtin-tiny"),
])
def test_unknown_hires_names_fail_in_prepare_listing_valid_names(env, builtin_model, field, value, listed):
    with count_unet(builtin_model) as counter, pytest.raises(UnknownName) as err:
        env.prepare(**HR, **{field: value})
    assert counter.count() == 0
    assert err.value.field == field
    assert listed in str(err.value) and repr(value) in str(err.value)
    if field == "hr_upscaler":
        assert "Latent (nearest-exact)" in str(err.value)


def test_hires_checkpoint_runs_pass_two_on_the_other_model(tiny_env, tiny_checkpoints):
    main_name, other = tiny_checkpoints["builtin"], tiny_checkpoints["sd1"]
    opts = {"sd_model_checkpoint": main_name}
    main, hr = tiny_env.model(main_name), tiny_env.model(other)
    with count_unet(main, hr, tags=["main", "hr"]) as counter:
        res = tiny_env.run(**HR, options=opts, steps=3, hr_second_pass_steps=2, hr_checkpoint_name="tiny-sd1")
    assert [tag for tag, _ in counter.calls] == ["main"] * 3 + ["hr"] * 2
    assert res.images[0].size == (128, 128)
    params = infotext_params(res.infotexts[0])
    assert params["Hires checkpoint"].startswith("tiny-sd1.safetensors")
    assert params["Model"] == "hiresd-builtin-tiny"  # the job's model, not the hires one
    assert res.info["sd_model_name"] == "hiresd-builtin-tiny"
    same = tiny_env.run(**HR, options=opts, steps=3, hr_second_pass_steps=2)
    assert mean_abs_diff(same.images[0], res.images[0]) > 0.1
    # the next job runs on its own model again ("Use same checkpoint" keeps it)
    with count_unet(main, hr, tags=["main", "hr"]) as counter:
        again = tiny_env.run(**HR, options=opts, steps=3, hr_checkpoint_name="Use same checkpoint")
    assert counter.count("hr") == 0 and counter.count("main") == 6
    assert "Hires checkpoint" not in infotext_params(again.infotexts[0])
    assert np.array_equal(pixels(again.images[0]), pixels(tiny_env.run(**HR, options=opts, steps=3).images[0]))


def test_hires_checkpoint_is_not_loaded_when_pass_two_does_not_run(tiny_checkpoints):
    """Denoising 0 returns the upscaled first pass (pixel or latent path): the hires model is never needed."""
    env1 = _one_slot_env(tiny_checkpoints)
    opts = {"sd_model_checkpoint": tiny_checkpoints["builtin"]}
    for upscaler in ("Lanczos", "Latent"):
        res = env1.run(**HR, options=opts, steps=2, hr_upscaler=upscaler, denoising_strength=0,
                       hr_checkpoint_name="tiny-sd1")
        assert res.unet_calls == [2] and res.images[0].size == (128, 128)
        assert "Hires checkpoint" in infotext_params(res.infotexts[0])
        assert len(env1.models._loaded) == 1 and not [k for k in env1.models._loaded if "tiny-sd1" in k]


def _one_slot_env(tiny_checkpoints):
    """An Env over the tiny models folder with the server's default of one loaded model."""
    from pipeline.models.checkpoints import CheckpointRegistry
    from pipeline.models.manager import ModelManager
    from tests.conftest import Env
    from upscalers.registry import UpscalerRegistry

    root = tiny_checkpoints["root"]
    return Env(ModelManager(CheckpointRegistry(root, root / "data1"), torch.device("cpu"), torch.float32),
               UpscalerRegistry(root))


def test_hires_checkpoint_with_one_model_slot_reloads_the_main_model_per_batch(tiny_checkpoints):
    """The server default keeps one model: the hires model evicts the main one, which comes back for the
    next batch's first pass (A1111 reloads it the same way)."""
    env1 = _one_slot_env(tiny_checkpoints)
    opts = {"sd_model_checkpoint": tiny_checkpoints["builtin"]}
    res = env1.run(**HR, options=opts, steps=2, n_iter=2, hr_checkpoint_name="tiny-sd1")
    assert res.unet_calls == [2, 2, 2, 2] and len(res.images) == 2
    assert len(env1.models._loaded) == 1


# -- seeds and batches ---------------------------------------------------------------------------------

def test_same_seed_same_pixels_other_seed_other_pixels(env):
    a, b = env.run(**HR, seed=77), env.run(**HR, seed=77)
    c = env.run(**HR, seed=78)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert mean_abs_diff(a.images[0], c.images[0]) > 0.5


def test_batch_and_n_iter_use_seed_plus_index(env):
    batch = env.run(**HR, seed=100, batch_size=2, n_iter=2)
    assert batch.info["all_seeds"] == [100, 101, 102, 103]
    assert [infotext_params(t)["Seed"] for t in batch.infotexts] == ["100", "101", "102", "103"]
    assert batch.unet_calls == [4, 4, 4, 4]
    for i in (1, 3):
        alone = env.run(**HR, seed=100 + i).images[0]
        # a batch of two computes in one tensor: identical up to float rounding
        diff = np.abs(pixels(batch.images[i]) - pixels(alone))
        assert diff.max() <= 2 and diff.mean() < 0.05
    assert mean_abs_diff(batch.images[0], batch.images[1]) > 0.5


# -- firstpass_image ------------------------------------------------------------------------------------

@pytest.mark.parametrize("upscaler", [None, "Lanczos"])
def test_firstpass_image_skips_pass_one(env, builtin_model, upscaler):
    picture = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))[..., None].repeat(3, -1))
    with count_unet(builtin_model) as counter:
        res = env.run(**HR, hr_upscaler=upscaler, firstpass_image=picture, steps=9, hr_second_pass_steps=3)
    assert counter.count() == 3 and res.unet_calls == [3]  # pass one: 0 evaluations
    assert res.images[0].size == (128, 128)
    assert infotext_params(res.infotexts[0])["Size"] == "64x64"
    # the picture shows through a light second pass: its left-to-right ramp survives (the model is noise)
    other = env.run(**HR, hr_upscaler=upscaler, firstpass_image=picture.transpose(Image.Transpose.ROTATE_90),
                    steps=9, hr_second_pass_steps=3, denoising_strength=0.3)
    light = env.run(**HR, hr_upscaler=upscaler, firstpass_image=picture, steps=9, hr_second_pass_steps=3,
                    denoising_strength=0.3)
    assert mean_abs_diff(light.images[0], other.images[0]) > 1.0


def test_firstpass_image_size_sets_the_first_pass_size(env):
    picture = Image.new("RGB", (100, 70), (120, 30, 200))
    res = env.run(**HR, firstpass_image=picture, width=512, height=512)  # width/height do not matter
    assert res.images[0].size == (192, 128)  # 96x64 x 2
    assert infotext_params(res.infotexts[0])["Size"] == "96x64"
    with pytest.raises(InvalidRequest):
        env.prepare(**HR, firstpass_image=Image.new("RGB", (32, 80)))


# -- tiling ---------------------------------------------------------------------------------------------

def _seam_ratio(image: Image.Image) -> float:
    """Wrap-around edge difference (right column vs left, bottom row vs top) relative to the average
    neighbour difference inside the image: about 1 for a seamless tile, well above 1 otherwise."""
    a = pixels(image).astype(float)
    wrap = (np.abs(a[:, 0] - a[:, -1]).mean() + np.abs(a[0] - a[-1]).mean()) / 2
    inner = (np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=0)).mean()) / 2
    return wrap / inner


def test_tiling_makes_a_seamless_tile_and_restores_the_padding(env, builtin_model):
    plain = env.run(**HR, steps=6, denoising_strength=0.6)
    tiled = env.run(**HR, steps=6, denoising_strength=0.6, tiling=True)
    assert _seam_ratio(tiled.images[0]) < 0.6 * _seam_ratio(plain.images[0])
    assert _seam_ratio(tiled.images[0]) < 1.6
    assert infotext_params(tiled.infotexts[0])["Tiling"] == "True"
    assert "Tiling" not in infotext_params(plain.infotexts[0])
    convs = [m for mod in (builtin_model.unet, builtin_model.vae) for m in mod.modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.padding_mode == "zeros" for m in convs)
    again = env.run(**HR, steps=6, denoising_strength=0.6)
    assert np.array_equal(pixels(again.images[0]), pixels(plain.images[0]))


# -- SDXL ----------------------------------------------------------------------------------------------

def test_sdxl_single_file_runs_a_hires_job(tiny_env, tiny_checkpoints):
    opts = {"sd_model_checkpoint": "tiny-sdxl"}
    model = tiny_env.model("tiny-sdxl")
    assert model.family == "sdxl"
    with count_unet(model) as counter:
        res = tiny_env.run(**HR, options=opts, steps=3, width=64, height=96, hr_second_pass_steps=2)
    assert counter.count() == 5
    assert res.images[0].size == (128, 192)
    assert infotext_params(res.infotexts[0])["Model"] == "tiny-sdxl"
    assert pixels(res.images[0]).std() > 1


def test_ddim_cfgpp_steps_along_the_unconditional_prediction(env, builtin_model):
    """DDIM CFG++ guides with cfg_scale / 12.5 and always evaluates the unconditional half (also where that
    scale is 1), because its step re-noises along it; the result is its own, not DDIM's."""
    batches: list[int] = []
    hook = builtin_model.unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        cfgpp = env.run(sampler_name="DDIM CFG++", cfg_scale=12.5, steps=4, seed=5)
    finally:
        hook.remove()
    assert batches and set(batches) == {2}  # cond and uncond in one batch on every call
    assert infotext_params(cfgpp.infotexts[0])["Sampler"] == "DDIM CFG++"
    ddim = env.run(sampler_name="DDIM", cfg_scale=1.0, steps=4, seed=5)  # the same guided output, cond only
    assert mean_abs_diff(cfgpp.images[0], ddim.images[0]) > 0.1
    again = env.run(sampler_name="DDIM CFG++", cfg_scale=12.5, steps=4, seed=5)
    assert np.array_equal(pixels(cfgpp.images[0]), pixels(again.images[0]))
