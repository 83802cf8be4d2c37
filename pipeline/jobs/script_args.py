"""Reading a selectable script's positional `script_args` (A1111 passes them to the script's `run()` in
order): each reader takes the argument at `index`, checks its type and range, and raises InvalidRequest
naming `script_args[index]`, the argument's name and the expected form. Integral floats count as whole
numbers and 0/1 as booleans, as everywhere in the API; booleans are never numbers."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeline.runtime.errors import InvalidRequest
from upscalers.errors import UnknownUpscaler


def fill_defaults(script: str, args: Sequence[Any], names: Sequence[str],
                  defaults: Sequence[Any]) -> list[Any]:
    """The sent arguments followed by the defaults of the ones left out; more than the script takes: a 400."""
    if len(args) > len(defaults):
        raise InvalidRequest("script_args", f"{script!r} takes {len(defaults)} arguments "
                             f"[{', '.join(names)}], got {len(args)}")
    return list(args) + list(defaults[len(args):])


def _field(index: int) -> str:
    return f"script_args[{index}]"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole(value: Any, index: int, name: str, lo: int, hi: int, unit: str = "") -> int:
    """A whole number from lo to hi."""
    if not _is_number(value) or value != int(value) or not lo <= value <= hi:
        raise InvalidRequest(_field(index), f"{name} must be a whole number{unit} from {lo} to {hi}, "
                             f"got {value!r}")
    return int(value)


def number(value: Any, index: int, name: str, lo: float, hi: float, low_open: bool = False) -> float:
    """A number from lo (excluded when `low_open`) to hi."""
    if not _is_number(value) or not (lo < value if low_open else lo <= value) or not value <= hi:
        bound = f"above {lo} up to {hi}" if low_open else f"from {lo} to {hi}"
        raise InvalidRequest(_field(index), f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def flag(value: Any, index: int, name: str) -> bool:
    """true/false (or 1/0)."""
    if isinstance(value, bool):
        return value
    if _is_number(value) and value in (0, 1):
        return bool(value)
    raise InvalidRequest(_field(index), f"{name} must be true or false, got {value!r}")


def choice(value: Any, index: int, name: str, labels: Sequence[str]) -> int:
    """An index into a dropdown's `labels` (A1111 sends the index)."""
    listing = ", ".join(f"{i} {label}" for i, label in enumerate(labels))
    if not _is_number(value) or value != int(value) or not 0 <= value < len(labels):
        raise InvalidRequest(_field(index), f"{name} must be one of {listing}; got {value!r}")
    return int(value)


def upscaler(value: Any, index: int, name: str, names: Sequence[str], resolve: Callable[[str], str]) -> str:
    """An index into the /sdapi/v1/upscalers list (`names`, in that order) or a name; `resolve(name)` gives
    the canonical name or raises UnknownUpscaler. A string of digits that names no upscaler is an index
    (clients that send every script arg as text)."""
    if isinstance(value, str) and value.strip().isdigit() and value not in names:
        value = int(value)
    if _is_number(value) and value == int(value):
        if not 0 <= value < len(names):
            raise InvalidRequest(_field(index), f"{name} index {value} is out of range: 0..{len(names) - 1} "
                                 f"({', '.join(names)})")
        return names[int(value)]
    if not isinstance(value, str):
        raise InvalidRequest(_field(index), f"{name} must be an index into /sdapi/v1/upscalers or a name, "
                             f"got {value!r}")
    try:
        return resolve(value)
    except UnknownUpscaler as exc:
        raise InvalidRequest(_field(index), str(exc)) from None
