"""A1111 v1.10's built-in always-on scripts, as payloads copied from its UI carry them in `alwayson_scripts`:

- Refiner (enable false, checkpoint "", switch_at 0.8), Seed (seed -1, extra false, subseed -1,
  subseed_strength 0, resize_from_w 0, resize_from_h 0) and Sampler (steps 20, sampler_name "DPM++ 2M",
  scheduler "Automatic"): UI-only; their args are checked, then ignored: the payload's own fields count.
- Comments (no args): `# ...` comments are stripped from the prompts while the option
  `enable_prompt_comments` is on (A1111's default), with or without the entry.
- Extra options: one value per name of the option `extra_options_txt2img` / `extra_options_img2img`; each
  becomes that option's `override_settings` entry unless the payload has one.
- Soft Inpainting (img2img; enabled false, schedule bias 1, preservation strength 0.5, transition contrast
  boost 4, mask influence 0, difference threshold 0.5, difference contrast 2): implemented
  (diffusion/soft_inpainting.py) when enabled and the job has a mask.

Hypertile is registered by the speed work. Each entry is listed by /sdapi/v1/scripts and /sdapi/v1/script-info
(A1111 lists Soft Inpainting for img2img only; in txt2img an enabled entry is a 400)."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pipeline.diffusion.soft_inpainting import SoftInpainting
from pipeline.jobs.extensions import Extension
from pipeline.runtime.errors import InvalidRequest

REFINER, SEED, SAMPLER, COMMENTS, EXTRA_OPTIONS, SOFT = (
    "Refiner", "Seed", "Sampler", "Comments", "Extra options", "Soft Inpainting")
SOURCE = "built-in (pipeline/jobs/builtin_scripts.py)"

# (label, default, check) per argument; check(value, field) -> value
Arg = tuple[str, Any, Callable[[Any, str], Any]]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flag(v: Any, field: str) -> bool:
    if isinstance(v, bool) or (_is_number(v) and v in (0, 1)):
        return bool(v)
    raise InvalidRequest(field, f"must be true or false, got {v!r}")


def _whole(lo: int | None, hi: int | None) -> Callable[[Any, str], int]:
    def check(v: Any, field: str) -> int:
        if not _is_number(v) or v != int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f" from {lo} to {hi}" if lo is not None and hi is not None else ""
            raise InvalidRequest(field, f"must be a whole number{bounds}, got {v!r}")
        return int(v)
    return check


def _number(lo: float, hi: float) -> Callable[[Any, str], float]:
    def check(v: Any, field: str) -> float:
        if not _is_number(v) or not lo <= v <= hi:
            raise InvalidRequest(field, f"must be a number from {lo:g} to {hi:g}, got {v!r}")
        return float(v)
    return check


def _text(v: Any, field: str) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise InvalidRequest(field, f"must be a string, got {v!r}")
    return v


ARGS: dict[str, list[Arg]] = {
    REFINER: [("Refiner", False, _flag), ("Checkpoint", "", _text), ("Switch at", 0.8, _number(0.01, 1.0))],
    SEED: [("Seed", -1, _whole(None, None)), ("Extra", False, _flag),
           ("Variation seed", -1, _whole(None, None)),
           ("Variation strength", 0.0, _number(0.0, 1.0)), ("Resize seed from width", 0, _whole(0, 2048)),
           ("Resize seed from height", 0, _whole(0, 2048))],
    SAMPLER: [("Sampling steps", 20, _whole(1, 150)), ("Sampling method", "DPM++ 2M", _text),
              ("Schedule type", "Automatic", _text)],
    COMMENTS: [],
    SOFT: [("Soft inpainting", False, _flag), ("Schedule bias", 1.0, _number(0.0, 8.0)),
           ("Preservation strength", 0.5, _number(0.0, 8.0)),
           ("Transition contrast boost", 4.0, _number(1.0, 32.0)), ("Mask influence", 0.0, _number(0.0, 1.0)),
           ("Difference threshold", 0.5, _number(0.0, 8.0)), ("Difference contrast", 2.0, _number(0.0, 8.0))],
}


def _info(title: str) -> Callable[[bool], list[dict[str, Any]]]:
    def args_info(img2img: bool) -> list[dict[str, Any]]:
        return [{"label": label, "value": default} for label, default, _ in ARGS[title]]
    return args_info


def _extra_options_info(img2img: bool) -> list[dict[str, Any]]:
    return []  # one argument per name of the option extra_options_txt2img / _img2img (none by default)


def register(extensions: Any) -> None:
    """List the built-in always-on scripts (a loaded extension of the same name keeps the name). None has
    hooks: their args are read while the job is prepared (`read_args`, `extra_options_overrides`)."""
    for title in (REFINER, SEED, SAMPLER, COMMENTS, EXTRA_OPTIONS, SOFT):
        if title.lower() not in extensions.names():
            info = _extra_options_info if title == EXTRA_OPTIONS else _info(title)
            extensions.register(Extension(title, SOURCE, {}, info))


def _entry(alwayson: dict[str, Any] | None, title: str) -> list[Any] | None:
    entry = next((v for k, v in (alwayson or {}).items() if str(k).lower() == title.lower()), None)
    if entry is None:
        return None
    args = entry.get("args", []) if isinstance(entry, dict) else None
    if not isinstance(args, list):
        raise InvalidRequest(f"alwayson_scripts.{title}", 'expected {"args": [...]} (a list of arguments)')
    return args


def _checked(alwayson: dict[str, Any] | None, title: str) -> list[Any] | None:
    """The entry's args with A1111's defaults for those left out, each checked; None without an entry."""
    raw = _entry(alwayson, title)
    if raw is None:
        return None
    spec = ARGS[title]
    if len(raw) > len(spec):
        raise InvalidRequest(f"alwayson_scripts.{title}.args", f"{title!r} takes {len(spec)} arguments "
                             f"[{', '.join(label for label, _, _ in spec)}], got {len(raw)}")
    values = list(raw) + [default for _, default, _ in spec[len(raw):]]
    return [check(v, f"alwayson_scripts.{title}.args[{i}] ({spec[i][0]})")
            for i, (v, (_, _, check)) in enumerate(zip(values, spec, strict=True))]


def read_args(req: Any, img2img: bool) -> SoftInpainting | None:
    """Check the built-in entries of a request; returns the Soft Inpainting settings when it is enabled
    (img2img), else None. Refiner, Seed, Sampler and Comments are checked and change nothing."""
    alwayson = getattr(req, "alwayson_scripts", None)
    for title in (REFINER, SEED, SAMPLER, COMMENTS):
        _checked(alwayson, title)
    soft = _checked(alwayson, SOFT)
    if soft is None or not soft[0]:
        return None
    if not img2img:
        raise InvalidRequest(f"alwayson_scripts.{SOFT}", "Soft Inpainting is an img2img script (A1111 "
                             "offers it in img2img only); send it disabled or leave it out")
    return SoftInpainting(*soft[1:])


def extra_options_overrides(alwayson: dict[str, Any] | None, options: dict[str, Any], img2img: bool,
                            override_settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """A1111's "Extra options" entry: its values, in the order of the option `extra_options_img2img` /
    `extra_options_txt2img` (the names it shows), become `override_settings` entries unless the payload
    has them already. Returns the request's override_settings with them added (unchanged without an entry)."""
    raw = _entry(alwayson, EXTRA_OPTIONS)
    if not raw:
        return override_settings
    names = options.get("extra_options_img2img" if img2img else "extra_options_txt2img") or []
    if len(raw) > len(names):
        key = "extra_options_img2img" if img2img else "extra_options_txt2img"
        raise InvalidRequest(f"alwayson_scripts.{EXTRA_OPTIONS}.args", f"{len(raw)} values for the "
                             f"{len(names)} options the option {key} names ({names}); set {key} to the "
                             "options these values are for")
    out = dict(override_settings or {})
    for name, value in zip(names, raw, strict=False):
        out.setdefault(str(name), value)
    return out


_WHOLE_LINE = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_REST_OF_LINE = re.compile(r"#[^\n]*(\n|$)")


def strip_comments(text: str) -> str:
    """A1111's prompt comments: a line starting with `#` goes (leaving its line break), then everything from
    a `#` to the end of its line."""
    return _REST_OF_LINE.sub("\n", _WHOLE_LINE.sub("\n", text))


def strip_prompt_comments(p: Any) -> None:
    """The Comments script on job `p` (after styles): its prompts without comments, while the option
    `enable_prompt_comments` is on (A1111's default)."""
    if not p.options.get("enable_prompt_comments", True):
        return
    p.prompt, p.negative_prompt = strip_comments(p.prompt), strip_comments(p.negative_prompt)
    if p.hr_prompt:
        p.hr_prompt = strip_comments(p.hr_prompt)
    if p.hr_negative_prompt:
        p.hr_negative_prompt = strip_comments(p.hr_negative_prompt)
