"""sd-webui-controlnet's units over the A1111 API: request parsing (`units.parse`), the per-pass residuals
(`units.for_pass`), preprocessors and hint resizing."""

from pipeline.jobs.controlnet.hints import FROM_A1111
from pipeline.jobs.controlnet.request import attach, register
from pipeline.jobs.controlnet.units import (
    FIELD,
    PassPicture,
    Units,
    detected_maps,
    entry_args,
    for_pass,
    parse,
    postprocess,
    write_infotext,
)

__all__ = [
    "FIELD",
    "FROM_A1111",
    "PassPicture",
    "Units",
    "attach",
    "detected_maps",
    "entry_args",
    "for_pass",
    "parse",
    "postprocess",
    "register",
    "write_infotext",
]
