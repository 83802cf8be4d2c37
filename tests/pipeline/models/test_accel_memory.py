"""Memory modes (--medvram, --lowvram, --medvram-sdxl): which part of the model sits on the compute device at
each phase of a hires job. On a CPU-only machine compute and offload are the same device, so the placement's
own record is checked (a recording hook reads which part is active when each module runs); the CUDA test in
test_cuda.py checks the real devices."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pipeline.models.accel import Accel, choose
from pipeline.models.accel.memory import effective_mode
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from tests.conftest import Env, pixels
from upscalers.registry import UpscalerRegistry

CPU = torch.device("cpu")
JOB = {"enable_hr": True, "hr_scale": 2.0, "seed": 5}


def _env(root: Any, mode: str, models_dir: Any = None) -> Env:
    folder = models_dir or root
    mm = ModelManager(CheckpointRegistry(folder, root / "data"), CPU, torch.float32,
                      accel=Accel(choose(CPU, "fp32"), memory=mode), max_loaded=1)
    return Env(mm, UpscalerRegistry(folder))


def _record(model: Any) -> tuple[list[tuple[str, str | None]], list[Any]]:
    """(module that ran, part active on the compute device at that moment) for every component forward."""
    seen: list[tuple[str, str | None]] = []
    placement = model.extra["placement"]
    named = {"text_encoder": model.text_encoders[0], "unet": model.unet, "vae": model.vae.decoder}
    handles = [m.register_forward_pre_hook(lambda *_a, _n=n: seen.append((_n, placement.active)))
               for n, m in named.items()]
    return seen, handles


def test_medvram_keeps_only_the_running_component_on_the_device(tmp_path: Any, env: Env) -> None:
    med = _env(tmp_path, "medvram")
    model = med.model()
    placement = model.extra["placement"]
    assert model.device == CPU and placement.active is None
    seen, handles = _record(model)
    try:
        image = med.run(**JOB).images[0]
    finally:
        for h in handles:
            h.remove()
    assert {(name, active) for name, active in seen} == {("text_encoder", "text_encoder"), ("unet", "unet"),
                                                        ("vae", "vae")}
    moves = [m for m in placement.log]
    assert moves[:3] == [("text_encoder", ""), ("unet", "text_encoder"), ("vae", "unet")]
    # same device and dtype as the normal mode: the very same image
    assert np.array_equal(pixels(image), pixels(env.run(**JOB).images[0]))


def test_lowvram_moves_the_unet_block_by_block(tmp_path: Any, env: Env) -> None:
    low = _env(tmp_path, "lowvram")
    model = low.model()
    placement = model.extra["placement"]
    blocks = [n for n in placement.parts if n.startswith("unet.")]
    assert "unet.mid_block" in blocks and "unet.down_blocks.0" in blocks and "unet" not in placement.parts
    image = low.run(**JOB).images[0]
    unet_moves = [name for name, _out in placement.log if name.startswith("unet.")]
    calls = 8  # 4 steps in each pass, one CFG-batched UNet call per step
    assert unet_moves.count("unet.mid_block") == calls
    assert unet_moves.count("unet.conv_in") == calls
    assert np.array_equal(pixels(image), pixels(env.run(**JOB).images[0]))


def test_medvram_sdxl_applies_to_sdxl_checkpoints_only(tmp_path: Any, tiny_checkpoints: dict[str, Any]) -> None:
    assert effective_mode("medvram-sdxl", "sdxl") == "medvram"
    assert effective_mode("medvram-sdxl", "sd1") == "none"
    env2 = _env(tmp_path, "medvram-sdxl", tiny_checkpoints["root"])
    sd1 = env2.model(tiny_checkpoints["sd1"])
    assert "placement" not in sd1.extra
    sdxl = env2.model(tiny_checkpoints["sdxl"])
    placement = sdxl.extra["placement"]
    assert {"text_encoder", "text_encoder.1", "unet", "vae"} <= set(placement.parts)
    res = env2.run(**{**JOB, "steps": 2}, options={"sd_model_checkpoint": tiny_checkpoints["sdxl"]})
    assert res.images[0].size == (128, 128)
    assert [name for name, _ in placement.log][:3] == ["text_encoder", "text_encoder.1", "unet"]


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_memory_modes_load_on_the_cpu_and_compute_on_the_device(mode: str) -> None:
    accel = Accel(choose(CPU, "fp32"), memory=mode)
    assert accel.load_device(torch.device("cuda")) == CPU
    assert Accel(choose(CPU, "fp32")).load_device(torch.device("cuda")) == torch.device("cuda")
