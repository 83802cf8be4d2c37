"""Big hires targets on a GPU: time and peak GPU memory of real SD 1.5-shaped hires jobs (random weights),
up to a 2048x2048 result, plus the VAE decode of a 2048x2048 latent untiled vs tiled, and the same 2048
job under a capped memory budget (the out-of-memory fallback must turn it into tiles, not a crash).

    python bench/bench_bigimage.py --device cuda          # about 2 minutes on an H100
    python bench/bench_bigimage.py --device cuda --cap-gb 8
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_hires import OneModel, sd_shaped_model  # noqa: E402
from pipeline.jobs.common import JobContext
from pipeline.jobs.extensions import Extensions  # noqa: E402
from pipeline.jobs.pixel_upscale import HiresUpscaler  # noqa: E402
from pipeline.jobs.processing import prepare  # noqa: E402
from pipeline.jobs.txt2img import run_txt2img  # noqa: E402
from pipeline.models import vae_codec as vae  # noqa: E402
from pipeline.runtime.job_state import JobState  # noqa: E402
from schemas.txt2img import Txt2ImgRequest  # noqa: E402
from upscalers.registry import UpscalerRegistry  # noqa: E402

OPTS = {"sd_model_checkpoint": "", "CLIP_stop_at_last_layers": 1, "live_previews_enable": False,
        "show_progress_every_n_steps": 10, "ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8}


def gib(n: int) -> float:
    return n / 2**30


def run_job(model, ups, label: str, **fields) -> None:
    req = Txt2ImgRequest(prompt="a castle on a hill, detailed", negative_prompt="blurry", seed=1,
                         sampler_name="DPM++ 2M", **fields)
    p = prepare(req, OPTS, OneModel(model), ups, 10**9)
    ctx = JobContext(OneModel(model), HiresUpscaler(ups, OPTS), Extensions(), JobState())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    res = run_txt2img(p, ctx)
    torch.cuda.synchronize()
    took = time.perf_counter() - t
    print(f"{label:44s} {str(res.images[0].size):14s} {took:7.2f} s  peak {gib(torch.cuda.max_memory_allocated()):6.2f} GiB"
          f"  unet calls {res.unet_calls}", flush=True)


def decode_peak(model, size: int, tiled: bool) -> tuple[float, float]:
    z = torch.randn(1, 4, size // 8, size // 8, device=model.device, dtype=model.dtype)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    vae.decode(model, z, force_tiled=tiled, tile_above_pixels=10**12)
    torch.cuda.synchronize()
    return time.perf_counter() - t, gib(torch.cuda.max_memory_allocated())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--cap-gb", type=float, default=8.0, help="memory cap for the fallback run")
    ap.add_argument("--only-capped", action="store_true", help="run just the capped-memory job")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    dev = torch.device(a.device)
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, {a.dtype}", flush=True)
    model = sd_shaped_model(dev, dtype, 1)
    model.vae.to(torch.bfloat16 if dtype == torch.float16 else dtype)
    model.vae_dtype = torch.bfloat16 if dtype == torch.float16 else dtype
    print(f"model weights: {gib(torch.cuda.memory_allocated()):.2f} GiB", flush=True)
    ups = UpscalerRegistry(Path("/nonexistent"))
    if not a.only_capped:
        full_runs(model, ups)
    capped_run(model, ups, dev, a.cap_gb)


def full_runs(model, ups) -> None:
    run_job(model, ups, "warm-up 512 txt2img", width=512, height=512, steps=4)
    run_job(model, ups, "512 txt2img, 20 steps", width=512, height=512, steps=20)
    run_job(model, ups, "512 -> 1024 latent hires, 20 + 10 steps", width=512, height=512, steps=20,
            enable_hr=True, hr_scale=2, hr_second_pass_steps=10, denoising_strength=0.5)
    run_job(model, ups, "512 -> 1024 Lanczos hires, 20 + 10 steps", width=512, height=512, steps=20,
            enable_hr=True, hr_scale=2, hr_upscaler="Lanczos", hr_second_pass_steps=10, denoising_strength=0.5)
    run_job(model, ups, "512 -> 2048 latent hires, 10 + 5 steps", width=512, height=512, steps=10,
            enable_hr=True, hr_scale=4, hr_second_pass_steps=5, denoising_strength=0.5)
    for size in (1024, 2048):
        for tiled in (False, True):
            try:
                took, peak = decode_peak(model, size, tiled)
                print(f"VAE decode {size}x{size} {'tiled  ' if tiled else 'untiled'}  {took:6.2f} s  peak {peak:6.2f} GiB",
                      flush=True)
            except torch.OutOfMemoryError:
                print(f"VAE decode {size}x{size} {'tiled' if tiled else 'untiled'}: out of memory", flush=True)


def capped_run(model, ups, dev, cap_gb: float) -> None:
    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 2**30 / total), dev.index or 0)
    print(f"-- memory capped at {cap_gb} GiB --", flush=True)
    untiled_first = vae.decode  # force the untiled first try: only the OOM fallback can save it
    vae.decode = lambda m, z, **k: untiled_first(m, z, tile_above_pixels=10**12)  # type: ignore[assignment]
    run_job(model, ups, f"512 -> 2048 hires under {cap_gb} GiB", width=512, height=512, steps=6,
            enable_hr=True, hr_scale=4, hr_second_pass_steps=3, denoising_strength=0.5)


if __name__ == "__main__":
    main()
