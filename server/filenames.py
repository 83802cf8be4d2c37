"""A1111 v1.10's file-name patterns (`modules/images.py` `FilenameGenerator`, `sanitize_filename_part`):
what options `samples_filename_pattern` and `directories_filename_pattern` (and grids with
`grid_extended_filename`) turn into.

A pattern is text with `[token]` and `[token<arg><arg>...]` parts. A known token is replaced by its value; an
unknown token, or one whose value is missing (`[user]` through the API, a failing argument), stays as
written (`[name]`, without its arguments). A few tokens drop themselves and the text before them when they
say nothing (`[batch_number]` for a batch of one, `[seed_last]`, `[generation_number]` for a job of one
image, `[denoising]` without a strength). Token names are case-insensitive.

Tokens: seed, seed_first, seed_last, steps, cfg, width, height, styles, sampler, sampler_scheduler,
scheduler, model_hash, model_name, date, datetime (`[datetime<%Y%m%d><Europe/Berlin>]`), job_timestamp,
prompt_hash / negative_prompt_hash / full_prompt_hash (`<length>`, default 8), prompt, prompt_no_styles,
prompt_spaces, prompt_words (option `directories_max_prompt_words`), batch_number, batch_size,
generation_number, hasprompt (`[hasprompt<cat|nocat><dog>]`), clip_skip, denoising, user, vae_filename,
none, image_hash (`<length>`, default the whole sha256), basename."""
from __future__ import annotations

import datetime as _dt
import hashlib
import re
import string
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

# A1111's defaults (without --unix-filenames-sanitization / --filenames-max-length)
INVALID_CHARS = '#<>:"/\\|?*\n\r\t'
MAX_PART_LENGTH = 128
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"

_NONLETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")
_PART = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)", re.DOTALL)
_ARG = re.compile(r"(.*)<([^>]*)>$", re.DOTALL)
_TRANSLATE = {ord(c): "_" for c in INVALID_CHARS}


class _Skip:
    """A token's value that drops the token and the text before it."""


SKIP = _Skip()


def sanitize_part(text: str | None, replace_spaces: bool = True) -> str | None:
    """A1111's `sanitize_filename_part`: spaces to `_` (when asked), characters Windows forbids (and `#`)
    to `_`, leading spaces off, at most 128 characters, then trailing spaces and dots off."""
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate(_TRANSLATE).lstrip(" ")[:MAX_PART_LENGTH]
    return text.rstrip(" .")


@dataclass
class JobFacts:
    """What the tokens read from a finished generation job (its response `info`, options and request)."""
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    scheduler: str | None = None  # the infotext's `Schedule type` label (Automatic resolved)
    styles: list[str] = field(default_factory=list)
    style_prompts: list[str] = field(default_factory=list)  # the prompt texts of `styles`
    model_hash: str | None = None
    model_name: str | None = None
    vae_name: str | None = None  # the loaded VAE's file name, None without one
    job_timestamp: str = ""
    prompt: str = ""  # the request's prompt and negative prompt (before styles)
    negative_prompt: str = ""
    all_seeds: list[int] = field(default_factory=list)
    all_prompts: list[str] = field(default_factory=list)  # styled, one per image
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    denoising_strength: float | None = None
    max_prompt_words: int = 8

    @classmethod
    def from_info(cls, info: dict[str, Any], opts: dict[str, Any], n_iter: int = 1,
                  style_prompts: list[str] | None = None, scheduler: str | None = None) -> JobFacts:
        cfg = info.get("cfg_scale")
        return cls(
            steps=info.get("steps"), cfg_scale=None if cfg is None else float(cfg),
            sampler=info.get("sampler_name"), scheduler=scheduler, styles=list(info.get("styles") or []),
            style_prompts=list(style_prompts or []), model_hash=info.get("sd_model_hash"),
            model_name=info.get("sd_model_name"), vae_name=info.get("sd_vae_name"),
            job_timestamp=str(info.get("job_timestamp") or ""), prompt=str(info.get("prompt") or ""),
            negative_prompt=str(info.get("negative_prompt") or ""),
            all_seeds=list(info.get("all_seeds") or []),
            all_prompts=[str(x) for x in info.get("all_prompts") or []],
            batch_size=max(1, int(info.get("batch_size") or 1)), n_iter=max(1, int(n_iter or 1)),
            clip_skip=int(opts.get("CLIP_stop_at_last_layers", 1) or 1),
            denoising_strength=info.get("denoising_strength"),
            max_prompt_words=int(opts.get("directories_max_prompt_words", 8)))


