"""Hires pass two with Hypertile, token merging and Deep Shrink, side by side in one run, with ratios.

    .venv/bin/python bench/bench_hires_speed.py                     # SD 1.5 widths, bf16, 1024 px, CPU
    .venv/bin/python bench/bench_hires_speed.py --width-div 4 --size 512 --dtype float32   # a quick look
    .venv/bin/python bench/bench_hires_speed.py --device cuda --dtype float16 --size 1024 2048

Model: SD 1.5's real UNet (bench/bench_hires.sd_shaped_model, --width-div 1) with random weights (no
download); timing does not depend on the weights. Each variant runs the same short hires pass two: an
Euler pass of `--steps` UNet calls (CFG batch 2) from the same start, with the pass's patches installed
exactly as jobs/common.run_pass installs them (pipeline/models/patches.apply_patches):

  off          no patch
  hypertile    A1111's defaults (max depth 3, max tile 256 px, swap size 3: tile counts drawn per call)
  hypertile/1  swap size 1: always the largest count (4x4 tiles of 256 px at 1024)
  tome 0.5     token merging, ratio 0.5 (A1111's settings)
  both         hypertile/1 + tome 0.5 (where ToMe merges, Hypertile finds no grid and leaves attention whole)
  deep shrink  Forge's defaults (block 3, factor 2, 0-35%, after skip, bicubic): its calls are the early
               ones of a single pass from pure noise (t 999 and 900, where it acts), compared with `off`
               at the same timesteps (`off early`; without it the time ratio is to `off`, no difference)

The pass-two variants start from a hires pass-two state (denoising 0.5: timesteps 500, 250, ...). Printed
per variant: seconds per UNet call (min and median over all its calls after the first repeat, which is a
warm-up), the ratio to `off`, peak GPU memory (CUDA only), and the difference of its result from `off`'s
as a picture (the linear latent preview, 1/8 size, 8-bit): mean and max absolute difference and SSIM. With
random weights the difference says how far the maths moves the result, not how a real picture looks.
Deep Shrink's whole-job line estimates a single shrunk 1024-px pass (35% of its steps shrunk) against the
two-pass job (512 px pass one + 1024 px pass two, same steps), from the measured per-call times.
Variants alternate within each repeat (the order rotates), so a load change hits all of them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_hires import sd_shaped_model
from pipeline.diffusion.preview import latent_preview
from pipeline.models.patches import PassInfo, apply_patches
from pipeline.models.patches.deep_shrink import DeepShrink
from pipeline.models.patches.hypertile import Hypertile
from pipeline.models.patches.tome import TokenMerging

VARIANTS = ("off", "hypertile", "hypertile/1", "tome 0.5", "both", "deep shrink", "off early")


def patches_for(name: str, size: int) -> list:
    if name == "hypertile":
        out: list = [Hypertile(size, size)]
    elif name in ("hypertile/1", "both"):
        out = [Hypertile(size, size, swap_size=1)]
    else:
        out = []
    if name in ("tome 0.5", "both"):
        out.append(TokenMerging(0.5))
    if name == "deep shrink":
        out.append(DeepShrink())
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two 8-bit pictures' luminance, Gaussian window (sigma 1.5, 11 taps)."""
    def gray(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[None, None]

    x, y = gray(a), gray(b)
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = (g / g.sum())
    win = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def sigma_of(model, t: float) -> float:
    cfg = model.scheduler_config
    betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, cfg["num_train_timesteps"],
                           dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    return float(((1 - acp[int(t)]) / acp[int(t)]) ** 0.5)


def run_pass(model, size: int, timesteps: list[float], start: torch.Tensor, cond: torch.Tensor,
             patches: list, times: list[float]) -> torch.Tensor:
    """Euler over `timesteps` (then to 0) from `start` at the first timestep's noise level, CFG 7."""
    dev, dt = model.device, model.dtype
    sigmas = [sigma_of(model, t) for t in timesteps] + [0.0]
    x = start * sigmas[0]
    info = PassInfo(2, size, size, seed=1234)
    with torch.inference_mode(), apply_patches(model, patches, info):
        for i, t in enumerate(timesteps):
            x_in = torch.cat([x, x]) / (sigmas[i] ** 2 + 1) ** 0.5
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.unet(x_in.to(dev, dt), torch.tensor(t, device=dev), encoder_hidden_states=cond,
                             return_dict=False)[0].float()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            u, c = out.chunk(2)
            eps = u + 7.0 * (c - u)
            x = x + eps * (sigmas[i + 1] - sigmas[i])
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--width-div", type=int, default=1)
    ap.add_argument("--size", type=int, nargs="+", default=[1024])
    ap.add_argument("--steps", type=int, default=2, help="UNet calls per variant and repeat")
    ap.add_argument("--repeats", type=int, default=2, help="the first is a warm-up unless only one")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--first-pass", type=int, default=512, help="pass one's size for the whole-job estimate")
    ap.add_argument("--warmup", action="store_true", help="one untimed plain call at each size first")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = sd_shaped_model(device, dtype, args.width_div)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=g).to(device, dtype)
    print(f"{device.type} {args.dtype} SD 1.5 UNet width/{args.width_div}, {args.steps} calls x "
          f"{args.repeats} repeats per variant, CFG batch 2; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
          flush=True)
    for size in args.size:
        lat = size // 8
        # a smooth "upscaled pass one" latent plus the pass's noise (the denoising pass's start)
        base = F.interpolate(torch.randn(1, 4, lat // 2, lat // 2, generator=g), scale_factor=2, mode="bilinear")
        noise = torch.randn(1, 4, lat, lat, generator=g)
        hires_t = [500.0 - 500.0 * i / args.steps for i in range(args.steps)]
        early_t = [999.0 - 99.0 * i for i in range(args.steps)]
        times: dict[str, list[float]] = {v: [] for v in args.variants}
        results: dict[str, torch.Tensor] = {}
        peak: dict[str, float] = {}
        variants = list(args.variants)
        if args.warmup:
            run_pass(model, size, hires_t[:1], base, cond, [], [])
        for r in range(args.repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for name in order:
                early = name in ("deep shrink", "off early")
                start = noise if early else base / sigma_of(model, hires_t[0]) + noise
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                got: list[float] = []
                results[name] = run_pass(model, size, early_t if early else hires_t, start, cond,
                                         patches_for(name, size), got)
                if device.type == "cuda":
                    peak[name] = torch.cuda.max_memory_allocated() / 2**30
                if r > 0 or args.repeats == 1:
                    times[name] += got
                print(f"  {size}px repeat {r} {name}: " + ", ".join(f"{t:.2f}" for t in got) + " s", flush=True)
        print(f"\n{size}px pass two, seconds per UNet call (CFG batch 2):")
        print(f"{'variant':<13}{'min':>8}{'median':>9}{'ratio':>8}{'peak GiB':>10}{'mean diff':>11}"
              f"{'max diff':>10}{'SSIM':>7}")
        for name in variants:
            ref = "off early" if name in ("deep shrink", "off early") else "off"  # same timesteps
            t_ref = times.get("off early") or times.get("off")
            if name != "deep shrink":
                t_ref = times.get("off")
            t_min, t_med = min(times[name]), statistics.median(times[name])
            ratio = t_min / min(t_ref) if t_ref else float("nan")
            mem = f"{peak[name]:.2f}" if name in peak else "n/a"
            if ref not in results:
                print(f"{name:<13}{t_min:>8.2f}{t_med:>9.2f}{ratio:>8.3f}{mem:>10}{'n/a':>11}{'n/a':>10}{'n/a':>7}")
                continue
            a = np.asarray(latent_preview(results[name], "sd1"), dtype=np.int16)
            b = np.asarray(latent_preview(results[ref], "sd1"), dtype=np.int16)
            diff = np.abs(a - b)
            print(f"{name:<13}{t_min:>8.2f}{t_med:>9.2f}{ratio:>8.3f}{mem:>10}{diff.mean():>11.2f}"
                  f"{diff.max():>10d}{ssim(a, b):>7.3f}")
        if "deep shrink" in times and "off" in times:
            small: list[float] = []
            fp = args.first_pass
            run_pass(model, fp, hires_t, torch.randn(1, 4, fp // 8, fp // 8, generator=g), cond, [], small)
            steps, shrunk = 20, 7
            t_big, t_ds, t_small = min(times["off"]), min(times["deep shrink"]), min(small)
            single = shrunk * t_ds + (steps - shrunk) * t_big
            two = steps * t_small + steps * t_big
            print(f"\nDeep Shrink whole job, {steps} steps (estimate from the per-call minima): single {size}px "
                  f"pass with {shrunk} shrunk calls {single:.1f} s vs two-pass {fp}->{size}px "
                  f"{two:.1f} s: ratio {single / two:.3f} ({fp}px call {t_small:.2f} s)")


if __name__ == "__main__":
    main()
