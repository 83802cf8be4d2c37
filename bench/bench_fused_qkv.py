"""Fused attention projections (pipeline/accel/fused_qkv.py) against diffusers' own processor: one UNet step
(CFG batch of 2) of the SD 1.5-shaped model, the same UNet object with its processors switched between runs,
alternating (ABBA), the first pair dropped as warm-up; min of the rest, ratio fused / plain, and the largest
output difference.

    .venv/bin/python bench/bench_fused_qkv.py                          # quarter widths, fp32 and bf16
    .venv/bin/python bench/bench_fused_qkv.py --width-div 1 --dtype bfloat16 --device cpu
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_hires import sd_shaped_model
from pipeline.models.accel.fused_qkv import fuse_qkv, unfuse_qkv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width-div", type=int, default=4, help="divide the UNet's channels (1: real SD 1.5)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    device = torch.device(args.device)
    for name in args.dtype:
        dtype = getattr(torch, name)
        unet = sd_shaped_model(device, dtype, args.width_div).unet
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, args.size // 8, args.size // 8, generator=g).to(device, dtype)
        c = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g).to(device, dtype)
        t = torch.tensor([500, 500], device=device)
        times: dict[str, list[float]] = {"plain": [], "fused": []}
        out: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for r in range(args.repeats):
                for which in (("plain", "fused") if r % 2 == 0 else ("fused", "plain")):
                    fuse_qkv(unet) if which == "fused" else unfuse_qkv(unet)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    out[which] = unet(x, t, encoder_hidden_states=c).sample
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[which].append(time.perf_counter() - start)
        plain, fused = min(times["plain"][1:]), min(times["fused"][1:])
        diff = (out["plain"].float() - out["fused"].float()).abs().max().item()
        print(f"{device.type} width/{args.width_div} {args.size}px {name}: plain {plain:.3f} s, "
              f"fused {fused:.3f} s, ratio {fused / plain:.3f}; max |diff| {diff:.3g} (mean |out| "
              f"{out['plain'].float().abs().mean().item():.3f})", flush=True)
        del unet


if __name__ == "__main__":
    main()
