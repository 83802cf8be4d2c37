"""sd-webui-controlnet's units in a request: checked before the job is queued, then turned into the
residuals of each sampling pass (`for_pass`, called once per pass by `jobs/common.run_pass`).

Before any work (`parse`): each element of `alwayson_scripts.ControlNet.args` is validated with the
extension's fields and legacy forms; a unit without `enabled: true` does nothing (one log line, as the
extension ignores it); the module, the model (title, bare or partial name), its family against the
checkpoint's, and the image (decodable; required on txt2img) are checked, each failure a 400 naming
`alwayson_scripts.ControlNet.args[i].<field>`.

Per pass: the unit's input (its image, else the pass's init picture: img2img, SD upscale tiles) goes
through the preprocessor once, the detected map is fitted to the pass's size by the resize mode, and the
unit acts as `hr_option` says (txt2img's hires pass is "high res"), scaled as its control mode says."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError

from pipeline.jobs.controlnet import hints, preprocessors
from pipeline.jobs.img2img.resize import resize_image
from pipeline.models import vae_codec
from pipeline.models.controlnet.residuals import (
    ActiveControl,
    ColorFix,
    ControlResiduals,
    Restore,
    adapter_scales,
    residual_scales,
)
from pipeline.models.controlnet.store import ControlNetFile, ControlNetStore
from pipeline.runtime.errors import InvalidRequest, ModelLoadError
from schemas.controlnet import ControlNetUnit

log = logging.getLogger("hiresd.controlnet")
KEY = "controlnet"
FIELD = "alwayson_scripts.ControlNet.args"


@dataclass
class Unit:
    """An enabled unit, resolved: `number` counts enabled units (the infotext's `ControlNet N`)."""

    index: int
    number: int
    spec: ControlNetUnit
    file: ControlNetFile
    pre: preprocessors.Preprocessor
    image: np.ndarray | None  # RGB uint8, or None: the pass's init picture
    res: int
    a: float
    b: float
    seed: int | None = None  # NumPy seed of seeded preprocessors (shuffle): the job's, as the extension
    _detected: np.ndarray | None = field(default=None, repr=False)

    def field(self, name: str) -> str:
        return f"{FIELD}[{self.index}].{name}"

    def detect(self, image: np.ndarray | None, width: int, height: int) -> np.ndarray:
        """The preprocessor's map of `image` (None: the unit's own image, computed once per job), pixel
        perfect against width x height."""
        own = image is None
        if own and self._detected is not None:
            return self._detected
        src = self.image if own else image
        res = self.res
        if self.spec.pixel_perfect:
            res = hints.pixel_perfect_resolution(src, width, height, self.spec.resize_mode)
        out = self.pre.apply(src, res, self.a, self.b, self.seed)
        if own:
            self._detected = out
        return out

    def infotext(self) -> str:
        s = self.spec
        values = {
            "Module": self.pre.name,
            "Model": self.file.title,
            "Weight": s.weight,
            "Resize Mode": s.resize_mode,
            "Processor Res": self.res,
            "Threshold A": self.a,
            "Threshold B": self.b,
            "Guidance Start": s.guidance_start,
            "Guidance End": s.guidance_end,
            "Pixel Perfect": s.pixel_perfect,
            "Control Mode": s.control_mode,
        }
        return ", ".join(f"{k}: {v}" for k, v in values.items())


@dataclass
class Units:
    """A job's enabled units and the maps they detected (appended to the job's images)."""

    items: list[Unit]
    seen: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (unit number, pass_no): map
    last: dict[int, list[np.ndarray]] = field(default_factory=dict)  # unit number: the last pass's hint rows


def entry_args(alwayson_scripts: dict[str, Any] | None) -> list[Any] | None:
    entry = next((v for k, v in (alwayson_scripts or {}).items() if str(k).lower() == KEY), None)
    if entry is None:
        return None
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list):
        raise InvalidRequest(FIELD, 'expected {"args": [unit, ...]} (a list of ControlNet units)')
    return args


def _image_parts(spec: ControlNetUnit) -> tuple[Any, Any]:
    img, mask = spec.image, spec.mask
    if isinstance(img, (list, tuple)):
        if not img:
            return None, mask
        if isinstance(img[0], dict):
            img = img[0]
        else:
            img, mask = img[0], (img[1] if len(img) > 1 else mask)
    if isinstance(img, dict):
        img, mask = img.get("image"), img.get("mask", mask)
    # webuiapi sends "" for a unit without an image
    return (None, None) if img in (None, "") else (img, None if mask == "" else mask)


