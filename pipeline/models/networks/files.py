"""LoRA-family files on disk: discovery (names, aliases, metadata from the header only), A1111's hash, and a
bounded cache of the files' tensors.

Names follow A1111: `name` is the file stem (folders ignored, a later file with the same stem wins), `alias`
is the metadata's `ss_output_name` or the stem; a prompt resolves against both. `.pt`/`.ckpt` files are
read with `weights_only=True` only, so a pickle that would run code is refused, never executed."""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import struct
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import torch

from upscalers.folders import always, model_files

log = logging.getLogger("hiresd.networks")

SUFFIXES = (".safetensors", ".pt", ".ckpt")
_FRONT_KEYS = ("ss_sd_model_name", "ss_resolution", "ss_clip_skip", "ss_num_train_images", "ss_tag_frequency")


class NetworkFileError(Exception):
    """A network file that cannot be read or understood; the message names the file and the reason."""


def natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def walk(folder: Path, suffixes: tuple[str, ...], list_hidden: bool = True) -> list[Path]:
    """Files under `folder` (recursively, following links, natural order) ending with one of `suffixes`;
    in folders whose names start with '.' only with `list_hidden` (upscalers/folders.py model_walk)."""
    return model_files(folder, suffixes, list_hidden, natural_key)


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({key: shape}, raw `__metadata__`) of a .safetensors file, reading only its JSON header."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 * 2**20:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise NetworkFileError(f"{path}: not a readable .safetensors file ({exc})") from exc
    meta = header.pop("__metadata__", None) or {}
    shapes = {k: tuple(v.get("shape", ())) for k, v in header.items() if isinstance(v, dict)}
    return shapes, {str(k): str(v) for k, v in meta.items()}


def decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """A1111's view of the metadata: values starting with `{` JSON-decoded, five `ss_*` keys first."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value.startswith("{"):
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    front = {k: out.pop(k) for k in _FRONT_KEYS if k in out}
    return {**front, **out}


def addnet_hash(path: Path) -> str:
    """A1111's LoRA hash of a .safetensors file: sha256 of everything after the header (metadata-free)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + size)
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a network file on the CPU. Pickles only through `weights_only=True`."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NetworkFileError(f"{path}: refused, the pickle holds more than tensors (it could run code); "
                               f"convert it to .safetensors ({first})") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported by name
        raise NetworkFileError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    while isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise NetworkFileError(f"{path}: not a state dict (found {type(raw).__name__})")
    return {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}


@dataclass
class LoraFile:
    """One LoRA-family file: names, where it is, its metadata and (lazily) its A1111 hash."""

    name: str
    alias: str
    path: Path
    metadata: dict[str, Any]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    mtime: float = 0.0
    _hash: str | None = field(default=None, repr=False)

    def as_api(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "path": str(self.path), "metadata": self.metadata}

    @property
    def hash(self) -> str:
        """Full hash as A1111 uses it: `sshs_model_hash` from the metadata, else the addnet hash of a
        .safetensors file, else the sha256 of the whole file."""
        if self._hash is None:
            meta = self.metadata.get("sshs_model_hash")
            if meta:
                self._hash = str(meta)
            elif self.path.suffix.lower() == ".safetensors":
                self._hash = addnet_hash(self.path)
            else:
                self._hash = file_sha256(self.path)
        return self._hash

    @property
    def shorthash(self) -> str:
        return self.hash[:12]


def _lora_file(path: Path) -> LoraFile:
    shapes: dict[str, tuple[int, ...]] = {}
    meta: dict[str, Any] = {}
    if path.suffix.lower() == ".safetensors":
        shapes, raw = read_header(path)
        meta = decode_metadata(raw)
    alias = str(meta.get("ss_output_name") or path.stem)
    return LoraFile(path.stem, alias, path.resolve(), meta, shapes, path.stat().st_mtime)


class LoraIndex:
    """The LoRA files of some folders, found by reading headers only; thread-safe."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = list(folders)
        self.errors: dict[str, str] = {}
        self._files: list[LoraFile] = []
        self._lookup: dict[str, LoraFile] = {}
        self._lock = threading.Lock()
        self._scanned = False
        self.list_hidden: Callable[[], bool] = always  # option list_hidden_files, read at each scan

    def refresh(self) -> None:
        files: list[LoraFile] = []
        errors: dict[str, str] = {}
        seen: set[Path] = set()
        for folder in self.folders:
            for path in walk(folder, SUFFIXES, self.list_hidden()):
                if path.resolve() in seen:
                    continue
                seen.add(path.resolve())
                try:
                    files.append(_lora_file(path))
                except (NetworkFileError, OSError) as exc:
                    errors[str(path)] = str(exc)
                    log.warning("LoRA %s skipped: %s", path, exc)
        lookup: dict[str, LoraFile] = {}
        for f in files:  # stems first; a later file with the same stem wins
            lookup[f.name] = f
        forbidden = {"none"}
        for f in files:  # an alias that collides with a known key resolves by stem only
            if f.alias == f.name:
                continue
            if f.alias in lookup or f.alias.lower() in forbidden:
                forbidden.add(f.alias.lower())
                continue
            lookup[f.alias] = f
        with self._lock:
            self._files, self._lookup, self.errors, self._scanned = files, lookup, errors, True

    def _ensure(self) -> None:
        if not self._scanned:
            self.refresh()

    def list(self) -> list[LoraFile]:
        self._ensure()
        with self._lock:
            return list(self._files)

    def find(self, name: str) -> LoraFile | None:
        """The file a prompt name means (stem or alias, exact); rescans once on a miss (a new file)."""
        self._ensure()
        with self._lock:
            hit = self._lookup.get(name)
        if hit is None:
            self.refresh()
            with self._lock:
                hit = self._lookup.get(name)
        return hit

    def closest(self, name: str, n: int = 5) -> list[str]:
        with self._lock:
            keys = list(self._lookup)
        by_lower = {k.lower(): k for k in keys}
        close = get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.4)
        return [by_lower[c] for c in close] or sorted(keys, key=natural_key)[:n]


class TensorCache:
    """Parsed network files, least recently used first out, bounded by their tensors' bytes (0 keeps only
    the files of the set in use, like A1111's default) and, when `limit_count` is set (A1111's option
    `lora_in_memory_limit`), by their number; the files of the set in use always stay."""

    def __init__(self, limit_bytes: int, limit_count: int = 0) -> None:
        self.limit_bytes = int(limit_bytes)
        self.limit_count = int(limit_count)  # 0: no limit on the number
        self._items: OrderedDict[tuple[str, float], tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, key: tuple[str, float]) -> Any | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def _fits(self, total: int) -> bool:
        return total <= self.limit_bytes and (not self.limit_count or len(self._items) <= self.limit_count)

    def put(self, key: tuple[str, float], value: Any, size: int, keep: set[tuple[str, float]]) -> None:
        """Store `value`; evict the oldest entries not in `keep` until the cache fits its limits."""
        with self._lock:
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            total = sum(s for _, s in self._items.values())
            for old in list(self._items):
                if self._fits(total):
                    break
                if old in keep or old == key:
                    continue
                total -= self._items.pop(old)[1]

    def trim(self, keep: set[tuple[str, float]]) -> None:
        with self._lock:
            total = sum(s for _, s in self._items.values())
            for old in list(self._items):
                if self._fits(total):
                    break
                if old not in keep:
                    total -= self._items.pop(old)[1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
