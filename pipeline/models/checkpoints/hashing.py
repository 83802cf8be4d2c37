"""Checkpoint hashes, computed lazily and remembered across restarts.

`sha256` is the hash of the whole file, as A1111 computes it (its first 10 hex digits are the
"shorthash" in titles and infotexts). `legacy_hash` is A1111's old 8-hex "model hash" (sha256 of the
64 KiB at offset 1 MiB), still found in old infotexts. Both are read in one pass and stored in a small
JSON file keyed by absolute path and invalidated when the file's mtime or size change, so a 7 GB file
is hashed once, ever, and never at start-up.

Diffusers folders have no single file: their hash is the sha256 of the lines
"<relative path> <sha256 of that file>" for every weight file, sorted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class FileStamp:
    """What the cache checks before trusting a stored hash: modification time and size."""

    mtime: float
    size: int

    @staticmethod
    def of(path: str | os.PathLike) -> FileStamp:
        p = Path(path)
        if p.is_dir():
            files = weight_files(p)
            return FileStamp(max((f.stat().st_mtime for f in files), default=p.stat().st_mtime),
                             sum(f.stat().st_size for f in files))
        st = p.stat()
        return FileStamp(st.st_mtime, st.st_size)


def weight_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def file_hashes(path: str | os.PathLike) -> tuple[str, str]:
    """(sha256 of the whole file, A1111 legacy 8-hex hash), in one sequential read."""
    full = hashlib.sha256()
    legacy = hashlib.sha256()
    pos = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            lo, hi = max(0x100000 - pos, 0), min(0x110000 - pos, len(chunk))
            if lo < hi:
                legacy.update(chunk[lo:hi])
            full.update(chunk)
            pos += len(chunk)
    return full.hexdigest(), legacy.hexdigest()[:8]


def folder_hashes(folder: str | os.PathLike) -> tuple[str, str]:
    root = Path(folder)
    outer = hashlib.sha256()
    for f in weight_files(root):
        outer.update(f"{f.relative_to(root).as_posix()} {file_hashes(f)[0]}\n".encode())
    digest = outer.hexdigest()
    return digest, digest[:8]


class HashCache:
    """A JSON file {abs path: {mtime, size, sha256, legacy_hash}}; thread-safe; hashing is serialised."""

    VERSION = 1

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()  # guards _entries and the file
        self._hash_lock = threading.Lock()  # one hash computation at a time (disk bound anyway)
        self._entries: dict[str, dict] = self._read()
        self.computed = 0  # how many hashes this process computed (tests and logs)

    def _read(self) -> dict[str, dict]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") == self.VERSION and isinstance(data.get("entries"), dict):
                return data["entries"]
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable hash cache %s: %s", self.path, exc)
        return {}

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".hashes-", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": self.VERSION, "entries": self._entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not write hash cache %s: %s", self.path, exc)

    def lookup(self, path: str, stamp: FileStamp) -> dict | None:
        """The cached entry for `path` if its mtime and size still match; never reads the file."""
        with self._lock:
            entry = self._entries.get(path)
        if entry and entry.get("mtime") == stamp.mtime and entry.get("size") == stamp.size:
            return entry
        return None

    def compute(self, path: str) -> dict:
        """Return the entry for `path`, hashing the file if the cache has no valid one."""
        with self._hash_lock:
            stamp = FileStamp.of(path)
            entry = self.lookup(path, stamp)
            if entry is not None:
                return entry
            sha, legacy = folder_hashes(path) if Path(path).is_dir() else file_hashes(path)
            self.computed += 1
            entry = {"mtime": stamp.mtime, "size": stamp.size, "sha256": sha, "legacy_hash": legacy}
            with self._lock:
                self._entries[path] = entry
                self._write()
            return entry
