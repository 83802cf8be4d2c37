"""A1111 "infotext": the generation-parameters text stored in images, written and read back.

Layout (A1111 v1.10)::

    <prompt, may span lines>
    Negative prompt: <negative, may span lines>      (only when the negative prompt is non-empty)
    Key: value, Key: value, ...                      (one final line)

`format_infotext` writes it; `parse_infotext` reads it with the semantics of A1111's
`parse_generation_parameters` (what `/sdapi/v1/png-info` returns as `parameters`). Pure Python.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

from pipeline.diffusion.prompts import PromptSyntaxError, parse_prompt_attention

__all__ = ["format_infotext", "parse_infotext", "quote_value", "unquote_value", "prompt_uses_emphasis"]

NEGATIVE_PREFIX = "Negative prompt:"

# One `Key: value` item of the parameter line. A key starts with a word character and goes on with
# word characters, spaces, '-' or '/' (at least two characters in all). A value is either a JSON
# string literal (kept only when it is followed by ',' or the end of the line) or everything up to
# the next comma. Leading whitespace before the key and after the colon is skipped.
_PARAM_ITEM = re.compile(
    r"""
    \s*
    (?P<key> \w [\w\ \-/]+ )
    : \s*
    (?P<value> " (?: \\. | [^\\"] )+ "      # quoted, with backslash escapes
             | [^,]*                        # or plain, up to the next comma
    )
    (?: , | $ )
    """,
    re.VERBOSE,
)
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")


# --------------------------------------------------------------------------------------------------
# writing


def quote_value(value: object) -> object:
    """Return `value` unchanged unless its text has ',', ':' or a newline; then JSON-quote it."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(text, ensure_ascii=False)


def format_infotext(
    prompt: str,
    negative_prompt: str,
    params: Iterable[tuple[str, object]] | Mapping[str, object],
) -> str:
    """Build an infotext in A1111's layout.

    `params` is ordered (a list of pairs or a dict). Pairs whose value is None are left out; a value
    equal to its key is written as the bare key; numbers use `str()` (so `7.0` stays `7.0`) and
    bools read `True`/`False`; values containing ',', ':' or a newline are JSON-quoted.
    """
    items = params.items() if isinstance(params, Mapping) else params
    parts = []
    for key, value in items:
        if value is None:
            continue
        if key == value:
            parts.append(str(key))
        else:
            parts.append(f"{key}: {quote_value(value)}")
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(parts)}".strip()


# --------------------------------------------------------------------------------------------------
# reading


