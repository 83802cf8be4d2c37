"""Hires-fix size arithmetic, exactly as A1111 v1.10 computes it (reference section 5.2).

All sizes are pixels; latent sizes are pixels // 8. The first pass runs at (width, height) rounded down to
multiples of 8; the upscale goes to (upscale_w, upscale_h) (as latent cells: // 8); with both resize values
given the overshoot is cropped in whole latent cells, centred (floor left/top, ceil right/bottom)."""
from __future__ import annotations

import math
from dataclasses import dataclass

LATENT = 8


@dataclass(frozen=True)
class HiresSize:
    first_w: int
    first_h: int
    upscale_w: int
    upscale_h: int
    truncate_x: int = 0  # latent columns removed after upscaling
    truncate_y: int = 0
    infotext_key: str = "Hires upscale"
    infotext_value: object = 2.0

    @property
    def latent_upscale(self) -> tuple[int, int]:
        """(h, w) in latent cells the first-pass latent is interpolated to."""
        return self.upscale_h // LATENT, self.upscale_w // LATENT

    @property
    def crop(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) latent cells to remove."""
        return (self.truncate_y // 2, (self.truncate_y + 1) // 2, self.truncate_x // 2, (self.truncate_x + 1) // 2)

    @property
    def final_w(self) -> int:
        return (self.upscale_w // LATENT - self.truncate_x) * LATENT

    @property
    def final_h(self) -> int:
        return (self.upscale_h // LATENT - self.truncate_y) * LATENT


def first_pass_size(width: int, height: int, firstphase_width: int = 0, firstphase_height: int = 0
                    ) -> tuple[int, int]:
    """A1111 1.10: non-zero `firstphase_*` replace the first-pass size (a zero one keeps width/height)."""
    w = firstphase_width or width
    h = firstphase_height or height
    return w // LATENT * LATENT, h // LATENT * LATENT


def hires_size(width: int, height: int, hr_scale: float, hr_resize_x: int = 0, hr_resize_y: int = 0,
               firstphase_width: int = 0, firstphase_height: int = 0) -> HiresSize:
    w, h = first_pass_size(width, height, firstphase_width, firstphase_height)
    if hr_resize_x == 0 and hr_resize_y == 0:
        return HiresSize(w, h, int(w * hr_scale), int(h * hr_scale), 0, 0, "Hires upscale", hr_scale)
    value = f"{hr_resize_x}x{hr_resize_y}"
    if hr_resize_y == 0:
        return HiresSize(w, h, hr_resize_x, hr_resize_x * h // w, 0, 0, "Hires resize", value)
    if hr_resize_x == 0:
        return HiresSize(w, h, hr_resize_y * w // h, hr_resize_y, 0, 0, "Hires resize", value)
    if w / h < hr_resize_x / hr_resize_y:
        up_w, up_h = hr_resize_x, hr_resize_x * h // w
    else:
        up_w, up_h = hr_resize_y * w // h, hr_resize_y
    return HiresSize(w, h, up_w, up_h, (up_w - hr_resize_x) // LATENT, (up_h - hr_resize_y) // LATENT,
                     "Hires resize", value)


def old_hires_first_pass(width: int, height: int) -> tuple[int, int]:
    """A1111's option `use_old_hires_fix_width_height`: the first pass has about 512x512 pixels at the
    aspect ratio of width x height, each side rounded up to a multiple of 64 (width x height become the
    hires target)."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64
