"""Extension hooks: the shipped example extension and a recorder, loaded from a directory with
`Extensions.load`, run at the right moments and their changes take effect."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.jobs.extensions import Extensions
from tests.conftest import count_unet, infotext_params, mean_abs_diff, pixels

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "extensions" / "hires_detail.py"
HR = {"enable_hr": True, "hr_scale": 2.0, "steps": 3, "cfg_scale": 7.0}

RECORDER = '''
NAME = "Recorder"
EVENTS = []

def before_hr(p):
    EVENTS.append(("before_hr", p.is_hr_pass, p.hr_prompt, p.hr_cfg))

def process_before_every_sampling(p, **kw):
    EVENTS.append(("sampling", kw["pass_no"], tuple(kw["noise"].shape), kw["x"] is None))
'''


@pytest.fixture()
def ext_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "extensions"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    (folder / "zz_recorder.py").write_text(RECORDER)
    (folder / "_private_helper.py").write_text("raise RuntimeError('never imported')\n")
    (folder / "broken.py").write_text("def before_hr(p):\n    return (\n")  # a syntax error: skipped, logged
    return folder


def _events(extensions: Extensions) -> list:
    rec = next(e for e in extensions.items if e.name == "Recorder")
    return rec.hooks["before_hr"].__globals__["EVENTS"]


def test_load_lists_the_extensions(ext_dir):
    exts = Extensions.load(ext_dir, use_entry_points=False)
    assert exts.names() == ["hires detail", "recorder"]
    assert set(exts.items[0].hooks) == {"before_hr"}
    assert set(exts.items[1].hooks) == {"before_hr", "process_before_every_sampling"}


def test_hooks_run_at_the_right_moments(env, builtin_model, ext_dir):
    exts = Extensions.load(ext_dir, use_entry_points=False)
    events = _events(exts)
    with count_unet(builtin_model, on_call=lambda n, t: events.append(("unet", n))):
        env.run(**HR, hr_second_pass_steps=2, extensions=exts)
    names = [e[0] for e in events]
    assert names == ["sampling", "unet", "unet", "unet", "before_hr", "sampling", "unet", "unet"]
    assert events[0][1:] == (1, (1, 4, 8, 8), True)  # pass one: noise at the first-pass size, no init
    assert events[5][1:] == (2, (1, 4, 16, 16), False)  # pass two: hi-res noise and the upscaled latent
    # the example extension runs first (file order), so the recorder sees its changes
    _, is_hr_pass, hr_prompt, hr_cfg = events[4]
    assert is_hr_pass is False  # called before pass two starts
    assert hr_prompt == "a cat, highly detailed, sharp focus, intricate texture"
    assert hr_cfg == pytest.approx(4.9)


def test_before_hr_changes_take_effect(env, ext_dir):
    exts = Extensions.load(ext_dir, use_entry_points=False)
    plain = env.run(**HR)
    hooked = env.run(**HR, extensions=exts)
    params = infotext_params(hooked.infotexts[0])
    assert params["Hires prompt"] == "a cat, highly detailed, sharp focus, intricate texture"
    assert params["Hires CFG Scale"] == "4.9"
    assert "Hires prompt" not in infotext_params(plain.infotexts[0])
    assert mean_abs_diff(plain.images[0], hooked.images[0]) > 0.1
    # the same job spelled as a plain request (what the infotext says) gives the same pixels
    manual = env.run(**HR, hr_prompt="a cat, highly detailed, sharp focus, intricate texture", hr_cfg=4.9)
    assert np.array_equal(pixels(manual.images[0]), pixels(hooked.images[0]))


def test_example_extension_is_idempotent_across_batches_and_respects_the_request(env, ext_dir):
    exts = Extensions.load(ext_dir, use_entry_points=False)
    res = env.run(**HR, n_iter=2, hr_cfg=5.0, hr_prompt="a cat, oil", extensions=exts)
    for text in res.infotexts:
        params = infotext_params(text)
        assert params["Hires prompt"] == "a cat, oil, highly detailed, sharp focus, intricate texture"
        assert params["Hires CFG Scale"] == "5.0"  # an explicit hr_cfg is kept
    off = env.run(**HR, extensions=exts, options={"hires_detail_suffix": "", "hires_detail_cfg_factor": 1.0})
    assert not {"Hires prompt", "Hires CFG Scale"} & infotext_params(off.infotexts[0]).keys()


def test_before_hr_can_change_the_hires_steps_and_denoising(env, builtin_model, tmp_path):
    (tmp_path / "fewer.py").write_text("def before_hr(p):\n    p.hr_second_pass_steps = 2\n"
                                       "    p.denoising_strength = 0.3\n")
    exts = Extensions.load(tmp_path, use_entry_points=False)
    with count_unet(builtin_model) as counter:
        res = env.run(**HR, extensions=exts)
    assert res.unet_calls == [3, 2] and counter.count() == 5
    params = infotext_params(res.infotexts[0])
    assert params["Hires steps"] == "2" and params["Denoising strength"] == "0.3"


def test_no_hooks_without_hires(env, ext_dir):
    exts = Extensions.load(ext_dir, use_entry_points=False)
    env.run(steps=2, extensions=exts)
    assert [e[:2] for e in _events(exts)] == [("sampling", 1)]


def test_a_failing_hook_fails_the_job_with_its_message(env, tmp_path):
    (tmp_path / "bad.py").write_text("def before_hr(p):\n    raise ValueError('bad hook')\n")
    exts = Extensions.load(tmp_path, use_entry_points=False)
    with pytest.raises(ValueError, match="bad hook"):
        env.run(**HR, extensions=exts)
