"""The fast path of bench_hires.py (`--precision`, `--compile`): ours with the speed policy against naive fp32
diffusers, side by side in one run, with the fidelity of our fast images to our fp32 images beside it.

    .venv/bin/python bench/bench_hires.py --precision auto            # the server's default on this machine
    .venv/bin/python bench/bench_hires.py --precision bf16 --full-width --quick

Per model: naive = the diffusers composition in fp32 (bench_hires.Naive); ours = prepare() + run_txt2img() on
a model loaded as the server loads it under the policy (dtypes from pipeline.models.accel.choose, then
Accel.prepare: channels-last VAE, compile). The two alternate (ABBA) after a warm-up of each; ratio = median
ours / median naive. Fidelity: our fast image against our fp32 image of the same seed (one extra fp32 run;
its time is printed as 'ours fp32 s', a single run): PSNR, mean and max absolute difference in 8-bit levels.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import numpy as np
import torch

from bench.bench_hires import Job, Naive, run_ours, sd_shaped_model, timed
from pipeline.models.accel import Accel, choose
from pipeline.models.builtin import build_builtin_model
from pipeline.models.sd_model import SDModel
from pipeline.runtime.job_state import JobState
from upscalers.registry import UpscalerRegistry


def load_like_server(build: Any, accel: Accel) -> SDModel:
    """`build(dtype)` -> a model in that dtype; then the VAE dtype and `Accel.prepare` (as ModelManager)."""
    p = accel.precision
    model = build(p.dtype)
    if p.vae_dtype is not None and p.vae_dtype != model.dtype:
        model.vae.to(p.vae_dtype)
        model.vae_dtype = p.vae_dtype
    accel.prepare(model)
    return model


def fidelity(a: Any, b: Any) -> dict[str, float]:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    d = np.abs(x - y)
    mse = float(np.mean(d ** 2))
    return {"psnr": 10 * np.log10(255.0 ** 2 / mse) if mse > 0 else float("inf"), "mean": float(d.mean()),
            "max": float(d.max())}


def compare_fast(label: str, build: Any, accel: Accel, job: Job, repeats: int) -> dict[str, Any]:
    upscalers = UpscalerRegistry(__import__("pathlib").Path("/nonexistent-models"))
    state = JobState()
    ref = build(torch.float32)
    naive = Naive(ref)
    t = time.perf_counter()
    ref_image = run_ours(ref, job, upscalers, state)[0]
    t_ref = time.perf_counter() - t
    fast = load_like_server(build, accel)
    compile_s = 0.0
    t = time.perf_counter()
    run_ours(fast, job, upscalers, state)  # warm-up (and compilation, when compiling)
    compile_s = time.perf_counter() - t
    naive(job)
    t_fast, t_naive = [], []
    ev_fast = ev_naive = 0
    images: list[Any] = []
    for r in range(repeats):
        for which in (("ours", "naive") if r % 2 == 0 else ("naive", "ours")):
            if which == "ours":
                w, ev_fast, _ = timed(lambda: images.extend(run_ours(fast, job, upscalers, state)), fast)
                t_fast.append(w)
            else:
                w, ev_naive, _ = timed(lambda: naive(job), ref)
                t_naive.append(w)
    ours, nv = statistics.median(t_fast), statistics.median(t_naive)
    return {"label": label, "job": job, "ours": ours, "naive": nv, "ratio": ours / nv, "ours_fp32": t_ref,
            "first": compile_s, "ev_ours": ev_fast, "ev_naive": ev_naive, **fidelity(images[-1], ref_image)}


def print_fast(rows: list[dict[str, Any]], device: str, accel: Accel, flags: str) -> None:
    print(f"\nhires fix, ours fast path ({flags}: {accel.precision.describe()}) vs naive diffusers fp32, "
          f"{device}, {torch.get_num_threads()} threads, Euler, CFG 7, latent upscale x2")
    head = (f"{'model':<26}{'job':<26}{'evals o/n':>10}{'ours s':>9}{'naive s':>9}{'ratio':>7}"
            f"{'1st s':>8}{'ours fp32 s':>12}{'PSNR dB':>9}{'mean':>7}{'max':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        j = r["job"]
        job = f"{j.width}x{j.height}->{2 * j.width}x{2 * j.height} {j.steps}+{j.hr_steps} d{j.denoising}"
        print(f"{r['label']:<26}{job:<26}{r['ev_ours']:>4}/{r['ev_naive']:<5}"
              f"{r['ours']:>9.3f}{r['naive']:>9.3f}"
              f"{r['ratio']:>7.2f}{r['first']:>8.2f}{r['ours_fp32']:>12.3f}{r['psnr']:>9.1f}{r['mean']:>7.2f}"
              f"{r['max']:>6.0f}")
    print("\nratio = ours fast / naive fp32 (median of alternating runs; CPU goal <= 0.4 at SD shapes). "
          "'1st s' = our first job (warm-up, compile). PSNR / mean / max: our fast image vs our fp32 image, "
          "same seed, 8-bit levels.")


def run(args: Any) -> None:
    device = torch.device(args.device)
    policy = choose(device, args.precision or "auto", "fp32" if args.no_half_vae else "auto")
    if args.unet_channels_last:
        policy = dataclasses.replace(policy, unet_channels_last=True)
    accel = Accel(policy, **({"compile": True, "cache_dir": args.compile_cache} if args.compile else {}),
                  fused_qkv=args.fused_qkv, sdpa_backend=args.sdpa_backend, cuda_graphs=args.cuda_graphs)
    flags = " ".join(f for f in (
        f"--precision {args.precision or 'auto'}", "--compile" if args.compile else "",
        "--no-half-vae" if args.no_half_vae else "",
        "--unet-channels-last" if args.unet_channels_last else "", f"--fused-qkv {args.fused_qkv}",
        f"--sdpa-backend {args.sdpa_backend}", "--cuda-graphs" if args.cuda_graphs else "") if f)
    repeats = args.repeats or (2 if args.quick else 3)
    width_div = 1 if (args.full_width or device.type == "cuda") else 4
    rows = []
    if not args.skip_tiny:
        tiny_job = Job(128, 128, 8, 8, 0.5) if args.quick else Job(256, 256, 20, 10, 0.5)
        rows.append(compare_fast("builtin tiny", lambda dt: build_builtin_model(device, dt), accel, tiny_job,
                                 repeats * 2))
    if device.type == "cuda":
        sd_job = Job(512, 512, 20, 10, 0.5) if not args.quick else Job(512, 512, 10, 6, 0.5)
    elif width_div == 1:
        sd_job = Job(256, 256, 3, 2, 0.5)  # the CPU job: 256->512, 3+2 steps
    else:
        sd_job = Job(256, 256, 6, 4, 0.5) if args.quick else Job(256, 256, 12, 8, 0.5)
    name = "SD1.5 shape" if width_div == 1 else f"SD1.5 shape, width/{width_div}"
    rows.append(compare_fast(name, lambda dt: sd_shaped_model(device, dt, width_div), accel, sd_job, repeats))
    print_fast(rows, args.device, accel, flags)
