"""The speed policy (pipeline/accel): CPU bf16 detection, the dtypes and layouts chosen per device and flag,
and what a bf16 job gives a user: the same image for the same seed, close to the fp32 image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.accel import Accel, choose
from pipeline.models.accel.cpu import cpu_flags, native_bf16_flags
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from server.config import from_args
from server.services import pick_accel
from tests.conftest import Env, pixels
from upscalers.registry import UpscalerRegistry

CPU = torch.device("cpu")
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert native_bf16_flags(cpu_flags(SAPPHIRE))
    assert not native_bf16_flags(cpu_flags(SKYLAKE))
    assert cpu_flags("no flags line here") == frozenset()


def test_cpu_auto_is_bf16_only_where_the_cpu_computes_it_natively() -> None:
    fast = choose(CPU, "auto", native_bf16=True)
    assert (fast.dtype, fast.vae_dtype, fast.vae_channels_last) == (torch.bfloat16, None, True)
    plain = choose(CPU, "auto", native_bf16=False)
    assert (plain.dtype, plain.vae_dtype, plain.vae_channels_last) == (torch.float32, None, False)


@pytest.mark.parametrize("line, dtype, vae", [
    ("--precision fp32", torch.float32, None), ("--no-half", torch.float32, None),
    ("--precision full", torch.float32, None), ("--precision fp16", torch.float32, None),
    ("--precision bf16", torch.bfloat16, None),
    ("--precision bf16 --no-half-vae", torch.bfloat16, torch.float32),
    ("--no-half-vae", torch.bfloat16, torch.float32),
])
def test_cpu_flags_choose_the_dtypes(line: str, dtype: torch.dtype, vae: torch.dtype | None) -> None:
    cfg = from_args(["--device", "cpu", *line.split()], environ={})
    p = choose(CPU, cfg.precision, cfg.vae_precision, native_bf16=True)
    assert (p.dtype, p.vae_dtype) == (dtype, vae)
    assert p.vae_channels_last == (dtype == torch.bfloat16 and vae is None)


def test_cuda_policy_is_unchanged() -> None:
    cuda = torch.device("cuda")
    assert (choose(cuda, "auto", cuda_bf16=True).dtype, choose(cuda, "auto", cuda_bf16=True).vae_dtype) == \
        (torch.float16, torch.bfloat16)
    assert choose(cuda, "auto", cuda_bf16=False).vae_dtype == torch.float32
    assert choose(cuda, "fp16", "fp32", cuda_bf16=True).vae_dtype == torch.float32
    assert choose(cuda, "fp32", cuda_bf16=True).dtype == torch.float32
    assert not choose(cuda, "auto", cuda_bf16=True).vae_channels_last


def test_server_policy_follows_the_flags() -> None:
    fp32 = pick_accel(from_args(["--device", "cpu", "--no-half"], environ={})).precision
    assert fp32.dtype == torch.float32
    bf16 = pick_accel(from_args(["--device", "cpu", "--precision", "bf16"], environ={})).precision
    assert bf16.dtype == torch.bfloat16


@pytest.fixture(scope="module")
def bf16_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """The builtin model loaded as `--precision bf16` loads it on the CPU."""
    root = tmp_path_factory.mktemp("accel-bf16")
    policy = choose(CPU, "bf16", native_bf16=True)
    mm = ModelManager(CheckpointRegistry(root, root / "data"), CPU, policy.dtype, policy.vae_dtype,
                      accel=Accel(policy))
    return Env(mm, UpscalerRegistry(root))


def test_bf16_model_is_loaded_in_bf16_with_a_channels_last_vae(bf16_env: Env) -> None:
    model = bf16_env.model()
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    assert next(model.text_encoders[0].parameters()).dtype == torch.bfloat16
    convs = [m.weight for m in model.vae.modules()
             if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.dtype == torch.bfloat16 for w in convs)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_bf16_hires_job_repeats_exactly_and_stays_close_to_fp32(bf16_env: Env, env: Env) -> None:
    job = {"enable_hr": True, "hr_scale": 2.0, "seed": 77}
    first = bf16_env.run(**job).images[0]
    again = bf16_env.run(**job).images[0]
    assert np.array_equal(pixels(first), pixels(again))  # same seed, same configuration: same image
    ref = pixels(env.run(**job).images[0]).astype(np.float64)  # the fp32 image
    mse = float(np.mean((pixels(first).astype(np.float64) - ref) ** 2))
    psnr = 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))
    assert psnr > 30, f"bf16 image too far from fp32: PSNR {psnr:.1f} dB"
    other = pixels(bf16_env.run(**{**job, "seed": 78}).images[0]).astype(np.float64)
    # a different seed differs more from the fp32 image than the bf16 image of the same seed
    assert np.mean(np.abs(other - ref)) > np.mean(np.abs(pixels(first) - ref))


def test_speed_flags_reach_the_policy(tmp_path) -> None:
    cfg = from_args(["--device", "cpu", "--compile", "--compile-warmup", "512x512,1024x768", "--data-dir",
                     str(tmp_path)], environ={})
    accel = pick_accel(cfg)
    assert accel.compile and accel.warmup == [(512, 512), (1024, 768)]
    assert accel.cache_dir == tmp_path / "compile-cache"
    assert from_args(["--medvram-sdxl"], environ={}).memory_mode == "medvram-sdxl"
    assert from_args(["--lowvram", "--medvram"], environ={}).memory_mode == "lowvram"
    assert pick_accel(from_args(["--device", "cpu", "--medvram"], environ={})).memory == "none"  # no VRAM
    with pytest.raises(SystemExit):
        from_args(["--compile-warmup", "512x500"], environ={})
