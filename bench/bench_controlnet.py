"""ControlNet cost, side by side in one run: a guided model call (one CFG batch of 2) with 0, 1 and 2
units, the switch between two ControlNet files, and the memory a ControlNet holds.

    .venv/bin/python bench/bench_controlnet.py                      # SD 1.5 shapes at 512x512
    .venv/bin/python bench/bench_controlnet.py --quick              # CPU: narrowed shapes at 256, ~a minute
    .venv/bin/python bench/bench_controlnet.py --device cuda        # the same on CUDA (fp16)

Models: the SD 1.5 UNet from the shipped config and two ControlNets of its encoder (random weights: timing
does not depend on them; `--width-div N` narrows every width), the ControlNets written in the original
layout to a temporary folder and loaded through `pipeline.models.controlnet.ControlNetStore`, as a job
loads them. The calls go through `pipeline.diffusion.loop.guided_model` with the units' residuals, as
every pass runs them.

Printed:
  step 0/1/2 units   median and fastest time of a guided call; the ratios to the call without units, of
                     the medians, of the fastest, and the median of each round's ratio (goal: one unit
                     costs about one UNet encoder pass, i.e. ~1.4-1.5x; calls alternate 0/1/2 so drift of
                     the machine falls on all three; on a shared machine the fastest are the least noisy)
  switch             loading the other ControlNet (cache of one: read + build + load), and a cached one
  memory             bytes of a ControlNet's parameters, and of the UNet's beside it
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.diffusion.loop import guided_model  # noqa: E402
from pipeline.models.builtin import deterministic_fill  # noqa: E402
from pipeline.models.controlnet import (  # noqa: E402
    ActiveControl,
    ControlNetStore,
    ControlResiduals,
    residual_scales,
)
from pipeline.models.sd_model import SDModel  # noqa: E402
from tests.fixtures.controlnets import write_ldm  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "pipeline" / "configs"


def unet_config(width_div: int) -> dict[str, Any]:
    raw = json.loads((CONFIGS / "sd1" / "unet" / "config.json").read_text())
    cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
    if width_div > 1:
        cfg["block_out_channels"] = [c // width_div for c in cfg["block_out_channels"]]
        cfg["norm_num_groups"] = 32 // width_div if 32 % width_div == 0 else 8
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--width-div", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="--width-div 4 --size 256 --repeats 3")
    a = ap.parse_args()
    if a.quick:
        a.width_div, a.size, a.repeats = 4, 256, 3
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    from diffusers import ControlNetModel, UNet2DConditionModel

    cfg = unet_config(a.width_div)
    unet = UNet2DConditionModel(**cfg)
    deterministic_fill(unet, 1)
    nets = []
    for seed in (2, 3):
        net = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        deterministic_fill(net, seed)
        nets.append(net)
    unet = torch.nn.Module.to(unet, device=device, dtype=dtype).eval()
    model = SDModel("bench", "sd1", unet, None, [], [], {}, device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ControlNet"
        for i, net in enumerate(nets):
            write_ldm(net, folder / f"cn{i}.safetensors", dtype=torch.float16)
        del nets
        store = ControlNetStore([folder], cache_size=1)
        files = store.files()
        base = dict(unet.config)
        t0 = time.perf_counter()
        cn_a = store.load(files[0], base, device, dtype)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        cn_b = store.load(files[1], base, device, dtype)
        switch = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.cache_size = 2
        store.load(files[1], base, device, dtype)
        cached = time.perf_counter() - t0
    lat = a.size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, lat, lat, generator=g).to(device)
    hint = torch.rand(1, 3, a.size, a.size, generator=g)
    ctx_dim = int(cfg["cross_attention_dim"])
    cond = type("C", (), {"context": torch.randn(1, 77, ctx_dim, generator=g)})()
    uncond = type("C", (), {"context": torch.randn(1, 77, ctx_dim, generator=g)})()
    t = torch.tensor(500, device=device)
    calls = {}
    for n in (0, 1, 2):
        units = [ActiveControl(net, hint, residual_scales(1.0, False, False), False) for net in (cn_a, cn_b)[:n]]
        control = ControlResiduals(units) if units else None
        calls[n] = guided_model(model, 7.0, a.size, a.size, control=control)
    times: dict[int, list[float]] = {0: [], 1: [], 2: []}
    with torch.inference_mode():
        for n in (0, 1, 2):  # warm-up
            calls[n](x, t, cond, uncond)
        for _ in range(a.repeats):
            for n in (0, 1, 2):
                sync(device)
                t0 = time.perf_counter()
                calls[n](x, t, cond, uncond)
                sync(device)
                times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}, {device}")
    print(f"== SD 1.5-shaped UNet (widths / {a.width_div}) at {a.size}x{a.size}, CFG batch 2, "
          f"{a.repeats} repeats ==")
    for n in (0, 1, 2):
        paired = statistics.median(a_n / a_0 for a_n, a_0 in zip(times[n], times[0], strict=True))
        print(f"step with {n} unit(s): median {med[n] * 1000:8.1f} ms, fastest {min(times[n]) * 1000:8.1f} ms | "
              f"ratio to no unit: of medians {med[n] / med[0]:.3f}, of fastest {min(times[n]) / min(times[0]):.3f}, "
              f"median of same-round pairs {paired:.3f}")
    print(f"ControlNet load: cold {cold * 1000:.0f} ms ({cold / med[0]:.2f} steps), switch to the other "
          f"file {switch * 1000:.0f} ms ({switch / med[0]:.2f} steps), cached {cached * 1000:.2f} ms")
    print(f"memory: ControlNet {param_bytes(cn_a) / 2**20:.1f} MiB, UNet {param_bytes(unet) / 2**20:.1f} MiB "
          f"(ratio {param_bytes(cn_a) / param_bytes(unet):.3f})")


if __name__ == "__main__":
    main()
