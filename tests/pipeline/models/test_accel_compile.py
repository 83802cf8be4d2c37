"""`--compile`: the UNet and VAE compiled with torch.compile (inductor) give the eager images within a stated
tolerance, a warmed-up hires job compiles nothing more, a repeated job recompiles nothing, and the generated
code is cached under the data dir. One micro SD 1.x file (one UNet level) keeps inductor's work small: this
is still the slowest test here (about a minute and a half of CPU time on 2 cores, cold)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.models.accel import Accel, choose
from pipeline.models.accel.compiling import compiler_problem
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from tests.conftest import Env, pixels
from upscalers.registry import UpscalerRegistry

CPU = torch.device("cpu")
MICRO_UNET = {"layers_per_block": 1, "block_out_channels": (32,), "down_block_types": ("CrossAttnDownBlock2D",),
              "up_block_types": ("CrossAttnUpBlock2D",)}
JOB = {"enable_hr": True, "hr_scale": 2.0, "seed": 9}  # 64x64 -> 128x128, 4 + 4 steps
# compiled vs eager, 8-bit levels: inductor reorders float sums (same math, other rounding)
MEAN_TOLERANCE, MAX_TOLERANCE = 0.5, 4

pytestmark = [pytest.mark.slow, pytest.mark.skipif(compiler_problem(CPU) is not None,
                                                  reason=f"inductor cannot compile here: {compiler_problem(CPU)}")]


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def micro_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures.tinymodels import build_tiny_sd1

    root = tmp_path_factory.mktemp("micro")
    build_tiny_sd1(root / "work", seed=3, unet=MICRO_UNET).write_safetensors(
        root / "Stable-diffusion" / "micro.safetensors")
    return root


def _env(root: Path, data: Path, accel: Accel) -> Env:
    mm = ModelManager(CheckpointRegistry(root, data), CPU, torch.float32, builtin=False, accel=accel)
    return Env(mm, UpscalerRegistry(root))


def test_compiled_forwards_match_eager_and_compile_once(micro_folder: Path, tmp_path: Path) -> None:
    eager = _env(micro_folder, tmp_path / "eager", Accel(choose(CPU, "fp32")))
    want = pixels(eager.run(**JOB).images[0]).astype(np.int16)

    cache = tmp_path / "data" / "compile-cache"
    accel = Accel(choose(CPU, "fp32"), compile=True, cache_dir=cache, warmup=[(64, 64), (128, 128)])
    compiled = _env(micro_folder, tmp_path / "data", accel)
    before = _graphs()
    model: Any = compiled.model()  # load, compile, warm up both sizes of the job
    assert model.extra.get("compiled")
    warmed = _graphs()
    assert warmed > before
    got = pixels(compiled.run(**JOB).images[0]).astype(np.int16)
    assert _graphs() == warmed, "the warmed-up hires job compiled again"
    diff = np.abs(got - want)
    assert diff.mean() <= MEAN_TOLERANCE and diff.max() <= MAX_TOLERANCE, (diff.mean(), diff.max())
    again = pixels(compiled.run(**JOB).images[0]).astype(np.int16)
    assert _graphs() == warmed, "a repeated job recompiled"
    assert np.array_equal(again, got)
    assert any(cache.rglob("*.py")) or any(cache.rglob("*.so")), "no generated code cached under the data dir"