class FilenameGenerator:
    """The tokens of one saved image: `seed` and `prompt` are the image's own (its styled prompt), `index`
    its position in the job (iteration * batch_size + position in the batch), `basename` the file-name
    prefix of the save (`grid` for grids, else empty)."""

    def __init__(self, job: JobFacts, seed: int | None, prompt: str | None, image: Image.Image | None,
                 index: int = 0, basename: str = "",
                 now: Callable[[], _dt.datetime] = _dt.datetime.now) -> None:
        self.job = job
        self.seed = seed
        self.prompt = prompt
        self.image = image
        self.index = index
        self.basename = basename
        self.now = now

    @classmethod
    def for_image(cls, job: JobFacts, index: int, image: Image.Image | None, basename: str = "",
                  seed: int | None = None, prompt: str | None = None) -> FilenameGenerator:
        """The generator of the job's image `index` (its seed and prompt unless given)."""
        if seed is None and index < len(job.all_seeds):
            seed = job.all_seeds[index]
        if prompt is None and index < len(job.all_prompts):
            prompt = job.all_prompts[index]
        return cls(job, seed, prompt, image, index=index, basename=basename)

    # -- tokens ---------------------------------------------------------------------------------------
    def _seed_first(self) -> Any:
        return self.seed if self.job.batch_size == 1 else self.job.all_seeds[0]

    def _seed_last(self) -> Any:
        return SKIP if self.job.batch_size == 1 else self.job.all_seeds[-1]

    def _styles(self) -> str | None:
        names = [s for s in self.job.styles if s != "None"]
        return sanitize_part(", ".join(names) or "None", replace_spaces=False)

    def _scheduler(self, with_sampler: bool) -> Any:
        if self.job.scheduler is None or self.job.sampler is None:
            return SKIP
        label = self.job.scheduler.capitalize()
        return sanitize_part(f"{self.job.sampler} {label}" if with_sampler else label, replace_spaces=False)

    def _datetime(self, *args: str) -> str | None:
        fmt = args[0] if args and args[0] != "" else DEFAULT_TIME_FORMAT
        tz: _dt.tzinfo | None = None
        if len(args) > 1:
            try:
                tz = zoneinfo.ZoneInfo(args[1])
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                tz = None  # unknown zone: local time, as A1111
        moment = self.now().astimezone(tz)
        try:
            text = moment.strftime(fmt)
        except (ValueError, TypeError):
            text = moment.strftime(DEFAULT_TIME_FORMAT)
        return sanitize_part(text, replace_spaces=False)

    def _string_hash(self, text: str, *args: str) -> str:
        length = int(args[0]) if args and args[0] != "" else 8
        return hashlib.sha256(text.encode()).hexdigest()[0:length]

    def _image_hash(self, *args: str) -> str:
        length = int(args[0]) if args and args[0] != "" else None
        assert self.image is not None
        return hashlib.sha256(self.image.tobytes()).hexdigest()[0:length]

    def _prompt_no_styles(self) -> str | None:
        if self.prompt is None:
            return None
        text = self.prompt
        for style in self.job.style_prompts:
            if not style:
                continue
            for part in style.split("{prompt}"):
                text = text.replace(part, "").replace(", ,", ",").strip().strip(",")
            text = text.replace(style, "").strip().strip(",").strip()
        return sanitize_part(text, replace_spaces=False)

    def _prompt_words(self) -> str | None:
        words = [w for w in _NONLETTERS.split(self.prompt or "") if w] or ["empty"]
        return sanitize_part(" ".join(words[0:self.job.max_prompt_words]), replace_spaces=False)

    def _hasprompt(self, *args: str) -> str | None:
        if self.prompt is None:
            return None
        lower = self.prompt.lower()
        out = ""
        for arg in args:
            if arg == "":
                continue
            expected, _, default = arg.partition("|")
            expected = expected.lower()
            if expected in lower:
                out += expected
            else:
                out += default.split("|", 1)[0]
        return sanitize_part(out)

    def _vae_filename(self) -> str:
        if not self.job.vae_name:
            return "NoneType"  # A1111: no VAE file loaded
        parts = self.job.vae_name.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]

    def _batch_number(self) -> Any:
        bs = self.job.batch_size
        return SKIP if bs == 1 else self.index % bs + 1

    def _generation_number(self) -> Any:
        return SKIP if self.job.n_iter == 1 and self.job.batch_size == 1 else self.index + 1

    def _denoising(self) -> Any:
        return self.job.denoising_strength if self.job.denoising_strength else SKIP

    def _value(self, name: str, args: list[str]) -> Any:
        job = self.job
        simple: dict[str, Callable[[], Any]] = {
            "basename": lambda: self.basename or "img",
            "seed": lambda: self.seed if self.seed is not None else "",
            "seed_first": self._seed_first,
            "seed_last": self._seed_last,
            "steps": lambda: job.steps,
            "cfg": lambda: job.cfg_scale,
            "width": lambda: self.image.width if self.image is not None else None,
            "height": lambda: self.image.height if self.image is not None else None,
            "styles": self._styles,
            "sampler": lambda: sanitize_part(job.sampler, replace_spaces=False),
            "sampler_scheduler": lambda: self._scheduler(True),
            "scheduler": lambda: self._scheduler(False),
            "model_hash": lambda: job.model_hash,
            "model_name": lambda: sanitize_part(job.model_name, replace_spaces=False),
            "date": lambda: self.now().strftime("%Y-%m-%d"),
            "job_timestamp": lambda: job.job_timestamp,
            "prompt": lambda: sanitize_part(self.prompt),
            "prompt_no_styles": self._prompt_no_styles,
            "prompt_spaces": lambda: sanitize_part(self.prompt, replace_spaces=False),
            "prompt_words": self._prompt_words,
            "batch_number": self._batch_number,
            "batch_size": lambda: job.batch_size,
            "generation_number": self._generation_number,
            "clip_skip": lambda: job.clip_skip,
            "denoising": self._denoising,
            "user": lambda: None,  # A1111's API runs jobs without a user: the token stays as written
            "vae_filename": self._vae_filename,
            "none": lambda: "",
        }
        with_args: dict[str, Callable[..., Any]] = {
            "datetime": self._datetime,
            "prompt_hash": lambda *a: self._string_hash(self.prompt or "", *a),
            "negative_prompt_hash": lambda *a: self._string_hash(job.negative_prompt, *a),
            "full_prompt_hash": lambda *a: self._string_hash(f"{job.prompt} {job.negative_prompt}", *a),
            "hasprompt": self._hasprompt,
            "image_hash": self._image_hash,
        }
        if name in with_args:
            return with_args[name](*args)
        if name in simple:
            if args:  # A1111 calls the token with its arguments: a token without any fails, stays as written
                return None
            return simple[name]()
        return None

    # -- the pattern ----------------------------------------------------------------------------------
    def apply(self, pattern: str) -> str:
        """`pattern` with its tokens replaced, as A1111's `FilenameGenerator.apply`."""
        out = []
        for m in _PART.finditer(pattern):
            text, token = m.group(1), m.group(2)
            if token is None:
                out.append(text)
                continue
            args: list[str] = []
            while (a := _ARG.match(token)) is not None:
                token = a.group(1)
                args.insert(0, a.group(2))
            try:
                value = self._value(token.lower(), args)
            except Exception:  # noqa: BLE001 - A1111 reports and keeps the token as written
                value = None
            if isinstance(value, _Skip):
                continue
            out.append(text + (f"[{token}]" if value is None else str(value)))
        return "".join(out)
