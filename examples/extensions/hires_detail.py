"""hires detail: a sharper, calmer hires pass, as many A1111 users configure it by hand.

What it does, in `before_hr(p)` (between the passes, once per batch):
  * appends a detail suffix to the hires prompt (the hires prompt if the request set one, else the main
    prompt), so pass two adds fine texture without changing what pass one composed;
  * lowers the hires CFG scale to `cfg_scale * factor` when the request did not set `hr_cfg`: pass two
    starts from an already-formed image, and the full CFG tends to over-saturate and over-sharpen it.
Both changes show up in the infotext (`Hires prompt`, `Hires CFG Scale`), so a result can be reproduced
with a plain A1111 request.

Settings (per job, through `override_settings` or the options store; defaults below):
  hires_detail_suffix      text appended to the hires prompt ("" disables it)
  hires_detail_cfg_factor  multiplier for the hires CFG (1.0 disables it)

Install: copy this file into the server's extensions directory (`--extensions-dir`); it is then listed by
`GET /sdapi/v1/scripts` as "hires detail" and applies to every hires job.
"""
from __future__ import annotations

from typing import Any

NAME = "hires detail"
DEFAULT_SUFFIX = "highly detailed, sharp focus, intricate texture"
DEFAULT_CFG_FACTOR = 0.7


def before_hr(p: Any) -> None:
    options = getattr(p, "options", {}) or {}
    suffix = str(options.get("hires_detail_suffix", DEFAULT_SUFFIX)).strip().strip(",").strip()
    factor = float(options.get("hires_detail_cfg_factor", DEFAULT_CFG_FACTOR))
    if suffix:
        base = (p.hr_prompt or p.prompt).rstrip().rstrip(",")
        if not base.endswith(suffix):  # idempotent: before_hr runs again for every batch of the job
            p.hr_prompt = f"{base}, {suffix}" if base else suffix
    if p.hr_cfg is None and factor != 1.0:
        p.hr_cfg = round(p.cfg_scale * factor, 2)
