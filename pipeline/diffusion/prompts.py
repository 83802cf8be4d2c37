"""A1111 v1.10 prompt syntax, as pure text processing: emphasis weights, BREAK, prompt editing, alternation.

Two independent layers, applied in this order (as A1111 does):

1. Scheduling (`get_prompt_schedules`): `[from:to:when]`, `[to:when]`, `[from::when]` and `[a|b|c]` are
   resolved into the plain texts active over ranges of sampling steps. Emphasis brackets are left in the
   text untouched.
2. Emphasis (`parse_prompt_attention`): each scheduled text is split into (text, weight) runs; `BREAK`
   becomes a marker that forces a new 75-token chunk.

Composable prompts (`a AND b:0.5`) are parsed by `split_composable`; combining them is the sampler's CFG
business. Nothing here imports torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pipeline.runtime.errors import InvalidRequest

__all__ = [
    "BREAK",
    "PromptSyntaxError",
    "get_prompt_schedules",
    "parse_prompt_attention",
    "schedule_index_at_step",
    "split_composable",
    "text_at_step",
]

BREAK: tuple[str, float] = ("BREAK", -1.0)
"""The marker `parse_prompt_attention` emits for the keyword BREAK: close the current chunk, start a new
one."""

_ROUND_UP = 1.1
_SQUARE_DOWN = 1 / 1.1


class PromptSyntaxError(InvalidRequest):
    """A prompt A1111 would fail on with a server error (e.g. an emphasis weight that is not a number)."""

    def __init__(self, message: str):
        super().__init__("prompt", message)


# ---------------------------------------------------------------------------------------------------------
# Emphasis
# ---------------------------------------------------------------------------------------------------------

# One lexeme per match, tried in this order. The escapes come first, then a lone backslash (which A1111
# drops), brackets, a ":weight)" closer, closers, runs of ordinary text and a lone colon.
_ATTENTION_LEXEMES = re.compile(
    r"""
      (?P<escape>\\[()\[\]\\])
    | (?P<backslash>\\)
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (text, weight) runs with A1111's emphasis rules.

    `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:1.3)` multiplies by 1.3, nesting multiplies. `\\(`,
    `\\)`, `\\[`, `\\]`, `\\\\` are literal characters; any other backslash is dropped. A closer without an
    opener is literal text; an opener never closed applies its 1.1 (or 1/1.1) to everything after it. The
    uppercase word BREAK (whole word) yields `BREAK` == ("BREAK", -1.0); inside brackets its weight is scaled
    too, and A1111 then treats it as the ordinary word "BREAK". Adjacent runs of equal weight are merged; an
    empty prompt gives [("", 1.0)].
    """
    runs: list[list] = []  # [text, weight]; mutable while brackets close
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _ATTENTION_LEXEMES.finditer(text):
        lexeme = m.group(0)
        if m.group("escape") is not None or m.group("backslash") is not None:
            runs.append([lexeme[1:], 1.0])
        elif m.group("open") == "(":
            open_round.append(len(runs))
        elif m.group("open") == "[":
            open_square.append(len(runs))
        elif m.group("weight") is not None and open_round:
            try:
                factor = float(m.group("weight"))
            except ValueError:
                raise PromptSyntaxError(f"emphasis weight {m.group('weight')!r} is not a number") from None
            scale_from(open_round.pop(), factor)
        elif lexeme == ")" and open_round:
            scale_from(open_round.pop(), _ROUND_UP)
        elif lexeme == "]" and open_square:
            scale_from(open_square.pop(), _SQUARE_DOWN)
        else:
            # plain text (or an unmatched closer / ":w)" / ":"), possibly containing BREAK keywords
            for i, piece in enumerate(_BREAK_SPLIT.split(lexeme)):
                if i:
                    runs.append(list(BREAK))
                runs.append([piece, 1.0])

    for start in open_round:
        scale_from(start, _ROUND_UP)
    for start in open_square:
        scale_from(start, _SQUARE_DOWN)

    if not runs:
        return [("", 1.0)]

    merged: list[list] = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w in merged]


# ---------------------------------------------------------------------------------------------------------
# Scheduling: a small parser for A1111's prompt-editing grammar
#
#   top level : any mix of constructs, plain text and stray "[ ] ( ) :" characters (a "|" here is an error)
#   nested    : constructs and plain text only
#   construct : "(" nested ")" | "(" nested ":" nested ")" | "[" nested "]"        emphasis, kept literally
#             | "[" [nested ":"] nested ":" ws? NUMBER ws? "]"                    prompt editing
#             | "[" nested ("|" nested?)+ "]"                                     alternation
#   plain     : characters other than \ [ ] ( ) : |, or a backslash followed by any character but a newline
#
# Where both readings are possible at the top level, a construct wins over stray characters (A1111's Earley
# parser mostly agrees; see `get_prompt_schedules`). A prompt that does not parse at all is used verbatim at
# every step (A1111 does the same).
# ---------------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
_PLAIN_CHAR_EXCLUDED = set("\\[]():|")


class _ParseError(Exception):
    pass


@dataclass
class _Edit:
    before: list | None  # None: the `[to:when]` form
    after: list
    when_text: str
    when: int = 0  # resolved per schedule


@dataclass
class _Alternate:
    options: list[list | None]


class _ScheduleParser:
    """Recursive descent over one prompt; produces a list of str / _Edit / _Alternate nodes."""

    def __init__(self, text: str):
        self.s = text

    def parse(self) -> list:
        out: list = []
        pos = 0
        s = self.s
        while pos < len(s):
            c = s[pos]
            if c in "([":
                try:
                    node, end = self._construct(pos)
                except _ParseError:
                    out.append(c)  # stray bracket, literal
                    pos += 1
                else:
                    out.extend(node)
                    pos = end
            elif c in ")]:":
                out.append(c)
                pos += 1
            elif c == "|":
                raise _ParseError
            else:
                pos = self._plain(pos, out)
        return out

    def _plain(self, pos: int, out: list) -> int:
        s = self.s
        start = pos
        while pos < len(s):
            c = s[pos]
            if c == "\\":
                if pos + 1 >= len(s) or s[pos + 1] == "\n":
                    break
                pos += 2
            elif c in _PLAIN_CHAR_EXCLUDED:
                break
            else:
                pos += 1
        if pos == start:  # a backslash that cannot be escaped: no derivation exists
            raise _ParseError
        out.append(s[start:pos])
        return pos

    def _nested(self, pos: int) -> tuple[list, int]:
        out: list = []
        s = self.s
        while pos < len(s):
            c = s[pos]
            if c in "([":
                node, pos = self._construct(pos)
                out.extend(node)
            elif c in ")]:|":
                break
            else:
                pos = self._plain(pos, out)
        return out, pos

    def _expect(self, pos: int, char: str) -> int:
        if pos >= len(self.s) or self.s[pos] != char:
            raise _ParseError
        return pos + 1

    def _construct(self, pos: int) -> tuple[list, int]:
        s = self.s
        if s[pos] == "(":
            first, p = self._nested(pos + 1)
            if p < len(s) and s[p] == ":":
                second, p = self._nested(p + 1)
                p = self._expect(p, ")")
                return ["(", *first, ":", *second, ")"], p
            p = self._expect(p, ")")
            return ["(", *first, ")"], p

        first, p = self._nested(pos + 1)
        if p >= len(s):
            raise _ParseError
        c = s[p]
        if c == "]":
            return ["[", *first, "]"], p + 1
        if c == "|":
            options: list[list | None] = [first]
            while p < len(s) and s[p] == "|":
                opt, p = self._nested(p + 1)
                options.append(opt or None)
            p = self._expect(p, "]")
            return [_Alternate(options)], p
        if c != ":":
            raise _ParseError
        # "[a:NUMBER]" or "[a:b:NUMBER]"
        m = _NUMBER.match(s, p + 1)
        if m:
            return [_Edit(None, first, m.group(1))], m.end()
        second, p = self._nested(p + 1)
        if p >= len(s) or s[p] != ":":
            raise _ParseError
        m = _NUMBER.match(s, p + 1)
        if not m:
            raise _ParseError
        return [_Edit(first, second, m.group(1))], m.end()


def _walk(nodes: list):
    for node in nodes:
        if isinstance(node, _Edit):
            yield node
            if node.before:
                yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for opt in node.options:
                if opt:
                    yield from _walk(opt)


def _render(nodes: list, step: int) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Edit):
            chosen = (node.before or []) if step <= node.when else node.after
            parts.append(_render(chosen, step))
        else:
            opt = node.options[(step - 1) % len(node.options)]
            parts.append(_render(opt or [], step))
    return "".join(parts)


def _schedule_one(prompt: str, steps: int, int_offset: int, flt_offset: float, old: bool = False
                  ) -> list[tuple[int, str]]:
    try:
        nodes = _ScheduleParser(prompt).parse()
    except _ParseError:
        return [(steps, prompt)]

    boundaries = {steps}
    for node in _walk(nodes):
        if isinstance(node, _Edit):
            v = float(node.when_text)
            if old:  # A1111's use_old_scheduling: below 1 a fraction, else absolute, whatever is written
                v = v * steps if v < 1 else v
            elif "." in node.when_text:
                v = (v - flt_offset) * steps
            else:
                v = v - int_offset
            node.when = min(steps, int(v)) if math.isfinite(v) else (steps if v > 0 else 0)
            if node.when >= 1:
                boundaries.add(node.when)
        else:
            boundaries.update(range(1, steps + 1))
    return [(t, _render(nodes, t)) for t in sorted(boundaries)]


def get_prompt_schedules(
    prompts: list[str], steps: int, hires_steps: int | None = None, old: bool = False
) -> list[list[tuple[int, str]]]:
    """For each prompt, the texts it resolves to: a list of (end_at_step, text), end_at_step ascending.

    `steps` is the number of denoiser steps of the first pass (A1111 counts denoiser calls, see
    `text_at_step`). `[from:to:when]`: `when` written with a "." is a fraction of the pass (0.5 of 20 -> 10),
    without one an absolute step (3 -> 3); the value is truncated to an int and capped at the pass length.
    `[to:when]` is empty until then, `[from::when]` is empty after. `[a|b|c]` changes every step. Nesting
    works.

    For the hires pass give `steps` = the first pass's step count and `hires_steps` = the second pass's:
    absolute steps then count on from the first pass (`[a:b:25]` after a 20-step first pass switches at hires
    step 5) and a fraction is of the whole job counted in passes (1.5 is half-way through the hires pass; 0.5
    has already switched). A prompt that does not parse (e.g. a "|" outside square brackets, a trailing
    backslash) is used verbatim.

    `old` (A1111's `use_old_scheduling`, "Old prompt editing timelines"): a `when` below 1 is a fraction and
    anything else an absolute step, and the hires pass schedules over the first pass's steps from 0.

    Known difference: with unmatched brackets or colons right after an editing construct (`[a:b:3]::`),
    A1111's Earley parser sometimes resolves the ambiguity by leaving the construct literal; we always
    apply it. Balanced prompts behave identically.
    """
    if hires_steps is None or old:
        int_offset, flt_offset, n = 0, 0.0, steps
    else:
        int_offset, flt_offset, n = steps, 1.0, hires_steps
    memo: dict[str, list[tuple[int, str]]] = {}
    for prompt in prompts:
        if prompt not in memo:
            memo[prompt] = _schedule_one(prompt, n, int_offset, flt_offset, old)
    return [list(memo[p]) for p in prompts]


def schedule_index_at_step(schedule: list[tuple[int, object]], step: int) -> int:
    """Index of the entry active at denoiser step `step` (0-based count of denoiser calls made so far).

    A1111's rule: the first entry with `step <= end_at_step`; past the last entry it falls back to the FIRST
    entry (a quirk kept for fidelity; it only happens when a sampler calls the model more often than planned).
    Note that with this rule the first entry covers steps 0..end_at_step, i.e. end_at_step + 1 calls.
    """
    for index, (end_at_step, _) in enumerate(schedule):
        if step <= end_at_step:
            return index
    return 0


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text active at denoiser step `step` (0-based), by A1111's rule (see `schedule_index_at_step`)."""
    return schedule[schedule_index_at_step(schedule, step)][1]


# ---------------------------------------------------------------------------------------------------------
# Composable diffusion ("AND")
# ---------------------------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_composable(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt on the uppercase word AND into (subprompt, weight); `a cat AND a dog:0.5`.

    Each subprompt is scheduled and encoded on its own; the sampler adds `weight * cfg * (cond_i - uncond)`
    for each. A trailing `:number` is the weight (default 1.0) and is removed from the text.
    """
    out: list[tuple[str, float]] = []
    for sub in _AND.split(prompt):
        m = _SUBPROMPT_WEIGHT.search(sub)
        if m is None:
            out.append((sub, 1.0))
            continue
        text, weight = m.groups()
        out.append((text, float(weight) if weight is not None else 1.0))
    return out
