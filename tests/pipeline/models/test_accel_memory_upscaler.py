"""--medvram and the pixel upscaler: a hires job with an ESRGAN-type upscaler (and extras, through the same
loop) has the upscaler on the compute device only while it upscales, after the checkpoint's running part
has left it. On a CPU-only machine compute and offload are the same device, so the placements' own records
are checked at the moment the upscaler's forward runs; tests/pipeline/test_cuda.py checks real devices."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from spandrel.architectures.Compact import Compact

from pipeline.models.accel import Accel, choose
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from tests.conftest import Env, pixels
from upscalers import upscale
from upscalers.registry import UpscalerRegistry

CPU = torch.device("cpu")
JOB = {"enable_hr": True, "hr_scale": 2.0, "seed": 9, "hr_upscaler": "Compact-x4"}


def _models_dir(root: Path) -> Path:
    torch.manual_seed(5)
    compact = Compact(num_feat=8, num_conv=2, upscale=4)
    (root / "RealESRGAN").mkdir(parents=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in compact.state_dict().items()},
                                str(root / "RealESRGAN" / "Compact-x4.safetensors"))
    return root


def _env(root: Path, mode: str, offload: torch.device | None) -> Env:
    mm = ModelManager(CheckpointRegistry(root, root / "data"), CPU, torch.float32,
                      accel=Accel(choose(CPU, "fp32"), memory=mode), max_loaded=1)
    upscalers = UpscalerRegistry(root, offload=offload)
    upscalers.make_room = mm.release_device  # as server/services.py wires it
    return Env(mm, upscalers)


def test_medvram_hires_upscaler_runs_alone_on_the_device(tmp_path: Any) -> None:
    root = _models_dir(tmp_path)
    med = _env(root, "medvram", offload=CPU)
    placement = med.model().extra["placement"]
    upscaler = med.upscalers.load(med.upscalers.resolve("Compact-x4"))  # cached: the job runs this one
    seen: list[tuple[tuple[str, str] | None, str | None]] = []
    hook = upscaler.descriptor.model.register_forward_pre_hook(
        lambda *_: seen.append((med.upscalers.placement_log[-1] if med.upscalers.placement_log else None,
                                placement.active)))
    try:
        image = med.run(**JOB).images[0]
    finally:
        hook.remove()
    # while it upscaled: the upscaler was in and no part of the checkpoint was on the device
    assert seen and set(seen) == {(("Compact-x4", "in"), None)}
    assert med.upscalers.placement_log == [("Compact-x4", "in"), ("Compact-x4", "out")]
    moves = placement.log
    released = moves.index(("", "vae"))  # pass one's decode done, the VAE left before the upscaler came
    assert moves[:released] == [("text_encoder", ""), ("unet", "text_encoder"), ("vae", "unet")]
    assert moves[released + 1] == ("vae", "")  # back in to encode the upscaled image
    # same device, same dtype: the very image of the normal mode
    normal = _env(root, "none", offload=None)
    assert np.array_equal(pixels(image), pixels(normal.run(**JOB).images[0]))
    assert normal.upscalers.placement_log == []  # without a memory mode nothing moves


def test_extras_upscale_moves_the_model_in_and_out(tmp_path: Any) -> None:
    registry = UpscalerRegistry(_models_dir(tmp_path), offload=CPU)
    calls: list[str] = []
    registry.make_room = lambda: calls.append("make_room")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    out = upscale(image, 2, registry.resolve("Compact-x4"), registry)
    assert out.size == (64, 48)
    assert calls == ["make_room"] and registry.placement_log == [("Compact-x4", "in"), ("Compact-x4", "out")]
    plain = UpscalerRegistry(tmp_path)
    assert np.array_equal(np.asarray(out), np.asarray(upscale(image, 2, plain.resolve("Compact-x4"), plain)))
