"""Extension hooks, the entry points A1111 documents for hires behaviour.

An extension is a Python file in the extensions directory (or a module named by the `hiresd.extensions`
entry-point group) that defines any of:

    NAME = "my extension"                       # listed by GET /sdapi/v1/scripts (lower-cased)
    def before_hr(p): ...                       # between the passes; may change p.hr_prompt, p.hr_cfg,
                                                # p.hr_sampler, p.denoising_strength, p.hr_second_pass_steps ...
    def process_before_every_sampling(p, **kwargs): ...   # each time a sampler is created (both passes);
                                                # kwargs: pass_no (1 or 2), x (latents), noise

`p` is the job's `pipeline.jobs.processing.Processing`. A hook that raises fails the job with its message.
Extensions run only when enabled for the server (all files in the directory are loaded at start-up).

Each extension is an always-on script of that name: a request's `alwayson_scripts: {"<name>": {"args":
[...]}}` (name case-insensitive) hands its args to the hooks, positionally after `p`, as A1111 calls
`before_hr(p, *args)`; without args a hook is called as `hook(p)`. An entry naming no known script is a
422 listing the known ones. Built-in always-on scripts join the same registry with `register()`; such an entry
may have `aliases` (other titles it answers to, e.g. without Forge's "(SD 1.x, SD 2.x, SDXL)" suffix) and a
`check(args)` that validates its args before the job is queued (raising InvalidRequest, a 400 naming the
script)."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.runtime.errors import InvalidRequest, UnknownScript

log = logging.getLogger("hiresd.extensions")

HOOKS = ("before_hr", "process_before_every_sampling")
ENTRY_POINT_GROUP = "hiresd.extensions"


@dataclass(frozen=True)
class Extension:
    name: str
    source: str
    hooks: dict[str, Callable[..., Any]]
    # /sdapi/v1/script-info `args` of the txt2img (False) or img2img (True) entry, A1111's ScriptArg fields
    args_info: Callable[[bool], list[dict[str, Any]]] | None = None
    aliases: tuple[str, ...] = ()  # other titles (case-insensitive) that name this script in a request
    check: Callable[[list[Any]], None] | None = None  # validates a request's args (InvalidRequest: a 400)
    # listed by /sdapi/v1/scripts and script-info; False for a title accepted only so that a blob carrying it
    # disabled passes (clients read the list to decide what to send)
    listed: bool = True

    def script_info(self, img2img: bool) -> dict[str, Any]:
        """This always-on script's /sdapi/v1/script-info entry for one of the two tabs."""
        args = self.args_info(img2img) if self.args_info is not None else []
        return {"name": self.name.lower(), "is_alwayson": True, "is_img2img": img2img, "args": args}


def _from_module(module: ModuleType, source: str) -> Extension:
    name = str(getattr(module, "NAME", module.__name__.rsplit(".", 1)[-1]))
    hooks = {h: getattr(module, h) for h in HOOKS if callable(getattr(module, h, None))}
    return Extension(name, source, hooks)


class Extensions:
    def __init__(self, extensions: list[Extension] | None = None) -> None:
        self.items: list[Extension] = list(extensions or [])

    @classmethod
    def load(cls, directory: Path | None, use_entry_points: bool = True) -> Extensions:
        found: list[Extension] = []
        if directory is not None and directory.is_dir():
            for path in sorted(directory.glob("*.py")):
                if path.name.startswith("_"):
                    continue
                try:
                    spec = importlib.util.spec_from_file_location(f"hiresd_ext_{path.stem}", path)
                    assert spec and spec.loader
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    found.append(_from_module(module, str(path)))
                except Exception as exc:  # noqa: BLE001 - a broken extension must not stop the server
                    log.error("extension %s not loaded: %s", path, exc)
        if use_entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    found.append(_from_module(ep.load(), f"entry point {ep.name}"))
                except Exception as exc:  # noqa: BLE001
                    log.error("extension entry point %s not loaded: %s", ep.name, exc)
        for ext in found:
            log.info("extension %r loaded from %s (hooks: %s)", ext.name, ext.source, ", ".join(ext.hooks) or "none")
        return cls(found)

    def names(self) -> list[str]:
        return [e.name.lower() for e in self.items]

    def listed(self) -> list[Extension]:
        """The always-on scripts the listing routes show."""
        return [e for e in self.items if e.listed]

    def register(self, extension: Extension) -> None:
        """Add a built-in always-on script; its name must not clash with a loaded one."""
        if extension.name.lower() in self.names():
            raise ValueError(f"an always-on script named {extension.name!r} is already registered")
        self.items.append(extension)

    def script_args(self, alwayson_scripts: dict[str, Any]) -> dict[str, list[Any]]:
        """A request's `alwayson_scripts`, checked: {lower-cased name: args}. Raises UnknownScript for a
        name no script has, InvalidRequest for an entry that is not `{"args": [...]}`."""
        known = self.names()
        by_title = {alias.lower(): ext for ext in self.items for alias in ext.aliases}
        by_title.update((ext.name.lower(), ext) for ext in self.items)
        out: dict[str, list[Any]] = {}
        for name, entry in alwayson_scripts.items():
            ext = by_title.get(str(name).lower())
            if ext is None:
                raise UnknownScript(name, known)
            args = entry.get("args", []) if isinstance(entry, dict) else None
            if not isinstance(args, list):
                raise InvalidRequest(f"alwayson_scripts.{name}",
                                     'expected {"args": [...]} (a list of arguments)')
            if ext.check is not None:
                ext.check(list(args))
            out[ext.name.lower()] = list(args)
        return out

    def call(self, hook: str, p: Any, **kwargs: Any) -> None:
        args_by_script: dict[str, list[Any]] = getattr(p, "script_args", None) or {}
        for ext in self.items:
            fn = ext.hooks.get(hook)
            if fn is not None:
                fn(p, *args_by_script.get(ext.name.lower(), ()), **kwargs)
