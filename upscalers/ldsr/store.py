"""The LDSR model of a models folder (`<models>/LDSR`, or the folder `--ldsr-models-path` names): found and
checked at refresh, loaded for each use (kept between uses only with `ldsr_cached`, as A1111)."""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..errors import UpscalerError
from ..folders import family_folders
from .checkpoint import LdsrFiles, LdsrModel, find_files, load_model

log = logging.getLogger(__name__)

NAME = "LDSR"
"""The upscaler's name, as A1111 lists it; also the folder's name under the models folder."""


def _stamp(files: LdsrFiles) -> tuple[object, ...]:
    parts: list[object] = []
    for path in (files.model, files.config):
        if path is not None:
            stat = path.stat()
            parts += [str(path), stat.st_size, stat.st_mtime_ns]
    return tuple(parts)


class LdsrStore:
    """Thread-safe; `refresh` may run while the worker upscales."""

    def __init__(self, models_dir: Path, folders: dict[str, Path], device: torch.device) -> None:
        self.models_dir = models_dir
        self.folders = folders
        self.device = device
        self._lock = threading.RLock()
        self._files: LdsrFiles | None = None
        self._checked: tuple[tuple[object, ...], bool] | None = None
        self._cached: tuple[tuple[object, ...], LdsrModel] | None = None

    def _find(self) -> LdsrFiles | None:
        for folder in family_folders(self.models_dir, (NAME,), self.folders):
            files = find_files(folder)
            if files is not None:
                return files
        return None

    def refresh(self) -> LdsrFiles | None:
        """Find the files and check that they build an LDSR model (once per version of them); None when
        there are none or they cannot be used (with one warning saying why)."""
        files = self._find()
        usable = False
        stamp: tuple[object, ...] = ()
        if files is not None:
            stamp = _stamp(files)
            if self._checked is not None and self._checked[0] == stamp:
                usable = self._checked[1]
            else:
                try:
                    load_model(files)  # built and dropped: the files are usable
                    usable = True
                except UpscalerError as exc:
                    log.warning("skipping LDSR model %s: %s", files.model, getattr(exc, "reason", exc))
        with self._lock:
            self._checked = (stamp, usable) if files is not None else None
            self._files = files if usable else None
            if self._cached is not None and self._cached[0] != stamp:
                self._cached = None
            return self._files

    @contextlib.contextmanager
    def running(self, cached: bool, make_room: Callable[[], None] | None = None,
                offload: torch.device | None = None) -> Iterator[LdsrModel]:
        """The model on the device for the duration. With `cached` it stays in memory afterwards (and is
        reused while the files are unchanged), on `offload` when given (--medvram: the CPU); without, it is
        read from disk for this use and dropped, and a model an earlier cached use left is dropped too.
        `make_room()` runs before the model moves to the device."""
        with self._lock:
            files = self._files
            if files is None:
                raise UpscalerError("no LDSR model: put model.ckpt (or model.safetensors) and project.yaml "
                                    f"in {self.models_dir / NAME} or name the folder with --ldsr-models-path")
            stamp = _stamp(files)
            model = self._cached[1] if self._cached is not None and self._cached[0] == stamp else None
            if not cached:
                self._cached = None
        if model is None:
            model = load_model(files)
        if make_room is not None:
            make_room()
        model.to(self.device)
        if cached:
            with self._lock:
                self._cached = (stamp, model)
        try:
            yield model
        finally:
            if cached and offload is not None:
                model.to(offload)
            del model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def is_cached(self) -> bool:
        """Whether a model stays in memory between uses now."""
        with self._lock:
            return self._cached is not None

    def clear_cache(self) -> None:
        with self._lock:
            self._cached = None
