"""The options that shape sampling and conditioning (issue 20), each through a whole job: its infotext key
written as A1111 writes it, and the image changing when the option is on (none changes the default)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import Env, count_unet, infotext_params, mean_abs_diff

JOB = {"prompt": "a red fox in the snow", "negative_prompt": "", "steps": 6, "width": 64, "height": 64,
       "seed": 1234, "cfg_scale": 7.0, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "enable_hr": False}
LONG_NEGATIVE = ", ".join(["blurry, lowres, bad anatomy, watermark"] * 12)  # over 75 tokens: two chunks


def _run(env: Env, options: dict | None = None, **fields):
    return env.run(options=options or {}, **{**JOB, **fields})


@pytest.fixture(scope="module")
def plain(env: Env):
    return _run(env)


@pytest.mark.parametrize(("options", "keys"), [
    ({"always_discard_next_to_last_sigma": True}, {"Discard penultimate sigma": "True"}),
    ({"sigma_min": 0.1, "sigma_max": 10.0}, {"Schedule min sigma": "0.1", "Schedule max sigma": "10.0"}),
    ({"rho": 5.0}, {"Schedule rho": "5.0"}),
    ({"use_old_karras_scheduler_sigmas": True}, {}),
    ({"s_min_uncond": 5.0}, {"NGMS": "5.0"}),
    ({"s_min_uncond": 5.0, "s_min_uncond_all": True}, {"NGMS": "5.0", "NGMS all steps": "True"}),
    ({"randn_source": "CPU", "eta_noise_seed_delta": 31337}, {"RNG": "CPU"}),  # DPM++ 2M: no ENSD key
])
def test_each_option_changes_the_image_and_writes_its_key(env: Env, plain, options, keys):
    result = _run(env, options)
    params = infotext_params(result.infotexts[0])
    for key, value in keys.items():
        assert params.get(key) == value, (key, params)
    for key in ("Discard penultimate sigma", "Schedule min sigma", "Schedule max sigma", "Schedule rho", "NGMS",
                "NGMS all steps", "ENSD", "RNG"):
        if key not in keys:
            assert key not in params, key
    if options.get("randn_source") == "CPU":  # on the CPU, GPU is CPU: the same image
        assert mean_abs_diff(result.images[0], plain.images[0]) == 0
    else:
        assert mean_abs_diff(result.images[0], plain.images[0]) > 0.05


def test_the_default_writes_none_of_the_keys(plain):
    params = infotext_params(plain.infotexts[0])
    for key in ("Discard penultimate sigma", "Schedule min sigma", "Schedule rho", "NGMS", "ENSD", "RNG",
                "Emphasis", "Pad conds", "Noise multiplier"):
        assert key not in params


def test_a_sampler_that_discards_already_writes_no_discard_key(env: Env):
    a = _run(env, sampler_name="DPM2", scheduler="Karras")
    b = _run(env, {"always_discard_next_to_last_sigma": True}, sampler_name="DPM2", scheduler="Karras")
    assert "Discard penultimate sigma" not in infotext_params(b.infotexts[0])
    assert mean_abs_diff(a.images[0], b.images[0]) == 0


def test_schedule_overrides_leave_automatic_euler_alone(env: Env):
    a = _run(env, sampler_name="Euler", scheduler="Automatic")
    b = _run(env, {"sigma_min": 0.1, "rho": 3.0}, sampler_name="Euler", scheduler="Automatic")
    assert mean_abs_diff(a.images[0], b.images[0]) == 0  # A1111: the model's own schedule has no function
    assert "Schedule min sigma" not in infotext_params(b.infotexts[0])


@pytest.mark.parametrize(("sampler", "eta", "written"), [("Euler a", None, True), ("Euler a", 0.0, False),
                                                         ("Euler", None, False), ("DPM++ 2S a", 0.5, True)])
def test_ensd_key_only_for_samplers_that_use_it(env: Env, sampler, eta, written):
    result = _run(env, {"eta_noise_seed_delta": 31337}, sampler_name=sampler, scheduler="Automatic", eta=eta)
    assert (infotext_params(result.infotexts[0]).get("ENSD") == "31337") is written


def test_ensd_changes_an_ancestral_image_only(env: Env):
    base = _run(env, sampler_name="Euler a", scheduler="Automatic")
    ensd = _run(env, {"eta_noise_seed_delta": 31337}, sampler_name="Euler a", scheduler="Automatic")
    assert mean_abs_diff(base.images[0], ensd.images[0]) > 0.05
    plain = _run(env, sampler_name="Euler", scheduler="Automatic")
    same = _run(env, {"eta_noise_seed_delta": 31337}, sampler_name="Euler", scheduler="Automatic")
    assert mean_abs_diff(plain.images[0], same.images[0]) == 0


@pytest.mark.parametrize(("option", "key"), [("pad_cond_uncond", "Pad conds"), ("pad_cond_uncond_v0", "Pad conds v0")])
def test_pad_conds_batches_prompts_of_different_lengths(env: Env, option, key):
    model = env.model()
    base = _run(env, negative_prompt=LONG_NEGATIVE)
    with count_unet(model) as counter:
        padded = _run(env, {option: True}, negative_prompt=LONG_NEGATIVE)
    assert counter.count() == JOB["steps"]  # one batched call per step, not two
    assert infotext_params(padded.infotexts[0]).get(key) == "True"
    assert mean_abs_diff(base.images[0], padded.images[0]) > 0.05
    same_length = _run(env, {option: True})  # nothing to pad: no key, the same image
    assert key not in infotext_params(same_length.infotexts[0])


@pytest.mark.parametrize("mode", ["No norm", "Ignore", "None"])
def test_emphasis_modes_change_a_weighted_prompt(env: Env, mode):
    prompt = "a red (fox:1.4) in the [snow]"
    base = _run(env, prompt=prompt)
    other = _run(env, {"emphasis": mode}, prompt=prompt)
    assert infotext_params(other.infotexts[0]).get("Emphasis") == mode
    assert mean_abs_diff(base.images[0], other.images[0]) > 0.05
    plain = _run(env, {"emphasis": mode})  # no brackets: no key (A1111), and here no weights to change
    assert "Emphasis" not in infotext_params(plain.infotexts[0])


def test_emphasis_is_per_job(env: Env):
    prompt = "a red (fox:1.4) in the snow"
    first = _run(env, prompt=prompt)
    _run(env, {"emphasis": "Ignore"}, prompt=prompt)
    again = _run(env, prompt=prompt)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))


def test_sgm_noise_multiplier_scales_the_initial_noise(env: Env, plain):
    result = _run(env, {"sgm_noise_multiplier": True})
    assert infotext_params(result.infotexts[0]).get("SGM noise multiplier") == "True"
    assert mean_abs_diff(result.images[0], plain.images[0]) > 0.05


def test_extra_noise_acts_on_denoising_passes_only(env: Env, plain):
    same = _run(env, {"img2img_extra_noise": 0.3})  # txt2img without hires: no denoising pass
    assert mean_abs_diff(same.images[0], plain.images[0]) == 0
    assert "Extra noise" not in infotext_params(same.infotexts[0])
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 3,
             "denoising_strength": 0.5}
    base = _run(env, **hires)
    extra = _run(env, {"img2img_extra_noise": 0.3}, **hires)
    assert infotext_params(extra.infotexts[0]).get("Extra noise") == "0.3"
    assert mean_abs_diff(base.images[0], extra.images[0]) > 0.05


def test_old_prompt_editing_timelines(env: Env):
    """`[a:b:1.0]`: today a fraction (the whole pass: b never shows), with the old rule step 1 (b from
    step 2); a prompt both rules read alike writes no key."""
    prompt = "a [red:blue:1.0] fox in the snow"
    new = _run(env, prompt=prompt)
    old = _run(env, {"use_old_scheduling": True}, prompt=prompt)
    assert infotext_params(old.infotexts[0]).get("Old prompt editing timelines") == "True"
    assert mean_abs_diff(new.images[0], old.images[0]) > 0.05
    same = _run(env, {"use_old_scheduling": True}, prompt="a [red:blue:0.5] fox")
    assert "Old prompt editing timelines" not in infotext_params(same.infotexts[0])
