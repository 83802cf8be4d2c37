"""sd-webui-controlnet's preprocessors ("modules") that need no downloaded weights, computed as the
extension computes them, with its sliders (resolution, threshold_a, threshold_b: name, default, range).

Most first resize the input so that its short side is the processor resolution (cubic when enlarging,
area when shrinking), pad it with edge pixels to multiples of 64, process, and cut the padding off again
(the extension's `resize_image_with_pad`). `none` hands the image on untouched. Modules that need
annotator weights (openpose, depth, hed, ...) are known by name and refused with the file they need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.runtime.errors import InvalidRequest


@dataclass(frozen=True)
class Slider:
    name: str
    value: float
    min: float
    max: float
    step: float = 1.0

    def as_api(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


RESOLUTION = Slider("Resolution", 512, 64, 2048, 8)


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[[np.ndarray, int, float, float], np.ndarray]
    resolution: Slider | None = RESOLUTION
    slider_1: Slider | None = None
    slider_2: Slider | None = None
    tags: tuple[str, ...] = ()
    soft_in_hires: bool = False  # the extension forces soft injection in the hires pass (canny, mlsd)
    inpaint: bool = False  # takes the picture with its mask (RGBA) and hands the ControlNet inpaint hint
    seeded: bool = False  # draws random numbers: `apply` hands it a generator from the job's seed

    def apply(self, img: np.ndarray, res: int, a: float, b: float, seed: int | None = None) -> np.ndarray:
        """The detected map. A seeded preprocessor (shuffle) draws from NumPy's legacy generator seeded as
        the extension seeds it ((seed + subseed) & 0xFFFFFFFF), or unseeded when `seed` is None."""
        if self.seeded:
            return self.run(img, res, a, b, np.random.RandomState(seed))  # type: ignore[call-arg]
        return self.run(img, res, a, b)

    def settle(self, res: int, a: float, b: float) -> tuple[int, float, float]:
        """Out-of-range or -1 values become the defaults, as the extension's unit validator does."""

        def fix(v: float, s: Slider | None) -> float:
            return v if s is not None and s.min <= v <= s.max else (s.value if s is not None else v)

        return (
            int(fix(res, self.resolution if self.resolution is not None else RESOLUTION)),
            float(fix(a, self.slider_1)),
            float(fix(b, self.slider_2)),
        )

    def sliders(self) -> list[dict[str, Any]]:
        return [s.as_api() for s in (self.resolution, self.slider_1, self.slider_2) if s is not None]


