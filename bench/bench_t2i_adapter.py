"""T2I-Adapter cost beside a ControlNet, side by side in one run: a guided model call (one CFG batch of 2)
with no unit, one ControlNet unit and one T2I-Adapter unit, over a pass of `--steps` calls (the adapter's
features are computed on the pass's first call and reused, as the extension caches them), and the memory
each network holds.

    .venv/bin/python bench/bench_t2i_adapter.py              # SD 1.5 shapes at 512x512
    .venv/bin/python bench/bench_t2i_adapter.py --quick      # CPU: widths / 4 at 256, 3 repeats
    .venv/bin/python bench/bench_t2i_adapter.py --device cuda

Models: the SD 1.5 UNet from the shipped config, a ControlNet of its encoder and a full T2I-Adapter of
TencentARC's shapes (widths (c, 2c, 4c, 4c), 2 blocks per level, 1x1 second convs), random weights
(timing does not depend on them), written to a temporary `ControlNet` folder (original layouts) and
loaded through `ControlNetStore`, as a job loads them; calls through `guided_model`.

Printed: per pass of `--steps` calls, the median and fastest time with each, and the ratios to no unit
(medians, fastest, median of same-round pairs); the networks' parameter bytes."""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_controlnet import param_bytes, sync, unet_config
from pipeline.diffusion.loop import guided_model
from pipeline.models.builtin import deterministic_fill
from pipeline.models.controlnet import ActiveControl, ControlNetStore, ControlResiduals
from pipeline.models.controlnet.residuals import adapter_scales, residual_scales
from pipeline.models.sd_model import SDModel
from tests.fixtures.controlnets import write_adapter, write_ldm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--width-div", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="--width-div 4 --size 256 --repeats 3")
    a = ap.parse_args()
    if a.quick:
        a.width_div, a.size, a.repeats = 4, 256, 3
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel

    cfg = unet_config(a.width_div)
    unet = UNet2DConditionModel(**cfg)
    deterministic_fill(unet, 1)
    cn = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    deterministic_fill(cn, 2)
    c = int(cfg["block_out_channels"][0])
    ad = T2IAdapter(in_channels=3, channels=[c, 2 * c, 4 * c, 4 * c], num_res_blocks=2, downscale_factor=8,
                    adapter_type="full_adapter")
    deterministic_fill(ad, 3)
    unet = torch.nn.Module.to(unet, device=device, dtype=dtype).eval()
    model = SDModel("bench", "sd1", unet, None, [], [], {}, device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ControlNet"
        write_ldm(cn, folder / "control_bench.safetensors", dtype=torch.float16)
        write_adapter(ad, folder / "t2iadapter_bench.safetensors", "original")
        store = ControlNetStore([folder])
        base = dict(unet.config)
        cn_net = store.load(store.find("control_bench", "m"), base, device, dtype)
        ad_net = store.load(store.find("t2iadapter_bench", "m"), base, device, dtype)
    lat = a.size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, lat, lat, generator=g).to(device)
    hint = torch.rand(1, 3, a.size, a.size, generator=g)
    ctx_dim = int(cfg["cross_attention_dim"])
    cond = type("C", (), {"context": torch.randn(1, 77, ctx_dim, generator=g)})()
    uncond = type("C", (), {"context": torch.randn(1, 77, ctx_dim, generator=g)})()
    t = torch.tensor(500, device=device)
    units = {
        "none": lambda: None,
        "ControlNet": lambda: ControlResiduals([ActiveControl(cn_net, hint, residual_scales(1.0, False, False), False)]),
        "T2I-Adapter": lambda: ControlResiduals([ActiveControl(ad_net, hint, adapter_scales(1.0, False), False)]),
    }

    def one_pass(name: str) -> float:
        call = guided_model(model, 7.0, a.size, a.size, control=units[name]())  # a new pass: features anew
        sync(device)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            call(x, t, cond, uncond)
        sync(device)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {n: [] for n in units}
    with torch.inference_mode():
        for n in units:
            one_pass(n)  # warm-up
        for _ in range(a.repeats):
            for n in units:
                times[n].append(one_pass(n))
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}, {device}")
    print(f"== SD 1.5-shaped UNet (widths / {a.width_div}) at {a.size}x{a.size}, CFG batch 2, passes of "
          f"{a.steps} calls, {a.repeats} repeats ==")
    for n in units:
        paired = statistics.median(v / b for v, b in zip(times[n], times["none"], strict=True))
        print(f"{n:12s}: pass median {med[n] * 1000:8.1f} ms, fastest {min(times[n]) * 1000:8.1f} ms | ratio to "
              f"none: of medians {med[n] / med['none']:.3f}, of fastest {min(times[n]) / min(times['none']):.3f}, "
              f"same-round pairs {paired:.3f}")
    print(f"memory: ControlNet {param_bytes(cn_net) / 2**20:.1f} MiB, T2I-Adapter {param_bytes(ad_net) / 2**20:.1f} MiB, "
          f"UNet {param_bytes(unet) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