def _decode(value: Any, where: str, decode: Callable[[str], Image.Image]) -> np.ndarray:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(where, f"expected a base64-encoded image, got {type(value).__name__}")
    try:
        image = decode(value)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the client's bad image
        raise InvalidRequest(where, f"not a decodable image ({exc})") from None
    arr = np.asarray(image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image.convert("RGB"))
    return np.ascontiguousarray(arr)


def _unit_input(
    spec: ControlNetUnit, index: int, decode: Callable[[str], Image.Image], inpaint: bool
) -> np.ndarray | None:
    """The unit's picture as the extension takes it: RGB (an alpha channel composited over white), with its
    mask as a 4th channel for inpaint modules; for the others a drawn (non-trivial) mask is the input."""
    raw_img, raw_mask = _image_parts(spec)
    if raw_img is None:
        return None
    where = f"{FIELD}[{index}].image"
    img = _decode(raw_img, where, decode)
    alpha = None
    if raw_mask is not None:
        m = _decode(raw_mask, f"{FIELD}[{index}].mask", decode)
        alpha = preprocessors.hwc3(m[:, :, :3] if m.ndim == 3 else m)[:, :, 0]
        if alpha.shape != img.shape[:2]:
            raise InvalidRequest(
                f"{FIELD}[{index}].mask",
                f"the mask is {alpha.shape[1]}x{alpha.shape[0]}, the "
                f"image {img.shape[1]}x{img.shape[0]}; they must match",
            )
    rgb = preprocessors.hwc3(img)
    if inpaint:
        mask = alpha if alpha is not None else np.zeros(rgb.shape[:2], np.uint8)
        return np.concatenate([rgb, mask[:, :, None]], axis=2)
    if alpha is not None and not ((alpha <= 5).all() or (alpha >= 250).all()):
        return preprocessors.hwc3(alpha)  # the extension's canvas-scribble rule: the drawn mask is the input
    return rgb


def parse(
    args: list[Any] | None,
    store: ControlNetStore | None,
    family: str | None,
    decode: Callable[[str], Image.Image],
    img2img: bool,
) -> Units | None:
    """The enabled units of a request, checked (see the module's docstring); None when there are none."""
    if not args:
        return None
    items: list[Unit] = []
    for i, raw in enumerate(args):
        try:
            spec = ControlNetUnit.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
            raise InvalidRequest(f"{FIELD}[{i}]{'.' + loc if loc else ''}", str(err.get("msg"))) from None
        if not spec.enabled:
            log.info('ControlNet unit %d is not enabled (send "enabled": true); it does nothing', i)
            continue
        pre = preprocessors.resolve(spec.module, f"{FIELD}[{i}].module")
        if store is None or spec.model in ("None", "none", ""):
            raise InvalidRequest(
                f"{FIELD}[{i}].model",
                "a ControlNet model is needed (put ControlNet files in "
                "models/ControlNet or --controlnet-dir)",
                store.titles() if store else [],
            )
        file = store.find(spec.model, f"{FIELD}[{i}].model")
        try:
            arch = file.arch()
        except ModelLoadError as exc:
            raise InvalidRequest(f"{FIELD}[{i}].model", exc.reason) from None
        if family is not None and arch.family != family:
            raise InvalidRequest(
                f"{FIELD}[{i}].model",
                f"{file.title} is an {_LABEL[arch.family]} ControlNet; "
                f"the checkpoint is {_LABEL[family]}: use a ControlNet made for it",
            )
        image = _unit_input(spec, i, decode, pre.inpaint)
        if image is None and not img2img:
            raise InvalidRequest(
                f"{FIELD}[{i}].image",
                "no input image: txt2img units need an image (img2img units without one use the init image)",
            )
        res, a, b = pre.settle(spec.processor_res, spec.threshold_a, spec.threshold_b)
        for name, sent, used in (
            ("processor_res", spec.processor_res, res),
            ("threshold_a", spec.threshold_a, a),
            ("threshold_b", spec.threshold_b, b),
        ):
            if sent != used and sent != -1:
                log.info("[%s.%s] Invalid value(%s), using default value %s.", pre.name, name, sent, used)
        items.append(Unit(i, len(items), spec, file, pre, image, res, a, b))
    return Units(items) if items else None


_LABEL = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def write_infotext(units: Units | None, params: dict[str, Any]) -> None:
    for u in units.items if units else []:
        params[f"ControlNet {u.number}"] = u.infotext()


