"""The registry of named pixel upscalers: built-ins and spandrel model files.

One frozen `UpscalerEntry` per name states what the upscaler is and can do. Model files are
found under `<models>/<Family>/` (recursively), read without executing pickles, detected by
spandrel at `refresh()` (which is where their real scale comes from), and loaded again lazily on
first use, then kept in a small LRU cache.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import spandrel
import torch

from .errors import ModelLoadError, UnknownUpscaler, UpscalerError
from .faces import FaceRestorers
from .folders import always, family_folders, model_files
from .latent import LatentMode, is_latent, latent_mode_names, resolve_latent
from .ldsr.store import NAME as LDSR_NAME
from .ldsr.store import LdsrStore
from .loading import MODEL_SUFFIXES, architecture_registry, load_descriptor
from .naming import match_name
from .tiling import SizeSpec, Tiling

log = logging.getLogger(__name__)

MODEL_FAMILY_DIRS: tuple[str, ...] = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "ScuNET")
"""Sub-folders of the models folder that are scanned (names compared case-insensitively)."""

UpscalerKind = Literal["none", "lanczos", "nearest", "model", "ldsr"]

_SUFFIX_RANK = {".safetensors": 0, ".pth": 1, ".pt": 2, ".ckpt": 3}


@dataclass(frozen=True)
class UpscalerEntry:
    """One named pixel upscaler, as listed by `/sdapi/v1/upscalers`."""

    name: str
    """The name clients send (`upscaler_1`, `hr_upscaler`); a model file's stem."""
    kind: UpscalerKind
    """`none` (identity), `lanczos` / `nearest` (PIL resizes), `model` (a spandrel file) or `ldsr` (latent
    diffusion super-resolution, `upscalers/ldsr`)."""
    path: Path | None = None
    """The model file; None for built-ins."""
    scale: int | None = None
    """The model's real scale per pass, detected from its weights; None for built-ins (any factor)."""
    architecture: str | None = None
    """spandrel's architecture name, e.g. `ESRGAN`, `SwinIR`; None for built-ins."""
    tiling: Tiling = "supported"
    """spandrel's tiling hint: tile freely, only after an out-of-memory error, or never."""
    supports_half: bool = False
    """fp16 is usable (on CUDA only; the CPU always runs fp32)."""
    supports_bfloat16: bool = False
    """bf16 is usable (on CUDA only)."""
    size_requirements: SizeSpec = field(default_factory=SizeSpec)
    """Input size constraints; inputs are padded to meet them."""
    input_channels: int = 3
    """1 (grey) or 3 (RGB)."""
    output_channels: int = 3
    """1 (grey) or 3 (RGB)."""

    @property
    def is_model(self) -> bool:
        """Whether this entry runs a neural network."""
        return self.kind in ("model", "ldsr")


BUILTIN_ENTRIES: tuple[UpscalerEntry, ...] = (
    UpscalerEntry("None", "none"),
    UpscalerEntry("Lanczos", "lanczos"),
    UpscalerEntry("Nearest", "nearest"),
)
"""Listed first, in A1111's order."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: the spandrel descriptor on its device, in its dtype."""

    entry: UpscalerEntry
    descriptor: spandrel.ImageModelDescriptor
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    @property
    def output_channels(self) -> int:
        return self.descriptor.output_channels

    @property
    def tiling(self) -> Tiling:
        return self.entry.tiling

    @property
    def size_requirements(self) -> SizeSpec:
        return self.entry.size_requirements

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.descriptor(image)


def pick_dtype(device: torch.device, entry: UpscalerEntry, allow_half: bool = True) -> torch.dtype:
    """fp32 except on CUDA, where fp16 (or else bf16) is used when the model supports it."""
    if device.type != "cuda" or not allow_half:
        return torch.float32
    if entry.supports_half:
        return torch.float16
    if entry.supports_bfloat16 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@torch.inference_mode()
def _works_in(descriptor: spandrel.ImageModelDescriptor, entry: UpscalerEntry) -> bool:
    """Whether a half-precision model really runs (and gives finite output) on an odd-sized input.

    spandrel's dtype flags are not always right (SwinIR claims bf16 but builds float32 attention
    masks for sizes other than its training size), so a tiny probe decides at load time.
    """
    width, height = entry.size_requirements.padded(37, 29)
    seeded = torch.Generator().manual_seed(0)
    probe = torch.rand(1, descriptor.input_channels, height, width, generator=seeded)
    try:
        out = descriptor(probe.to(descriptor.device, dtype=descriptor.dtype))
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise
        return False
    return bool(torch.isfinite(out).all())


def _sort_key(entry: UpscalerEntry) -> tuple[str, str, int, str]:
    """Case-insensitive name order; for equal names .safetensors first, then by path."""
    assert entry.path is not None
    return (entry.name.casefold(), entry.name, _SUFFIX_RANK[entry.path.suffix.lower()], str(entry.path))


