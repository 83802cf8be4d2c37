"""A1111 options that change how a job is laid out, checked on the prepared job (no sampling needed)."""
from __future__ import annotations

from pipeline.jobs.hires_size import old_hires_first_pass
from tests.conftest import Env


def test_old_hires_fix_width_height_makes_width_height_the_final_size(env: Env) -> None:
    # A1111: about 512x512 pixels at the requested aspect ratio, sides rounded up to multiples of 64
    assert old_hires_first_pass(1024, 1024) == (512, 512)
    assert old_hires_first_pass(768, 256) == (896, 320)
    assert old_hires_first_pass(1920, 1080) == (704, 384)
    fields = {"enable_hr": True, "width": 1024, "height": 768, "hr_scale": 2.0}
    new = env.prepare(**fields)
    assert (new.width, new.height, new.hires.final_w, new.hires.final_h) == (1024, 768, 2048, 1536)
    old = env.prepare(options={"use_old_hires_fix_width_height": True}, **fields)
    assert (old.width, old.height) == (640, 448)
    assert (old.hires.final_w, old.hires.final_h) == (1024, 768)
    assert old.hires.infotext_key == "Hires resize" and old.hires.infotext_value == "1024x768"
    plain = env.prepare(options={"use_old_hires_fix_width_height": True}, width=1024, height=768)
    assert (plain.width, plain.height) == (1024, 768)  # no hires fix: nothing changes
