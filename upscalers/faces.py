"""Face restoration (A1111's GFPGAN and CodeFormer) with model files the user provides.

Files under `<models>/GFPGAN` and `<models>/Codeformer` (recursively; `.safetensors`, or `.pth`/`.pt`
read with `torch.load(weights_only=True)`) are recognised by spandrel's architecture detection.
CodeFormer is a non-commercial architecture (`spandrel_extra_arches`), so it is only used when the
registry allows those. Each architecture gives one restorer, named as A1111 lists it.

Faces are found offline with OpenCV's frontal-face Haar cascade, which ships inside the
opencv-python-headless wheel (A1111 uses facexlib's RetinaFace, whose weights would have to be
downloaded). Each face is cropped with a margin to a square, resized to the model's 512x512, restored,
resized back and pasted with a feathered mask; the whole result is then blended with the original by
`visibility`, as A1111's `Image.blend(original, restored, visibility)`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import spandrel
import torch
from PIL import Image

from .errors import FaceRestorationUnavailable, ModelLoadError, UpscalerError
from .folders import always, family_folders, model_files
from .images import merge_alpha, split_alpha, to_rgb_or_rgba
from .loading import MODEL_SUFFIXES, architecture_registry, read_state_dict

log = logging.getLogger(__name__)

RESTORER_DIRS: dict[str, str] = {"CodeFormer": "Codeformer", "GFPGAN": "GFPGAN"}
"""Restorer name -> the sub-folder of the models folder it is found in (compared case-insensitively).
The dict's order is A1111's listing order."""

FACE_SIZE = 512
"""The square input and output size of both architectures."""

CROP_SCALE = 1.8
"""Side of the square crop relative to the detected face box (a Haar box spans brows to chin; the
models were trained on crops where the face fills a bit over half of the width)."""

CROP_RAISE = 0.05
"""The crop's centre sits this fraction of its side above the box centre (in the training crops the
eyes are above the middle and there is more room above the head than below the chin)."""

FEATHER = 0.12
"""Width of the paste mask's linear ramp, as a fraction of the crop side."""

DETECT_MAX_SIDE = 1024
"""Images are detected on a copy no larger than this (A1111's detector works at 640)."""

FaceNet = Callable[[torch.Tensor, float], torch.Tensor]
"""A face model: (1, 3, 512, 512) RGB in [-1, 1] and the CodeFormer fidelity weight -> same shape."""

ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class FaceRestorer:
    """One face restorer, as listed by `/sdapi/v1/face-restorers`."""

    name: str
    """`GFPGAN` or `CodeFormer`, as A1111 names them (infotext `Face restoration`, option
    `face_restoration_model`)."""
    path: Path
    """The model file used."""

    @property
    def cmd_dir(self) -> str:
        """The folder holding the model file (A1111's `cmd_dir` field)."""
        return str(self.path.parent)


@dataclass(frozen=True)
class FaceBox:
    """A detected face: its box in image pixels."""

    left: int
    top: int
    width: int
    height: int

    def crop_square(self) -> tuple[int, int, int]:
        """(left, top, side) of the square that is cut out around this face; may reach outside the image."""
        side = max(8, round(max(self.width, self.height) * CROP_SCALE))
        cx = self.left + self.width / 2
        cy = self.top + self.height / 2 - CROP_RAISE * side
        return round(cx - side / 2), round(cy - side / 2), side


# -- detection -----------------------------------------------------------------------------------

_cascade_lock = threading.Lock()
_cascade: Any = None


def _face_cascade() -> Any:
    global _cascade
    with _cascade_lock:
        if _cascade is None:
            path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
            cascade = cv2.CascadeClassifier(str(path))
            if cascade.empty():
                raise UpscalerError(f"OpenCV's face detector could not be read from {path}")
            _cascade = cascade
        return _cascade


