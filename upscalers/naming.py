"""Forgiving name matching: exact first, then ignoring case, spaces, `_` and `-`."""

from __future__ import annotations

import re

from .errors import AmbiguousUpscaler, UnknownUpscaler

_IGNORED = re.compile(r"[\s_\-]+")


def loose_key(name: str) -> str:
    """The key two names share when they differ only in case, spaces, underscores or hyphens."""
    return _IGNORED.sub("", name).casefold()


def match_name(name: str, valid: list[str]) -> str:
    """The member of `valid` that `name` means.

    An exact match wins; otherwise a single loose match (`SwinIR_4x` finds `SwinIR 4x`).
    Raises AmbiguousUpscaler when several names match loosely and UnknownUpscaler when none does.
    """
    if name in valid:
        return name
    key = loose_key(name)
    found = [v for v in valid if loose_key(v) == key]
    if len(found) == 1:
        return found[0]
    if found:
        raise AmbiguousUpscaler(name, found, valid)
    raise UnknownUpscaler(name, valid)
