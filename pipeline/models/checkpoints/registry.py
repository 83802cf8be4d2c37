"""Checkpoint discovery, naming and lookup, following A1111's rules.

Naming (A1111 `CheckpointInfo`): `name` is the path relative to `<models>/Stable-diffusion`, with
its extension and "/" separators ("sub/model.safetensors"); `model_name` is `name` without the
extension and with "/" replaced by "_" ("sub_model"); `title` is "name [shorthash]" once the sha256 is
known and just `name` before, exactly as A1111 shows titles before a hash is computed.

Hashing policy: discovery and `list()` never read a file's content (only `stat`): hashes come from the
JSON cache when its (path, mtime, size) still match. Missing hashes are computed (1) by
`start_background_hashing()`, a daemon thread the server starts after start-up that hashes the unhashed
checkpoints one at a time, (2) when a checkpoint is loaded, or (3) on an explicit `ensure_hash()`. So
`/sd-models` answers at once and shows `hash`/`sha256` null for a file until its hash is known, as
A1111 does; a client holding the hash-less title still finds the checkpoint (see `find`).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.models.checkpoints.hashing import FileStamp, HashCache
from pipeline.runtime.errors import UnknownName
from upscalers.folders import always, model_walk

log = logging.getLogger(__name__)

Kind = Literal["safetensors", "ckpt", "diffusers", "builtin"]
SUBDIR = "Stable-diffusion"
FILE_KINDS: dict[str, Kind] = {".safetensors": "safetensors", ".ckpt": "ckpt", ".pt": "ckpt"}
HASH_CACHE_NAME = "checkpoint-hashes.json"
_STRIP_CHECKSUM = re.compile(r"\s*\[[^]]+]\s*$")


@dataclass(eq=False)
class CheckpointInfo:
    """One checkpoint the server can load: a single file, a diffusers folder, or the builtin model.

    filename: absolute path of the file or folder ("<builtin>" for the builtin model).
    name: path relative to the checkpoint folder, with extension, "/"-separated.
    model_name: `name` without extension, "/" replaced by "_" (A1111's short name).
    kind: "safetensors", "ckpt" (also .pt), "diffusers" or "builtin".
    config: a config found next to the file (`<stem>.yaml`, A1111's convention) or None; after a load,
        the diffusers config directory that was used.
    sha256 / legacy_hash: known hashes (None until computed or found in the cache).
    family: "sd1", "sd2" or "sdxl" once detected (lazily, by `detect_family` or a load), else None.
    """

    filename: str
    name: str
    model_name: str
    kind: Kind
    config: str | None = None
    sha256: str | None = None
    legacy_hash: str | None = None
    family: str | None = None
    _cache: HashCache | None = field(default=None, repr=False)
    build: Callable[..., Any] | None = field(default=None, repr=False)  # builds a "builtin" (device, dtype)

    @classmethod
    def from_path(cls, path: str | os.PathLike, root: str | os.PathLike | None = None,
                  cache: HashCache | None = None) -> CheckpointInfo:
        p = Path(path).absolute()
        try:
            name = p.relative_to(Path(root).absolute()).as_posix() if root is not None else p.name
        except ValueError:
            name = p.name
        kind: Kind = "diffusers" if p.is_dir() else FILE_KINDS.get(p.suffix.lower(), "safetensors")
        stem = name if kind == "diffusers" else os.path.splitext(name)[0]
        sidecar = p.with_suffix(".yaml") if kind != "diffusers" else None
        info = cls(filename=str(p), name=name, model_name=stem.replace("/", "_"), kind=kind,
                   config=str(sidecar) if sidecar is not None and sidecar.is_file() else None, _cache=cache)
        info.refresh_hash_from_cache()
        return info

    @classmethod
    def builtin(cls, name: str, filename: str, sha256: str, build: Callable[..., Any] | None = None
                ) -> CheckpointInfo:
        """A model built in code, not read from a file; `build(device, dtype)` makes it."""
        return cls(filename=filename, name=name, model_name=name, kind="builtin", sha256=sha256,
                   legacy_hash=sha256[:8], family="sd1", build=build)

    # --- hashes -----------------------------------------------------------------------------------
    @property
    def hash(self) -> str | None:
        """The shorthash: first 10 hex digits of the sha256, or None while unknown."""
        return self.sha256[:10] if self.sha256 else None

    @property
    def shorthash(self) -> str | None:
        return self.hash

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]" if self.hash else self.name

    def refresh_hash_from_cache(self) -> None:
        """Take the hash from the cache if (mtime, size) still match; forget it otherwise. Only `stat`s."""
        if self.kind == "builtin" or self._cache is None:
            return
        try:
            entry = self._cache.lookup(self.filename, FileStamp.of(self.filename))
        except OSError:
            entry = None
        self.sha256 = entry["sha256"] if entry else None
        self.legacy_hash = entry["legacy_hash"] if entry else None

    def ensure_hash(self) -> str:
        """Compute (or fetch from the cache) the sha256; returns the shorthash. Reads the whole file once."""
        if self.kind != "builtin":  # the cache re-hashes only if the file changed since
            cache = self._cache or HashCache(None)
            entry = cache.compute(self.filename)
            self.sha256, self.legacy_hash = entry["sha256"], entry["legacy_hash"]
        return self.hash  # type: ignore[return-value]

    # --- lookup and listing -----------------------------------------------------------------------
    def aliases(self) -> list[str]:
        """Every string that names this checkpoint exactly (A1111's `ids`, plus the absolute filename)."""
        ids = [self.title, self.name, self.model_name, self.filename]
        if self.kind != "builtin":
            ids.append(Path(self.filename).stem if self.kind != "diffusers" else Path(self.filename).name)
        if self.legacy_hash:
            ids += [self.legacy_hash, f"{self.name} [{self.legacy_hash}]"]
        if self.sha256:
            ids += [self.hash, self.sha256, f"{self.name} [{self.hash}]"]
        return [i for i in ids if i]

    def as_api(self) -> dict[str, Any]:
        """The `/sdapi/v1/sd-models` entry: {title, model_name, hash, sha256, filename, config}."""
        return {"title": self.title, "model_name": self.model_name, "hash": self.hash, "sha256": self.sha256,
                "filename": self.filename, "config": self.config}


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def discover(folder: str | os.PathLike, list_hidden: bool = True) -> list[Path]:
    """Checkpoint files and diffusers folders under `folder`, recursively; never opens a file.

    Files: .safetensors, .ckpt, .pt (not `*.vae.*`, which are VAEs). A directory holding a
    `model_index.json` is one diffusers checkpoint and is not searched further. Folders whose names start
    with '.' are searched only with `list_hidden` (option `list_hidden_files`, upscalers/folders.py).
    """
    root = Path(folder)
    found: list[Path] = []
    for here, dirnames, filenames in model_walk(root, list_hidden):
        if here != root and "model_index.json" in filenames:
            found.append(here)
            dirnames[:] = []
            continue
        for fn in filenames:
            if ".vae." in fn.lower():
                continue
            if Path(fn).suffix.lower() in FILE_KINDS:
                found.append(here / fn)
    return found


class CheckpointRegistry:
    """The checkpoints under `<models_dir>/Stable-diffusion`, plus any extra entries (the builtin model).

    Thread-safe: `list()`/`find()` may run on the event loop while the background hasher updates hashes.
    """

    def __init__(self, models_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 extra: list[CheckpointInfo] | None = None, folder: str | os.PathLike | None = None):
        self.models_dir = Path(models_dir)
        self.folder = Path(folder) if folder is not None else self.models_dir / SUBDIR  # --ckpt-dir moves it
        cache_dir = Path(data_dir) if data_dir is not None else self.models_dir
        self.cache = HashCache(cache_dir / HASH_CACHE_NAME)
        self._extra = list(extra or [])
        self.list_hidden: Callable[[], bool] = always  # option list_hidden_files, read at each scan
        self._lock = threading.RLock()
        self._items: list[CheckpointInfo] = []
        self._hasher: threading.Thread | None = None
        self._stop = threading.Event()
        self.refresh()

    # --- discovery --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rescan the folder (`/sdapi/v1/refresh-checkpoints`). Keeps known entries' detected families."""
        with self._lock:
            old = {i.filename: i for i in self._items}
            items: list[CheckpointInfo] = []
            for path in discover(self.folder, self.list_hidden()):
                info = CheckpointInfo.from_path(path, self.folder, self.cache)
                prev = old.get(info.filename)
                if prev is not None and prev.sha256 == info.sha256 and info.sha256 is not None:
                    info.family = prev.family
                items.append(info)
            items.sort(key=lambda i: _natural_key(i.name))
            self._items = items + self._extra

    def add(self, info: CheckpointInfo) -> None:
        """Register an entry that is not a file in the folder (kept across refreshes), e.g. the builtin."""
        with self._lock:
            self._extra.append(info)
            self._items.append(info)

    def list(self) -> list[CheckpointInfo]:
        """All checkpoints, in A1111's natural order of names, extra entries last. Reads no file content."""
        with self._lock:
            return list(self._items)

    def titles(self) -> list[str]:
        return [i.title for i in self.list()]

    # --- lookup -----------------------------------------------------------------------------------
    def find(self, name: str, field: str = "sd_model_checkpoint") -> CheckpointInfo:
        """Resolve a checkpoint name as A1111's `get_closet_checkpoint_match` does, else raise UnknownName.

        1. exact: title, name, model_name, file stem, absolute filename, shorthash, sha256, legacy hash,
           "name [hash]";
        2. the shortest title containing `name`;
        3. the same with a trailing " [checksum]" removed from `name` (a title whose hash changed, or
           a hash-less title), so stale titles still resolve.
        """
        items = self.list()
        if name:
            for info in items:
                if name in info.aliases():
                    return info
            for needle in (name, _STRIP_CHECKSUM.sub("", name)):
                if not needle:
                    continue
                found = sorted((i for i in items if needle in i.title), key=lambda i: len(i.title))
                if found:
                    return found[0]
        raise UnknownName(field, name, [i.title for i in items])

    # --- hashing ----------------------------------------------------------------------------------
    def ensure_hash(self, info: CheckpointInfo) -> str:
        """The shorthash of `info`, computed now if unknown (reads the whole file once, then cached)."""
        return info.ensure_hash()

    def start_background_hashing(self) -> threading.Thread:
        """Hash every checkpoint still without a hash, one at a time, in a daemon thread. Idempotent."""
        with self._lock:
            if self._hasher is not None and self._hasher.is_alive():
                return self._hasher
            self._stop.clear()
            self._hasher = threading.Thread(target=self._hash_all, name="checkpoint-hasher", daemon=True)
            self._hasher.start()
            return self._hasher

    def stop_background_hashing(self) -> None:
        """Ask the hasher to stop after the file it is hashing now."""
        self._stop.set()

    def _hash_all(self) -> None:
        for info in self.list():
            if self._stop.is_set():
                return
            if info.sha256 is None and info.kind != "builtin":
                try:
                    info.ensure_hash()
                except OSError as exc:
                    log.warning("could not hash %s: %s", info.filename, exc)
                    continue
                with self._lock:  # a refresh() meanwhile made new entries: give them the hash too
                    for current in self._items:
                        if current.filename == info.filename and current.sha256 is None:
                            current.sha256, current.legacy_hash = info.sha256, info.legacy_hash