def hwc3(x: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, 1|3|4]) -> (H, W, 3); alpha composited over white, as the extension's HWC3."""
    if x.ndim == 2:
        x = x[:, :, None]
    c = x.shape[2]
    if c == 3:
        return x
    if c == 1:
        return np.concatenate([x, x, x], axis=2)
    color = x[:, :, :3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def resize_with_pad(
    img: np.ndarray, resolution: int
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Short side to `resolution`, edge-padded to multiples of 64; and the function cutting the pad off."""
    img = hwc3(img)
    h, w = img.shape[:2]
    k = float(resolution) / float(min(h, w))
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    ph, pw = int(np.ceil(th / 64.0) * 64 - th), int(np.ceil(tw / 64.0) * 64 - tw)
    padded = np.pad(img, [[0, ph], [0, pw], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), lambda x: np.ascontiguousarray(x[:th, :tw])


def _none(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    return img


def _inpaint(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    return img  # RGBA: the picture and the mask to repaint, handed on (the hint protocol is applied later)


def _invert(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    return 255 - hwc3(img)


def _canny(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    padded, unpad = resize_with_pad(img, res)
    return unpad(cv2.cvtColor(cv2.Canny(padded, int(a), int(b)), cv2.COLOR_GRAY2RGB))


def _blur_gaussian(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    padded, unpad = resize_with_pad(img, res)
    return cv2.GaussianBlur(unpad(padded), (0, 0), float(a))


def _scribble_xdog(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    padded, unpad = resize_with_pad(img, res)
    g1 = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros_like(padded, dtype=np.uint8)
    out[2 * (255 - dog) > a] = 255
    return unpad(out)


def _threshold(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    padded, unpad = resize_with_pad(img, res)
    out = np.zeros_like(padded, dtype=np.uint8)
    out[np.min(padded, axis=2) > a] = 255
    return unpad(out)


def _noise_disk(h: int, w: int, f: int, rng: np.random.RandomState) -> np.ndarray:
    noise = rng.uniform(low=0, high=1, size=((h // f) + 2, (w // f) + 2, 1))
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f : f + h, f : f + w]
    noise -= np.min(noise)
    noise /= np.max(noise)
    return noise[:, :, None]


def _shuffle(img: np.ndarray, res: int, a: float, b: float, rng: np.random.RandomState) -> np.ndarray:
    """Content shuffle: the picture (at the processor resolution) remapped by a smooth random flow."""
    padded, unpad = resize_with_pad(img, res)
    img = unpad(padded)
    h, w = img.shape[:2]
    x = _noise_disk(h, w, 256, rng) * float(w - 1)
    y = _noise_disk(h, w, 256, rng) * float(h - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    return cv2.remap(img, flow, None, cv2.INTER_LINEAR)


def _recolor(space: int, channel: int) -> Callable[[np.ndarray, int, float, float], np.ndarray]:
    def run(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
        # the extension converts its RGB picture with OpenCV's BGR conversions here (kept: same maps)
        v = cv2.cvtColor(hwc3(img), space)[:, :, channel].astype(np.float32) / 255.0
        return cv2.cvtColor((v**a * 255.0).clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)

    return run


def _color_grid(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    """The T2I-Adapter colour grid: short side to `res` (area), 64x coarser (cubic), back up (nearest)."""
    img = hwc3(img)
    h, w = img.shape[:2]
    nh, nw = (res, round(w / h * res)) if h < w else (round(h / w * res), res)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    small = cv2.resize(img, (nw // 64, nh // 64), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (nw, nh), interpolation=cv2.INTER_NEAREST)


def _tile_resample(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    img = hwc3(img)
    if a < 1.1:
        return img
    h, w = int(img.shape[0] / a), int(img.shape[1] / a)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def _lineart_standard(img: np.ndarray, res: int, a: float, b: float) -> np.ndarray:
    padded, unpad = resize_with_pad(img, res)
    x = padded.astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16, float(np.median(strong)) if strong.size else 16)
    intensity *= 127
    return unpad(intensity.clip(0, 255).astype(np.uint8))


MODEL_FREE: dict[str, Preprocessor] = {
    p.name: p
    for p in (
        Preprocessor("none", _none, resolution=None, tags=("InstructP2P",)),
        Preprocessor("invert", _invert, resolution=None, tags=("Canny", "Lineart", "Scribble", "MLSD")),
        Preprocessor(
            "canny",
            _canny,
            slider_1=Slider("Low Threshold", 100, 1, 255),
            slider_2=Slider("High Threshold", 200, 1, 255),
            tags=("Canny",),
            soft_in_hires=True,
        ),
        Preprocessor(
            "blur_gaussian", _blur_gaussian, slider_1=Slider("Sigma", 9.0, 0.01, 64.0, 0.01), tags=("Tile",)
        ),
        Preprocessor(
            "scribble_xdog", _scribble_xdog, slider_1=Slider("XDoG Threshold", 32, 1, 64), tags=("Scribble",)
        ),
        Preprocessor("threshold", _threshold, slider_1=Slider("Binarization Threshold", 127, 0, 255)),
        Preprocessor(
            "tile_resample",
            _tile_resample,
            resolution=None,
            slider_1=Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01),
            tags=("Tile",),
        ),
        Preprocessor("lineart_standard", _lineart_standard, tags=("Lineart",)),
        Preprocessor(
            "shuffle",
            _shuffle,
            resolution=Slider("Resolution", 512, 512, 512, 8),
            tags=("Shuffle",),
            seeded=True,
        ),
        Preprocessor(
            "recolor_luminance",
            _recolor(cv2.COLOR_BGR2LAB, 0),
            resolution=None,
            slider_1=Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001),
            tags=("Recolor",),
        ),
        Preprocessor(
            "recolor_intensity",
            _recolor(cv2.COLOR_BGR2HSV, 2),
            resolution=None,
            slider_1=Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001),
            tags=("Recolor",),
        ),
        Preprocessor("t2ia_color_grid", _color_grid, tags=("T2I-Adapter",)),
        Preprocessor(
            "tile_colorfix",
            _none,
            resolution=None,
            slider_1=Slider("Variation", 8.0, 3.0, 32.0),
            tags=("Tile",),
        ),
        Preprocessor(
            "tile_colorfix+sharp",
            _none,
            resolution=None,
            slider_1=Slider("Variation", 8.0, 3.0, 32.0),
            slider_2=Slider("Sharpness", 1.0, 0.0, 2.0, 0.01),
            tags=("Tile",),
        ),
        Preprocessor("inpaint_only", _inpaint, resolution=None, tags=("Inpaint",), inpaint=True),
        Preprocessor("inpaint_global_harmonious", _inpaint, resolution=None, tags=("Inpaint",), inpaint=True),
    )
}
ALIASES = {
    "None": "none",
    "canny_edge": "canny",
    "inpaint": "inpaint_global_harmonious",
    "color": "t2ia_color_grid",
    "invert (from white bg & black line)": "invert",
    "lineart_standard (from white bg & black line)": "lineart_standard",
}

# modules that need annotator weights: the file the extension downloads for them (lllyasviel/Annotators)
NEED_WEIGHTS: dict[str, str] = {
    "openpose": "body_pose_model.pth",
    "openpose_face": "body_pose_model.pth + facenet.pth",
    "openpose_faceonly": "facenet.pth",
    "openpose_full": "body_pose_model.pth + hand_pose_model.pth + facenet.pth",
    "openpose_hand": "body_pose_model.pth + hand_pose_model.pth",
    "dw_openpose_full": "yolox_l.onnx + dw-ll_ucoco_384.onnx",
    "animal_openpose": "rtmpose-m_ap10k_256_bs5.onnx",
    "depth": "dpt_hybrid-midas-501f0c75.pt",
    "depth_midas": "dpt_hybrid-midas-501f0c75.pt",
    "depth_leres": "res101.pth",
    "depth_leres++": "res101.pth + latest_net_G.pth",
    "depth_zoe": "ZoeD_M12_N.pt",
    "depth_anything": "depth_anything_vitl14.pth",
    "depth_anything_v2": "depth_anything_v2_vitl.safetensors",
    "depth_hand_refiner": "hr16/ControlNet-HandRefiner-pruned",
    "normal_bae": "scannet.pt",
    "normal_map": "dpt_hybrid-midas-501f0c75.pt",
    "normal_dsine": "dsine.pt",
    "mlsd": "mlsd_large_512_fp32.pth",
    "hed": "ControlNetHED.pth",
    "hed_safe": "ControlNetHED.pth",
    "softedge_hed": "ControlNetHED.pth",
    "softedge_hedsafe": "ControlNetHED.pth",
    "pidinet": "table5_pidinet.pth",
    "softedge_pidinet": "table5_pidinet.pth",
    "pidinet_safe": "table5_pidinet.pth",
    "pidinet_scribble": "table5_pidinet.pth",
    "pidinet_sketch": "table5_pidinet.pth",
    "scribble_hed": "ControlNetHED.pth",
    "scribble_pidinet": "table5_pidinet.pth",
    "softedge_teed": "7_model.pth",
    "lineart": "sk_model.pth",
    "lineart_realistic": "sk_model.pth",
    "lineart_coarse": "sk_model2.pth",
    "lineart_anime": "netG.pth",
    "lineart_anime_denoise": "erika.pth",
    "manga_line": "erika.pth",
    "segmentation": "upernet_global_small.pth",
    "seg_ufade20k": "upernet_global_small.pth",
    "oneformer_coco": "250_16_swin_l_oneformer_coco_100ep.pth",
    "seg_ofcoco": "250_16_swin_l_oneformer_coco_100ep.pth",
    "oneformer_ade20k": "250_16_swin_l_oneformer_ade20k_160k.pth",
    "seg_ofade20k": "250_16_swin_l_oneformer_ade20k_160k.pth",
    "anime_face_segment": "UNet.pth",
    "mediapipe_face": "the mediapipe package",
    "densepose": "densepose_r50_fpn_dl.torchscript",
    "inpaint_only+lama": "ControlNetLama.pth",
    "clip_vision": "clip_h.pth",
    "ip-adapter_clip_sd15": "clip_h.pth",
    "ip-adapter_clip_sdxl": "clip_g.pth",
    "ip-adapter_clip_sdxl_plus_vith": "clip_h.pth",
    "ip-adapter_face_id": "the insightface package",
    "ip-adapter_face_id_plus": "the insightface package + clip_h.pth",
    "instant_id_face_embedding": "the insightface package",
    "instant_id_face_keypoints": "the insightface package",
    "revision_clipvision": "clip_g.pth",
    "revision_ignore_prompt": "clip_g.pth",
}
NOT_YET = (
    "reference_only",
    "reference_adain",
    "reference_adain+attn",
    "t2ia_sketch_pidi",
    "t2ia_style_clipvision",
)


def names(alias_names: bool = False) -> list[str]:
    """The modules hiresd runs; `alias_names`: as the extension's UI labels them."""
    if not alias_names:
        return list(MODEL_FREE)
    label = {name: alias for alias, name in ALIASES.items() if "(" in alias}
    return [label.get(n, n) for n in MODEL_FREE]


def resolve(module: str, field: str) -> Preprocessor:
    """The preprocessor a unit's `module` names; a clear 400 for the ones hiresd cannot run."""
    name = ALIASES.get(module, module)
    key = name.lower()
    if key in MODEL_FREE:
        return MODEL_FREE[key]
    if key in NEED_WEIGHTS:
        raise InvalidRequest(
            field,
            f"the preprocessor {module!r} needs annotator weights ({NEED_WEIGHTS[key]}, which the "
            "extension keeps in models/ControlNetAnnotators/); hiresd does not run annotator networks "
            "yet: send a ready-made control map with module 'none'",
        )
    if key in NOT_YET:
        raise InvalidRequest(
            field,
            f"the preprocessor {module!r} is not available in hiresd yet; send a "
            "ready-made control map with module 'none'",
            names(),
        )
    raise InvalidRequest(field, f"unknown preprocessor {module!r}", names())
