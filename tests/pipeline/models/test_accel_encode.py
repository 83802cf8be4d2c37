"""VAE encode under bf16 (pipeline.models.vae_codec.encode): the latents an img2img or hires job starts from are float32,
as the sampler's arithmetic is, not re-rounded to the VAE's bf16 after scaling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models import vae_codec as vae
from pipeline.models.accel import Accel, choose
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from tests.conftest import Env, pixels
from upscalers.registry import UpscalerRegistry

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bf16_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("accel-encode")
    policy = choose(CPU, "bf16", native_bf16=True)
    mm = ModelManager(CheckpointRegistry(root, root / "data"), CPU, policy.dtype, policy.vae_dtype,
                      accel=Accel(policy))
    return Env(mm, UpscalerRegistry(root))


def test_bf16_encode_gives_float32_latents_at_full_precision(bf16_env: Env) -> None:
    model = bf16_env.model()
    assert model.dtype == torch.bfloat16
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    latents = vae.encode(model, images)
    assert latents.dtype == torch.float32 and latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
    # the scaled values keep float32 precision: most are not representable in bf16
    assert (latents != latents.bfloat16().float()).float().mean() > 0.5


def test_bf16_hires_job_through_a_pixel_upscaler_still_repeats(bf16_env: Env) -> None:
    job = {"enable_hr": True, "hr_scale": 2.0, "seed": 5, "hr_upscaler": "Lanczos"}
    first, again = bf16_env.run(**job).images[0], bf16_env.run(**job).images[0]
    assert first.size == (128, 128) and np.array_equal(pixels(first), pixels(again))