def _entry_from_descriptor(name: str, path: Path, d: spandrel.ImageModelDescriptor) -> UpscalerEntry:
    req = d.size_requirements
    return UpscalerEntry(
        name=name,
        kind="model",
        path=path,
        scale=d.scale,
        architecture=d.architecture.name,
        tiling=d.tiling.name.lower(),  # type: ignore[arg-type]
        supports_half=d.supports_half,
        supports_bfloat16=d.supports_bfloat16,
        size_requirements=SizeSpec(req.minimum, req.multiple_of, req.square),
        input_channels=d.input_channels,
        output_channels=d.output_channels,
    )


class UpscalerRegistry:
    """All pixel upscalers of one models folder, with name resolution and a model cache.

    Thread-safe: `refresh()` may run while the worker resolves and loads.
    """

    def __init__(
        self,
        models_dir: Path,
        allow_noncommercial: bool = False,
        device: torch.device | None = None,
        max_cached_models: int = 2,
        allow_half: bool = True,
        folders: dict[str, Path] | None = None,
        offload: torch.device | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.folders = dict(folders or {})
        """Family folders moved away from `models_dir` by a flag: {"ESRGAN": path, "GFPGAN": path, ...}."""
        self.device = device if device is not None else torch.device("cpu")
        self.max_cached_models = max(1, max_cached_models)
        self.allow_half = allow_half
        self.offload = offload
        """With --medvram/--lowvram: where loaded models wait between runs (the CPU); they sit on `device`
        only inside `running`. None: they stay on `device`."""
        self.make_room: Callable[[], None] | None = None
        """Called before a waiting model moves to `device` (the server moves the checkpoint's parts off
        it)."""
        self.placement_log: list[tuple[str, str]] = []
        """(upscaler name, "in" or "out") for every move of `running`: where each model was, for tests."""
        self._arch_registry = architecture_registry(allow_noncommercial)
        self._lock = threading.RLock()
        self._entries: list[UpscalerEntry] = list(BUILTIN_ENTRIES)
        self.list_hidden: Callable[[], bool] = always
        """Option `list_hidden_files`, read at each scan (the server's options; A1111's default before)."""
        self._scanned: dict[Path, tuple[tuple[int, int], UpscalerEntry | None]] = {}
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self.faces = FaceRestorers(self.models_dir, allow_noncommercial, self.device, self.folders)
        """The face restorers (GFPGAN / CodeFormer files) of the same models folder."""
        self.ldsr = LdsrStore(self.models_dir, self.folders, self.device)
        """The LDSR model of the same models folder (`<models>/LDSR` or `--ldsr-models-path`)."""
        self.refresh()

    # -- discovery -----------------------------------------------------------------------------

    def model_files(self) -> list[Path]:
        """Model files under the family folders, recursively (in hidden folders only with option
        `list_hidden_files`, folders.model_walk); broken links are skipped."""
        files: list[Path] = []
        for family in family_folders(self.models_dir, MODEL_FAMILY_DIRS, self.folders):
            files += sorted(model_files(family, MODEL_SUFFIXES, self.list_hidden()))
        return files

    def refresh(self) -> None:
        """Rescan the models folder (face restorers included); unchanged files are not read again.

        A file that cannot be used is skipped with one warning naming it and why (once per
        version of the file).
        """
        self.faces.refresh()
        found: list[UpscalerEntry] = []
        scanned: dict[Path, tuple[tuple[int, int], UpscalerEntry | None]] = {}
        for path in self.model_files():
            stat = path.stat()
            key = (stat.st_size, stat.st_mtime_ns)
            previous = self._scanned.get(path)
            if previous is not None and previous[0] == key:
                entry = previous[1]
            else:
                entry = self._scan_file(path)
            scanned[path] = (key, entry)
            if entry is not None:
                found.append(entry)
        ldsr = self.ldsr.refresh()
        if ldsr is not None:
            found.append(UpscalerEntry(LDSR_NAME, "ldsr", path=ldsr.model, scale=4, architecture="LDSR",
                                       tiling="internal"))
        found.sort(key=_sort_key)
        taken = {e.name for e in BUILTIN_ENTRIES} | set(latent_mode_names())
        entries = list(BUILTIN_ENTRIES)
        for entry in found:
            if entry.name in taken:
                log.warning("skipping upscaler model %s: the name %r is taken", entry.path, entry.name)
                continue
            taken.add(entry.name)
            entries.append(entry)
        with self._lock:
            self._scanned = scanned
            self._entries = entries
            live = {str(e.path) for e in entries if e.path is not None}
            for cached in [k for k in self._cache if k not in live]:
                del self._cache[cached]

    def _scan_file(self, path: Path) -> UpscalerEntry | None:
        try:
            descriptor = load_descriptor(path, self._arch_registry)
        except UpscalerError as exc:
            log.warning("skipping upscaler model %s: %s", path, getattr(exc, "reason", exc))
            return None
        entry = _entry_from_descriptor(path.stem, path, descriptor)
        del descriptor
        return entry

    # -- lookup --------------------------------------------------------------------------------

    def entries(self) -> list[UpscalerEntry]:
        """None, Lanczos, Nearest, then model files sorted case-insensitively by name."""
        with self._lock:
            return list(self._entries)

    def names(self) -> list[str]:
        """The names of `entries()`, in order."""
        return [e.name for e in self.entries()]

    def resolve(self, name: str) -> UpscalerEntry:
        """The pixel upscaler called `name`.

        Exact match first, then ignoring case, spaces, `_` and `-` when that is unambiguous.
        Raises UnknownUpscaler listing the valid names (AmbiguousUpscaler when several match);
        latent mode names are rejected with a hint, see `resolve_latent`.
        """
        entries = self.entries()
        by_name = {e.name: e for e in entries}
        try:
            return by_name[match_name(name, list(by_name))]
        except UnknownUpscaler as exc:
            if type(exc) is UnknownUpscaler and is_latent(name):
                raise UnknownUpscaler(
                    name, list(by_name), hint="a latent upscale mode, usable only as a hires fix upscaler"
                ) from None
            raise

    def latent_modes(self) -> list[str]:
        """The six latent upscale mode names, in A1111's order."""
        return latent_mode_names()

    def is_latent(self, name: str | None) -> bool:
        """Whether `name` is a latent upscale mode rather than a pixel upscaler."""
        return is_latent(name)

    def resolve_latent(self, name: str | None) -> LatentMode:
        """The latent mode `name` (None: `Latent`) with its interpolate mode and antialias flag."""
        return resolve_latent(name)

    def as_api_list(self) -> list[dict[str, Any]]:
        """`/sdapi/v1/upscalers` items: `{name, model_name, model_path, model_url, scale}`.

        Our choices: built-ins report `model_name`, `model_path` and `model_url` null and
        `scale` 4.0 (what A1111 reports for them); model files report `model_name` = the
        spandrel architecture name (the closest thing to A1111's per-family model name),
        `model_path` = the file, `model_url` null, and `scale` = the real scale detected from the
        weights (A1111 reports 4 for every user ESRGAN file).
        """
        return [
            {
                "name": e.name,
                "model_name": e.architecture,
                "model_path": str(e.path) if e.path is not None else None,
                "model_url": None,
                "scale": float(e.scale) if e.scale is not None else 4.0,
            }
            for e in self.entries()
        ]

    # -- models --------------------------------------------------------------------------------

    def load(self, entry: UpscalerEntry) -> LoadedModel:
        """The model of `entry` on the registry's device, loaded on first use and LRU-cached.

        Raises ModelLoadError / UnsafeModelFile when the file changed into something unusable.
        """
        if entry.path is None or entry.kind != "model":
            raise UpscalerError(f"upscaler {entry.name!r} is not a spandrel model file")
        key = str(entry.path)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            descriptor = load_descriptor(entry.path, self._arch_registry)
            if descriptor.scale != entry.scale:
                raise ModelLoadError(entry.path, "the file changed since the last refresh")
            dtype = pick_dtype(self.device, entry, self.allow_half)
            descriptor = descriptor.to(self.device, dtype=dtype).eval()
            if dtype != torch.float32 and not _works_in(descriptor, entry):
                log.info("upscaler %s does not run in %s here; using float32", entry.name, dtype)
                dtype = torch.float32
                descriptor = descriptor.to(dtype=dtype)
            if self.offload is not None:
                descriptor = descriptor.to(self.offload)  # LoadedModel.device stays where it will run
            loaded = LoadedModel(entry, descriptor, self.device, dtype)
            self._cache[key] = loaded
            while len(self._cache) > self.max_cached_models:
                self._cache.popitem(last=False)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            return loaded

    @contextlib.contextmanager
    def running(self, model: LoadedModel) -> Iterator[LoadedModel]:
        """`model` on its device for the duration; with `offload` set it comes in (after `make_room`) and goes
        back out afterwards, so that the GPU holds it only while it upscales."""
        if self.offload is None:
            yield model
            return
        if self.make_room is not None:
            self.make_room()
        model.descriptor.to(self.device)
        self.placement_log.append((model.entry.name, "in"))
        try:
            yield model
        finally:
            model.descriptor.to(self.offload)
            self.placement_log.append((model.entry.name, "out"))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def cached_names(self) -> list[str]:
        """Names of the models now in memory, least recently used first."""
        with self._lock:
            return [m.entry.name for m in self._cache.values()]

    def clear_cache(self) -> None:
        """Drop every loaded model (e.g. to free device memory for a checkpoint)."""
        with self._lock:
            self._cache.clear()
        self.faces.clear_cache()
        self.ldsr.clear_cache()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
