"""Interrupt, skip and progress inside the sampler, across both hires passes (reference section 9).

The flags are set from inside the job, thread-free: a forward pre-hook on the UNet calls
`state.interrupt()` / `state.skip()` just before UNet evaluation k, exactly as an HTTP handler would
between two steps. Snapshots are taken the same way."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.jobs.extensions import Extension, Extensions
from pipeline.runtime.job_state import JobState
from tests.conftest import count_unet, mean_abs_diff, pixels

HR = {"enable_hr": True, "hr_scale": 2.0, "steps": 4, "hr_second_pass_steps": 3}


def _flag_at(env, k: int, flag: str):
    def on_call(n: int, _t: float) -> None:
        if n == k:
            getattr(env.state, flag)()
    return on_call


@pytest.mark.parametrize("upscaler", [None, "Lanczos"])
def test_interrupt_in_pass_one_returns_the_partial_first_pass_at_first_pass_size(env, builtin_model, upscaler):
    with count_unet(builtin_model, on_call=_flag_at(env, 2, "interrupt")) as counter:
        res = env.run(**HR, hr_upscaler=upscaler, width=64, height=96)
    assert counter.count() == 2  # stopped after the step in which the flag arrived
    assert res.unet_calls == [2]
    assert len(res.images) == 1 and res.images[0].size == (64, 96)
    assert pixels(res.images[0]).std() > 1  # a real (partial) picture, not a blank
    assert len(res.infotexts) == 1


@pytest.mark.parametrize("upscaler", [None, "Lanczos"])
def test_interrupt_in_pass_two_returns_the_partial_hires_image(env, builtin_model, upscaler):
    with count_unet(builtin_model, on_call=_flag_at(env, 5, "interrupt")) as counter:
        res = env.run(**HR, hr_upscaler=upscaler)
    assert counter.count() == 5
    assert res.unet_calls == [4, 1]
    assert res.images[0].size == (128, 128)


def _flag_between_passes(env, flag: str) -> Extensions:
    """A before_hr hook that sets the flag: it arrives after pass one, while upscaling is due."""
    return Extensions([Extension("flagger", "test", {"before_hr": lambda p: getattr(env.state, flag)()})])


@pytest.mark.parametrize("flag", ["interrupt", "skip"])
@pytest.mark.parametrize("upscaler", [None, "Lanczos"])
def test_a_flag_between_the_passes_returns_the_upscaled_first_pass_without_a_hires_step(env, builtin_model,
                                                                                       upscaler, flag):
    with count_unet(builtin_model) as counter:
        res = env.run(**HR, hr_upscaler=upscaler, n_iter=2, extensions=_flag_between_passes(env, flag))
    # pass two never starts; an interrupt ends the job, a skip only the batch
    assert res.unet_calls == ([4] if flag == "interrupt" else [4, 4])
    assert counter.count() == sum(res.unet_calls)
    assert [img.size for img in res.images] == [(128, 128)] * len(res.unet_calls)
    assert pixels(res.images[0]).std() > 1


def test_interrupt_stops_the_remaining_batches(env, builtin_model):
    with count_unet(builtin_model, on_call=_flag_at(env, 2, "interrupt")) as counter:
        res = env.run(**HR, n_iter=3)
    assert counter.count() == 2 and len(res.images) == 1


@pytest.mark.parametrize("upscaler", [None, "Lanczos"])
def test_skip_in_pass_one_returns_the_upscaled_first_pass(env, builtin_model, upscaler):
    with count_unet(builtin_model, on_call=_flag_at(env, 2, "skip")) as counter:
        res = env.run(**HR, hr_upscaler=upscaler, width=64, height=96, hr_resize_x=128, hr_resize_y=128)
    assert counter.count() == 2 and res.unet_calls == [2]  # no second pass
    assert res.images[0].size == (128, 128)


def test_skip_ends_only_the_current_batch(env, builtin_model):
    with count_unet(builtin_model, on_call=_flag_at(env, 2, "skip")) as counter:
        res = env.run(**HR, n_iter=2, seed=40)
    assert res.unet_calls == [2, 4, 3]  # batch 1 skipped in pass one, batch 2 complete
    assert counter.count() == 9
    full = env.run(**HR, seed=41)
    assert np.array_equal(pixels(res.images[1]), pixels(full.images[0]))


def test_flags_do_not_leak_into_the_next_job(env, builtin_model):
    with count_unet(builtin_model, on_call=_flag_at(env, 3, "interrupt")):
        env.run(**HR)
    with count_unet(builtin_model) as counter:
        res = env.run(**HR)
    assert counter.count() == 7 and res.images[0].size == (128, 128)
    # set while idle: ignored; set during a job: cleared by the next begin()
    state = JobState()
    state.interrupt()
    state.skip()
    assert not state.interrupted and not state.skipped
    state.begin("scripts_txt2img", 2)
    state.interrupt()
    state.skip()
    assert state.interrupted and state.skipped
    state.begin("scripts_txt2img", 2)
    assert not state.interrupted and not state.skipped
    state.check()  # raises nothing


def test_interrupted_result_differs_from_the_complete_one(env, builtin_model):
    complete = env.run(**HR, seed=9)
    with count_unet(builtin_model, on_call=_flag_at(env, 5, "interrupt")):
        partial = env.run(**HR, seed=9)
    assert mean_abs_diff(complete.images[0], partial.images[0]) > 0.1


def test_progress_spans_both_passes(env, builtin_model):
    snaps: list[dict] = []
    with count_unet(builtin_model, on_call=lambda n, t: snaps.append(env.state.snapshot())):
        env.run(**{**HR, "steps": 4, "hr_second_pass_steps": 6})
    assert len(snaps) == 10
    one, two = snaps[:4], snaps[4:]
    assert all(s["state"]["job_count"] == 2 for s in snaps)  # doubled for hires
    assert [s["state"]["job_no"] for s in one] == [0] * 4 and [s["state"]["job_no"] for s in two] == [1] * 6
    assert [s["state"]["sampling_steps"] for s in one] == [4] * 4
    assert [s["state"]["sampling_steps"] for s in two] == [6] * 6  # switched to the hires step count
    progress = [s["progress"] for s in snaps]
    assert progress == sorted(progress)  # never goes backwards
    assert progress[0] == pytest.approx(0.01)
    assert all(p < 0.51 for p in progress[:4]) and progress[3] == pytest.approx(0.01 + 3 / 4 / 2)
    assert progress[4] == pytest.approx(0.51)
    assert progress[-1] == pytest.approx(0.51 + 5 / 6 / 2)
    assert all(s["eta_relative"] >= 0 for s in snaps)
    assert snaps[-1]["preview"] is not None  # a live preview is ready in pass two
    assert snaps[-1]["preview"]().size == (16, 16)  # 128 px / 8


def test_progress_for_several_batches(env, builtin_model):
    jobs: list[tuple[int, int]] = []
    with count_unet(builtin_model, on_call=lambda n, t: jobs.append(
            (env.state.snapshot()["state"]["job_no"], env.state.snapshot()["state"]["job_count"]))):
        env.run(**{**HR, "steps": 2, "hr_second_pass_steps": 2}, n_iter=2)
    assert jobs == [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4), (3, 4)]
