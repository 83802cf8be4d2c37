"""The built-in always-on "ControlNet" entry: listed among the scripts, and its units attached to a job
before it is queued (`attach`: every check of `units.parse`, against the job's checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from pipeline.jobs.controlnet.units import FIELD, entry_args, parse
from pipeline.jobs.extensions import Extension
from pipeline.models.networks import checkpoint_family
from pipeline.runtime.errors import InvalidRequest

NAME = "ControlNet"
UNIT_COUNT = 3  # the extension's default `control_net_unit_count`


def _script_info_args(img2img: bool) -> list[dict[str, Any]]:
    return [{"label": f"ControlNet Unit {i}", "value": None} for i in range(UNIT_COUNT)]


def register(extensions: Any) -> None:
    """List "ControlNet" among the always-on scripts (its entry is then no unknown script's 422). A loaded
    extension of the same name keeps the name."""
    if NAME.lower() not in extensions.names():
        extensions.register(Extension(NAME, "built-in (pipeline/jobs/controlnet)", {}, _script_info_args))


def attach(p: Any, req: Any, store: Any, models: Any, decode: Callable[[str], Image.Image]) -> None:
    """Parse the request's ControlNet units onto job `p` (`p.controlnet`), or raise the 400 naming the unit
    field. `decode` turns a unit's base64 image into a picture (the server's image codec)."""
    args = entry_args(getattr(req, "alwayson_scripts", None))
    img2img = hasattr(p, "init_images")
    units = parse(args, store, checkpoint_family(models, p.checkpoint), decode, img2img)
    if units is not None and getattr(p, "tiles", None) is not None:
        raise InvalidRequest(
            FIELD,
            "ControlNet units cannot run with tiled sampling (tiled_diffusion or the "
            "Tiled Diffusion entry); send one of them",
        )
    if units is not None and getattr(p, "hr_checkpoint", None):
        hr_family = checkpoint_family(models, p.hr_checkpoint)
        for u in units.items:
            if (
                hr_family is not None
                and u.file.arch().family != hr_family
                and u.spec.hr_option != "Low res only"
            ):
                raise InvalidRequest(
                    u.field("model"),
                    f"{u.file.title} does not fit hr_checkpoint_name's family "
                    f"({hr_family}); use hr_option 'Low res only' or a matching checkpoint",
                )
    for u in units.items if units else []:
        u.seed = (int(p.seed) + int(p.subseed)) & 0xFFFFFFFF  # the extension's NumPy seed (shuffle)
    p.controlnet = units