def unquote_value(text: str) -> str:
    """Undo `quote_value` for a string that is a JSON string literal; anything else is returned as is."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def parse_infotext(text: str, *, skip_fields: Iterable[str] = (), backcompat: bool = True) -> dict:
    """Parse an infotext into A1111's `parse_generation_parameters` dict (v1.10 semantics).

    Values read from the text are strings (JSON-quoted ones unquoted); `WxH` values are split into
    `Key-1`/`Key-2`. Keys A1111 fills in when absent get A1111's defaults and types ("1", 0, False,
    "Automatic", ...). The old `First pass size` hires layout and the `Version`-based compatibility
    flags are converted as A1111 does (the flags only with `backcompat`: A1111's option `auto_backcompat`).
    Keys in `skip_fields` are removed at the end.
    """
    res: dict[str, object] = {}

    *lines, last_line = text.strip().split("\n")
    if len(_PARAM_ITEM.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""

    prompt = ""
    negative_prompt = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        if in_negative:
            negative_prompt += ("\n" if negative_prompt else "") + line
        else:
            prompt += ("\n" if prompt else "") + line

    for key, value in _PARAM_ITEM.findall(last_line):
        if not value:
            continue  # A1111 fails on an empty value and skips the key
        if value[0] == '"' and value[-1] == '"':
            value = unquote_value(value)
        size = _IMAGE_SIZE.match(value)
        if size is not None:
            res[f"{key}-1"] = size.group(1)
            res[f"{key}-2"] = size.group(2)
        else:
            res[key] = value

    # A1111 would extract styles from the prompt here ("Styles array"); this server has no styles.
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt

    res.setdefault("Clip skip", "1")  # absent means the default, 1

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"

    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    res.setdefault("Hires sampler", "Use same sampler")
    res.setdefault("Hires schedule type", "Use same scheduler")
    res.setdefault("Hires checkpoint", "Use same checkpoint")
    res.setdefault("Hires prompt", "")
    res.setdefault("Hires negative prompt", "")
    res.setdefault("Mask mode", "Inpaint masked")
    res.setdefault("Masked content", "original")
    res.setdefault("Inpaint area", "Whole picture")
    res.setdefault("Masked area padding", 32)

    _restore_old_hires_fix_params(res)

    res.setdefault("RNG", "GPU")  # absent means the default GPU RNG
    res.setdefault("Schedule type", "Automatic")
    res.setdefault("Schedule max sigma", 0)
    res.setdefault("Schedule min sigma", 0)
    res.setdefault("Schedule rho", 0)
    res.setdefault("VAE Encoder", "Full")
    res.setdefault("VAE Decoder", "Full")
    res.setdefault("FP8 weight", "Disable")
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False

    if "Emphasis" not in res and (prompt_uses_emphasis(prompt) or prompt_uses_emphasis(negative_prompt)):
        res["Emphasis"] = "Original"

    res.setdefault("Refiner switch by sampling steps", False)

    if backcompat:
        _version_backcompat(res)

    for key in skip_fields:
        res.pop(key, None)
    return res


def _restore_old_hires_fix_params(res: dict) -> None:
    """Old infotexts stored `First pass size` (the first pass) with `Size` being the final size.

    Convert them to today's meaning: `Size` is the first pass, `Hires resize` the final size. A
    first-pass size of 0x0 means "derived from the final size", by A1111's old 512x512-area rule.
    """
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    try:
        first_w, first_h = int(first_w), int(first_h)
        width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    except (TypeError, ValueError):
        return  # A1111 raises here; a malformed legacy value is left as written instead
    if first_w == 0 or first_h == 0:
        if width <= 0 or height <= 0:
            return
        scale = math.sqrt(512 * 512 / (width * height))
        first_w = math.ceil(scale * width / 64) * 64
        first_h = math.ceil(scale * height / 64) * 64
    res["Size-1"] = first_w
    res["Size-2"] = first_h
    res["Hires resize-1"] = width
    res["Hires resize-2"] = height


# --- emphasis detection -----------------------------------------------------------------------------

def prompt_uses_emphasis(prompt: str) -> bool:
    """True when some part of the prompt has an attention weight other than 1 (A1111's test)."""
    try:
        runs = parse_prompt_attention(prompt)
    except PromptSyntaxError:  # a weight that is not a number: A1111 fails here; the brackets still count
        return "(" in prompt or "[" in prompt
    return any(w != 1.0 and t != "BREAK" for t, w in runs)


# --- Version-based compatibility flags ---------------------------------------------------------------

_VERSION = re.compile(
    r"""^v?(?P<release>\d+(?:\.\d+)*)
        (?: -(?: (?P<post>\d+) | (?P<pre>(?i:rc|pre|preview|alpha|beta|a|b|c|dev)) \.?(?P<pre_n>\d*) ) )?$""",
    re.VERBOSE,
)
_PRE_RANK = {"dev": -2}


def _parse_version(text: object) -> tuple | None:
    """Order A1111 `Version` strings ('v1.10.1', 'v1.7.0-225-g...', 'v1.6.0-RC-28-g...').

    Like A1111, only the part before the second '-' counts; 'X.Y.Z-N' is a post-release N and
    'X.Y.Z-RC' a pre-release. Anything else (Forge's 'f2.0.1v1.10.1-...') gives None.
    """
    if not isinstance(text, str):
        return None
    m = re.match(r"([^-]+-[^-]+)-.*", text)
    if m:
        text = m.group(1)
    v = _VERSION.match(text.strip())
    if v is None:
        return None
    release = [int(x) for x in v.group("release").split(".")]
    release += [0] * (3 - len(release))
    if v.group("post") is not None:
        stage = (1, int(v.group("post")))
    elif v.group("pre") is not None:
        stage = (_PRE_RANK.get(v.group("pre").lower(), -1), int(v.group("pre_n") or 0))
    else:
        stage = (0, 0)
    return (tuple(release), stage)


_V160 = ((1, 6, 0), (0, 0))
_V170_TSNR = ((1, 7, 0), (1, 225))
_V180 = ((1, 8, 0), (0, 0))


def _version_backcompat(res: dict) -> None:
    """Flags A1111 sets for infotexts written by older versions (option `auto_backcompat`, on)."""
    ver = _parse_version(res.get("Version"))
    if ver is None:
        return
    if ver < _V160 and "[" in str(res.get("Prompt", "")):
        res["Old prompt editing timelines"] = True
    if ver < _V160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if ver < _V170_TSNR:
        res["Downcast alphas_cumprod"] = True
    if ver < _V180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True
