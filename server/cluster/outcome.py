"""A job's outcome as it travels from a worker replica back to the ingress: its value, or its exception
rebuilt as the same type with the same message and attributes (our typed errors take constructor
arguments that pickle does not replay, so they travel as class + args + attributes), so that
server/errors.py maps it to the same HTTP status and body as in the single process."""
from __future__ import annotations

import pickle
from typing import Any


def pack_error(exc: BaseException) -> tuple[type, tuple[Any, ...], dict[str, Any]]:
    cls: type = type(exc)
    attrs = {k: v for k, v in vars(exc).items() if _picklable(v)}
    if not _picklable(cls):
        cls = RuntimeError
    return cls, tuple(str(a) if not _picklable(a) else a for a in exc.args), attrs


def unpack_error(packed: tuple[type, tuple[Any, ...], dict[str, Any]]) -> BaseException:
    cls, args, attrs = packed
    exc = cls.__new__(cls)
    BaseException.__init__(exc, *args)
    exc.__dict__.update(attrs)
    return exc


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 - anything pickle refuses stays behind
        return False
    return True