@dataclass(frozen=True)
class PassPicture:
    """An img2img pass's init pictures, one per batch row (or one for all), for units without an image of
    their own: `mode` fits them to the pass's size. `boxes`/`full`: each row is the box of a bigger picture
    of size `full` (only-masked inpainting, Ultimate SD upscale, SD upscale tiles); a unit's own image is
    then cut the same way, as the extension does for A1111's masked crops. `masks`: the request's inpaint
    mask (L, 255 = repaint) beside each picture, for inpaint modules."""

    images: list[Image.Image]
    mode: str = hints.JUST_RESIZE
    boxes: list[tuple[int, int, int, int]] | None = None
    full: tuple[int, int] | None = None
    masks: list[Image.Image] | None = None


def unit_hints(
    u: Unit, picture: PassPicture | None, width: int, height: int, target: tuple[int, int]
) -> list[np.ndarray]:
    """The unit's hint map(s) at width x height: one for all rows, or one per row of `picture`."""
    if u.image is None:
        if picture is None:
            raise InvalidRequest(u.field("image"), "no input image for this unit")
        rows = []
        for r, img in enumerate(picture.images):
            arr = _array(img)
            if u.pre.inpaint:  # the init picture with the request's mask (none: nothing to repaint)
                mask = picture.masks[r] if picture.masks else None
                m = np.asarray(mask.convert("L")) if mask is not None else np.zeros(arr.shape[:2], np.uint8)
                arr = np.concatenate([arr, m[:, :, None]], axis=2)
            rows.append(hints.fit(u.detect(arr, *target), picture.mode, width, height))
        return rows
    if picture is not None and picture.boxes is not None and picture.full is not None:
        fw, fh = picture.full
        whole = resize_image(_A1111_MODE[u.spec.resize_mode], Image.fromarray(u.image), fw, fh)
        rows = []
        for box in picture.boxes:
            cut = resize_image(_A1111_MODE[hints.RESIZE_AND_FILL], whole.crop(box), width, height)
            arr = np.ascontiguousarray(np.asarray(cut))
            rows.append(hints.fit(u.detect(arr, *target), hints.JUST_RESIZE, width, height))
        return rows
    return [hints.fit(u.detect(None, *target), u.spec.resize_mode, width, height)]


_A1111_MODE = {hints.JUST_RESIZE: 0, hints.CROP_AND_RESIZE: 1, hints.RESIZE_AND_FILL: 2}


def for_pass(
    units: Units | None,
    store: ControlNetStore,
    model: Any,
    width: int,
    height: int,
    pass_no: int,
    hires_pass: bool,
    target: tuple[int, int],
    picture: PassPicture | None,
) -> ControlResiduals | None:
    """The residuals of one pass at width x height: `hires_pass` whether it is txt2img's hires pass,
    `target` (width, height) the job's size (pixel perfect), `picture` an img2img pass's init pictures.
    The first row's map of each pass is kept for the response (`Units.maps`)."""
    if not units:
        return None
    active: list[ActiveControl] = []
    for u in units.items:
        s = u.spec
        rows = unit_hints(u, picture, width, height, target)
        units.seen.setdefault((u.number, pass_no), rows[0])
        units.last[u.number] = rows
        if (s.hr_option == "Low res only" and hires_pass) or (
            s.hr_option == "High res only" and not hires_pass
        ):
            continue
        if s.weight == 0 or s.guidance_end == 0:
            continue
        arch = u.file.arch()
        if arch.family != model.family:
            raise InvalidRequest(
                u.field("model"),
                f"{u.file.title} is an {_LABEL[arch.family]} ControlNet; the "
                f"model of this pass is {_LABEL.get(model.family, model.family)}",
            )
        placement = model.extra.get("placement")
        net = store.load(
            u.file,
            dict(model.unet.config),
            placement.offload if placement else model.device,
            model.dtype,
            base_unet=model.unet,
            base_version=model.extra.get("networks.salt"),
        )
        soft = s.control_mode != "Balanced" or (hires_pass and u.pre.soft_in_hires)
        scales = (
            list(s.advanced_weighting)
            if s.advanced_weighting
            else adapter_scales(s.weight, soft)
            if arch.is_adapter
            else residual_scales(s.weight, soft, model.family == "sdxl")
        )
        hint = torch.cat([hints.to_tensor(r) for r in rows])
        post: Any = None
        if u.pre.name == "inpaint_only":
            post = _restore(model, rows, s.weight)
        elif u.pre.name.startswith("tile_colorfix"):
            k = int(u.a) * (2 if hires_pass else 1)
            sharp = u.b * 0.01 if u.pre.name.endswith("+sharp") else None
            latent = vae_codec.encode(model, torch.cat([hints.to_tensor(r) for r in rows])).float()
            post = ColorFix(latent, k, sharp, _training_alphas(model.scheduler_config), s.weight)
        active.append(
            ActiveControl(
                net,
                hint,
                scales,
                cond_only=s.control_mode == "ControlNet is more important",
                start=s.guidance_start,
                end=s.guidance_end,
                pool="shuffle" in u.file.path.stem.lower(),
                post=post,
            )
        )
    return ControlResiduals(active, model.extra.get("placement")) if active else None


