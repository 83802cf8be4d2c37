"""The device path of txt2img; skipped without CUDA. Every listed sampler runs a hires job on the built-in
model in fp16 (VAE in bf16) and gives a finite, non-blank image of the right size; the seeded CPU noise
makes the CUDA image close to the CPU one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.checkpoints import CheckpointRegistry
from pipeline.models import ModelManager
from pipeline.samplers import api_samplers
from tests.conftest import Env, pixels
from upscalers.registry import UpscalerRegistry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

HR = {"enable_hr": True, "hr_scale": 2.0, "steps": 6, "hr_second_pass_steps": 4, "denoising_strength": 0.5,
      "width": 64, "height": 64, "seed": 11}


@pytest.fixture(scope="module")
def cuda_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("models-cuda")
    mm = ModelManager(CheckpointRegistry(root, root / "data"), torch.device("cuda"), torch.float16,
                      vae_dtype=torch.bfloat16)
    return Env(mm, UpscalerRegistry(root, device=torch.device("cuda")))


@pytest.mark.parametrize("sampler", [s["name"] for s in api_samplers()])
@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_every_sampler_runs_a_hires_job_in_half_precision(cuda_env, env, sampler, upscaler):
    res = cuda_env.run(**HR, sampler_name=sampler, hr_upscaler=upscaler)
    img = pixels(res.images[0])
    assert res.images[0].size == (128, 128) and np.isfinite(img).all() and img.std() > 1
    on_cpu = pixels(env.run(**HR, sampler_name=sampler, hr_upscaler=upscaler).images[0])
    assert np.abs(img.astype(float) - on_cpu).mean() < 12  # same seeds, same noise: only rounding differs