def detect_faces(image: Image.Image) -> list[FaceBox]:
    """Frontal faces in `image`, largest first (none: an empty list)."""
    grey = np.asarray(image.convert("L"))
    scale = min(1.0, DETECT_MAX_SIDE / max(grey.shape))
    if scale < 1.0:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    if min(grey.shape) < 24:
        return []
    grey = cv2.equalizeHist(grey)
    smallest = max(24, min(grey.shape) // 20)
    found = _face_cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    boxes = [FaceBox(*(round(int(v) / scale) for v in box)) for box in found]
    return sorted(boxes, key=lambda b: -b.width * b.height)


# -- restoration ---------------------------------------------------------------------------------

def _feather_mask(side: int) -> np.ndarray:
    ramp_width = max(1.0, side * FEATHER)
    distance = np.minimum(np.arange(side) + 0.5, side - np.arange(side) - 0.5)
    ramp = np.clip(distance / ramp_width, 0.0, 1.0)
    return np.outer(ramp, ramp)[..., None]


def _cut(pixels: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """The square at (left, top), mirrored at the image borders where it reaches outside."""
    height, width = pixels.shape[:2]
    pad_y = (max(0, -top), max(0, top + side - height))
    pad_x = (max(0, -left), max(0, left + side - width))
    if any(pad_y + pad_x):
        pixels = np.pad(pixels, (pad_y, pad_x, (0, 0)), mode="reflect")
        top, left = top + pad_y[0], left + pad_x[0]
    return pixels[top:top + side, left:left + side]


@torch.inference_mode()
def _restore_crop(crop: Image.Image, net: FaceNet, weight: float, device: torch.device) -> Image.Image:
    face = crop.resize((FACE_SIZE, FACE_SIZE), Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.asarray(face, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    y = net(x.to(device), weight).float().clamp(-1.0, 1.0)
    out = ((y[0].permute(1, 2, 0).cpu().numpy() + 1.0) * 127.5).round().astype(np.uint8)
    return Image.fromarray(out, "RGB").resize(crop.size, Image.Resampling.LANCZOS)


def restore_faces(
    image: Image.Image,
    net: FaceNet,
    visibility: float = 1.0,
    codeformer_weight: float = 0.5,
    *,
    device: torch.device | None = None,
    should_stop: ShouldStop | None = None,
) -> Image.Image:
    """`image` with every detected face restored by `net`, blended with the original by `visibility`.

    Visibility 0, or no face found, leaves the image unchanged (a copy is returned). Pixels outside
    the faces' crop squares never change. An alpha channel is kept as it was. `codeformer_weight` is
    passed to `net` (CodeFormer's fidelity: 0 = strongest effect; GFPGAN ignores it). `should_stop`
    is asked before each face; once it says so the remaining faces are left as they are.
    """
    source = to_rgb_or_rgba(image)
    if visibility <= 0:
        return source.copy()
    rgb, alpha = split_alpha(source)
    boxes = detect_faces(rgb)
    if not boxes:
        return source.copy()
    device = device if device is not None else torch.device("cpu")
    pixels = np.asarray(rgb, dtype=np.float32).copy()
    height, width = pixels.shape[:2]
    for box in boxes:
        if should_stop is not None and should_stop():
            break
        left, top, side = box.crop_square()
        crop = Image.fromarray(_cut(pixels, left, top, side).round().astype(np.uint8), "RGB")
        restored = np.asarray(_restore_crop(crop, net, codeformer_weight, device), dtype=np.float32)
        mask = _feather_mask(side)
        y0, y1, x0, x1 = max(0, top), min(height, top + side), max(0, left), min(width, left + side)
        part = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        region = pixels[y0:y1, x0:x1]
        pixels[y0:y1, x0:x1] = region + (restored[part] - region) * mask[part]
    result = Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8), "RGB")
    if visibility < 1:
        result = Image.blend(rgb, result, visibility)
    return merge_alpha(result, alpha)


# -- the models ----------------------------------------------------------------------------------

class FaceModel:
    """A loaded face restoration model: callable as a `FaceNet`."""

    def __init__(self, restorer: FaceRestorer, model: torch.nn.Module, device: torch.device) -> None:
        self.restorer = restorer
        self.model = model
        """The spandrel architecture's module (GFPGANv1Clean or CodeFormer)."""
        self.device = device
        self.parked = False  # in CPU memory (face_restoration_unload) until its next use

    def __call__(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        if self.restorer.name == "CodeFormer":
            return self.model(x, weight=weight)[0]
        # the fixed noise stored with the weights rather than fresh noise: the same request, the same image
        return self.model(x, return_rgb=False, randomize_noise=False)[0]


def _detect_id(state: dict[str, torch.Tensor], registry: spandrel.ArchRegistry) -> str | None:
    for support in registry.architectures("detection"):
        if support.detect(state):
            return str(support.architecture.id)
    return None


class FaceRestorers:
    """The face restorers of one models folder; models load lazily and stay cached (at most two)."""

    def __init__(
        self, models_dir: Path, allow_noncommercial: bool = False, device: torch.device | None = None,
        folders: dict[str, Path] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.folders = dict(folders or {})  # GFPGAN / Codeformer folders moved by a flag
        self.allow_noncommercial = allow_noncommercial
        self.device = device if device is not None else torch.device("cpu")
        self._arch_registry = architecture_registry(allow_noncommercial)
        self._lock = threading.RLock()
        self._restorers: list[FaceRestorer] = []
        self.list_hidden: Callable[[], bool] = always  # option list_hidden_files, read at each scan
        self._scanned: dict[Path, tuple[tuple[int, int], str | None]] = {}
        self._cache: OrderedDict[Path, FaceModel] = OrderedDict()
        self.refresh()

    def model_files(self) -> list[Path]:
        """Model files under the GFPGAN and Codeformer folders, recursively (in hidden folders only with
        option `list_hidden_files`, folders.model_walk), in name order."""
        files: list[Path] = []
        for folder in family_folders(self.models_dir, RESTORER_DIRS.values(), self.folders):
            files += sorted(model_files(folder, MODEL_SUFFIXES, self.list_hidden()))
        return files

    def refresh(self) -> None:
        """Rescan; the first usable file of each architecture (in path order) becomes its restorer.
        A file that is not a GFPGAN/CodeFormer model is skipped with one warning naming it and why."""
        scanned: dict[Path, tuple[tuple[int, int], str | None]] = {}
        chosen: dict[str, Path] = {}
        for path in self.model_files():
            stat = path.stat()
            key = (stat.st_size, stat.st_mtime_ns)
            previous = self._scanned.get(path)
            name = previous[1] if previous is not None and previous[0] == key else self._scan_file(path)
            scanned[path] = (key, name)
            if name is not None and name not in chosen:
                chosen[name] = path
            elif name is not None:
                log.info("face restorer %s: using %s, not %s", name, chosen[name], path)
        restorers = [FaceRestorer(name, chosen[name]) for name in RESTORER_DIRS if name in chosen]
        with self._lock:
            self._scanned = scanned
            self._restorers = restorers
            live = {r.path for r in restorers}
            for stale in [p for p in self._cache if p not in live]:
                del self._cache[stale]

    def _scan_file(self, path: Path) -> str | None:
        try:
            state = read_state_dict(path)
        except UpscalerError as exc:
            log.warning("skipping face restoration model %s: %s", path, getattr(exc, "reason", exc))
            return None
        found = _detect_id(state, self._arch_registry)
        if found in RESTORER_DIRS:
            return found
        if found is None and not self.allow_noncommercial and path.parent.name.casefold() == "codeformer":
            reason = ("spandrel does not recognise it; CodeFormer is a non-commercial architecture, used only "
                      "with --enable-noncommercial-upscalers")
        elif found is None:
            reason = "spandrel does not recognise its architecture"
        else:
            reason = f"it is a {found} model, not GFPGAN or CodeFormer"
        log.warning("skipping face restoration model %s: %s", path, reason)
        return None

    # -- lookup --------------------------------------------------------------------------------

    def list(self) -> list[FaceRestorer]:
        """The available restorers, in A1111's order (CodeFormer, GFPGAN)."""
        with self._lock:
            return list(self._restorers)

    def get(self, name: str | None) -> FaceRestorer | None:
        """The restorer called `name` (ignoring case), or None."""
        if not name:
            return None
        return next((r for r in self.list() if r.name.casefold() == name.strip().casefold()), None)

    def pick(self, preferred: str | None = None) -> FaceRestorer | None:
        """The restorer for txt2img's `restore_faces`: the one option `face_restoration_model` names when
        it is available, else the first available one; None when there is none."""
        restorers = self.list()
        return self.get(preferred) or (restorers[0] if restorers else None)

    def require(self, name: str, field: str) -> FaceRestorer:
        """The restorer `name`; FaceRestorationUnavailable (a 4xx) naming `field` when it is missing."""
        restorer = self.get(name)
        if restorer is None:
            raise FaceRestorationUnavailable(name, field, RESTORER_DIRS.get(name, name))
        return restorer

    def as_api_list(self) -> list[dict[str, Any]]:
        """`/sdapi/v1/face-restorers` items: `{name, cmd_dir}`."""
        return [{"name": r.name, "cmd_dir": r.cmd_dir} for r in self.list()]

    # -- models --------------------------------------------------------------------------------

    def net(self, restorer: FaceRestorer) -> FaceModel:
        """The model of `restorer` on the device (fp32), loaded on first use and cached."""
        with self._lock:
            cached = self._cache.get(restorer.path)
            if cached is not None:
                self._cache.move_to_end(restorer.path)
                if cached.parked:  # face_restoration_unload sent it to CPU memory after its last use
                    cached.model.to(self.device)
                    cached.parked = False
                return cached
            state = read_state_dict(restorer.path)
            try:
                descriptor = self._arch_registry.load(state)
            except Exception as exc:  # spandrel raises many kinds on inconsistent weights
                raise ModelLoadError(restorer.path, f"spandrel failed to build it ({type(exc).__name__}: {exc})"
                                     ) from exc
            if str(descriptor.architecture.id) != restorer.name:
                raise ModelLoadError(restorer.path, "the file changed since the last refresh")
            model = descriptor.model.to(self.device, dtype=torch.float32).eval()
            loaded = FaceModel(restorer, model, self.device)
            self._cache[restorer.path] = loaded
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
            return loaded

    def restore(
        self,
        image: Image.Image,
        restorer: FaceRestorer,
        visibility: float = 1.0,
        codeformer_weight: float = 0.5,
        should_stop: ShouldStop | None = None,
        unload: bool = False,
    ) -> Image.Image:
        """`restore_faces` with the model of `restorer`, loaded only once a face is found. `unload` (A1111's
        option `face_restoration_unload`): afterwards the model leaves the GPU for CPU memory (it comes
        back on its next use)."""

        def net(x: torch.Tensor, weight: float) -> torch.Tensor:
            model = self.net(restorer)
            if unload:
                used.append(model)
            return model(x, weight)

        used: list[FaceModel] = []
        try:
            return restore_faces(image, net, visibility, codeformer_weight, device=self.device,
                                 should_stop=should_stop)
        finally:
            if used and isinstance(used[0], FaceModel) and self.device.type != "cpu":
                used[0].model.to("cpu")
                used[0].parked = True

    def clear_cache(self) -> None:
        """Drop the loaded models."""
        with self._lock:
            self._cache.clear()