def _training_alphas(config: dict[str, Any]) -> torch.Tensor:
    """The checkpoint's training noise schedule (cumulative alphas), as the LDM model holds it."""
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    if config.get("beta_schedule", "scaled_linear") == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    else:
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _restore(model: Any, rows: list[np.ndarray], weight: float) -> Restore:
    """inpaint_only: the picture VAE-encoded and the mask pooled to the latent grid, as the extension's."""
    rgba = torch.cat([torch.from_numpy(r.astype(np.float32) / 255.0).permute(2, 0, 1)[None] for r in rows])
    latent = vae_codec.encode(model, rgba[:, :3]).float()
    mask = torch.nn.functional.max_pool2d(rgba[:, 3:4], (10, 10), stride=(8, 8), padding=1)
    return Restore(latent, mask, _training_alphas(model.scheduler_config), weight)


def _inpaint_only_blend(rows: list[np.ndarray], images: list[Image.Image]) -> list[Image.Image]:
    """inpaint_only's last step on the decoded images: the kept picture back outside the mask, the mask
    dilated and blurred by 7 px (the extension's `control_net_inpaint_blur_sigma` default)."""
    out = []
    for i, img in enumerate(images):
        row = rows[i if i < len(rows) else 0]
        x = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        if row.shape[:2] != x.shape[:2]:
            out.append(img)
            continue
        m = cv2.dilate(row[:, :, 3].astype(np.float32) / 255.0, np.ones((7, 7), np.uint8))
        m = cv2.blur(m, (7, 7))[:, :, None]
        y = (m * x.clip(0, 1) + (1 - m) * row[:, :, :3].astype(np.float32) / 255.0).clip(0, 1)
        out.append(Image.fromarray(np.round(y * 255.0).astype(np.uint8)))
    return out


def postprocess(units: Units | None, images: list[Image.Image]) -> list[Image.Image]:
    """The units' post-processing of the decoded images (before face restoration), as the extension's:
    inpaint_only puts the kept picture back outside the mask; recolor units replace the lightness (LAB L,
    recolor_luminance) or the value (HSV V, recolor_intensity) of each image (row i, or the only one) by
    the final pass's map."""
    for u in units.items if units else []:
        if u.number not in units.last:
            continue
        if u.pre.name == "inpaint_only":
            images = _inpaint_only_blend(units.last[u.number], images)
            continue
        if not u.pre.name.startswith("recolor"):
            continue
        rows = units.last[u.number]
        space, back, channel = (
            (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB, 0)
            if "luminance" in u.pre.name
            else (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2)
        )
        out = []
        for i, img in enumerate(images):
            feed = rows[i if i < len(rows) else 0][:, :, 0]
            arr = np.asarray(img.convert("RGB"))
            if feed.shape != arr.shape[:2]:
                log.error(
                    "ControlNet recolor: the map is %s, the image %s; left as it is", feed.shape, arr.shape
                )
                out.append(img)
                continue
            conv = cv2.cvtColor(arr, space)
            conv[:, :, channel] = feed
            out.append(Image.fromarray(cv2.cvtColor(conv, back)))
        images = out
    return images


def _array(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def detected_maps(units: Units | None) -> list[Image.Image]:
    """The maps the extension appends to the response images: per unit with `save_detected_map`, the hires
    pass's map then the first pass's (txt2img with hires), else the pass's."""
    out: list[Image.Image] = []
    for u in units.items if units else []:
        if u.spec.save_detected_map:
            out += [
                Image.fromarray(hints.show_inpaint(units.seen[(u.number, n)]))
                for n in (2, 1)
                if (u.number, n) in units.seen
            ]
    return out
