"""Tiled vs untiled upscaling: throughput and peak memory, measured side by side in one run.

    .venv/bin/python bench/bench_upscale.py            # about 2-3 minutes on a 2-core CPU
    .venv/bin/python bench/bench_upscale.py --quick    # under a minute
    .venv/bin/python bench/bench_upscale.py --device cuda

(a) Throughput: one realistic-size Real-ESRGAN Compact x4 (64 features, 16 convs: the size of
    realesr-general-x4v3; random weights) over the same photo (512 px on the CPU, 2048 px on
    CUDA), untiled vs tiled with the default 192 px tiles / 8 px overlap, alternating runs,
    median of each. Goal: tiling costs <= 15 %.
(b) Peak memory of a 4x upscale: tiled runs up to 2048x2048 input vs untiled runs on smaller
    inputs, each in a fresh subprocess (peak RSS growth over the run on CPU; peak CUDA memory on
    CUDA). "overhead" is the growth minus the uint8 result itself, which any method must hold.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spandrel import ModelLoader  # noqa: E402
from spandrel.architectures.Compact import Compact  # noqa: E402

from upscalers.registry import LoadedModel, UpscalerEntry, pick_dtype  # noqa: E402
from upscalers.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, SizeSpec, count_tiles, upscale_array  # noqa: E402


def make_model(features: int, convs: int, device: torch.device) -> LoadedModel:
    torch.manual_seed(0)
    state = Compact(num_feat=features, num_conv=convs, upscale=4).state_dict()
    descriptor = ModelLoader().load_from_state_dict(state)
    req = descriptor.size_requirements
    entry = UpscalerEntry(
        name=f"Compact {features}x{convs}",
        kind="model",
        scale=descriptor.scale,
        architecture=descriptor.architecture.name,
        supports_half=descriptor.supports_half,
        supports_bfloat16=descriptor.supports_bfloat16,
        size_requirements=SizeSpec(req.minimum, req.multiple_of, req.square),
    )
    dtype = pick_dtype(device, entry)
    return LoadedModel(entry, descriptor.to(device, dtype=dtype).eval(), device, dtype)


def make_image(size: int) -> np.ndarray:
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(photo).copy()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(args: argparse.Namespace, device: torch.device) -> None:
    model = make_model(64, 16, device)
    size = (256 if args.quick else 512) * (4 if device.type == "cuda" else 1)
    image = make_image(size)
    upscale_array(model, image[:64, :64], tile=0)  # warm up
    tiles = count_tiles(size, size, "supported", model.size_requirements, DEFAULT_TILE, DEFAULT_OVERLAP)
    times: dict[str, list[float]] = {"untiled": [], "tiled": []}
    repeats = 2 if device.type == "cpu" else 5
    for _ in range(repeats):
        for mode, tile in (("untiled", 0), ("tiled", DEFAULT_TILE)):
            sync(device)
            start = time.perf_counter()
            upscale_array(model, image, tile=tile, overlap=DEFAULT_OVERLAP)
            sync(device)
            times[mode].append(time.perf_counter() - start)
    untiled, tiled = statistics.median(times["untiled"]), statistics.median(times["tiled"])
    dtype = str(model.dtype).removeprefix("torch.")
    print(f"\n(a) throughput: {model.entry.name} x4, {size}x{size} input, {device.type} {dtype}, "
          f"median of {repeats}")
    print(f"  {'mode':<22}{'tiles':>6}{'seconds':>10}{'input Mpx/s':>13}")
    print(f"  {'untiled':<22}{1:>6}{untiled:>10.2f}{size * size / untiled / 1e6:>13.3f}")
    label = f"tiled {DEFAULT_TILE}/{DEFAULT_OVERLAP}"
    print(f"  {label:<22}{tiles:>6}{tiled:>10.2f}{size * size / tiled / 1e6:>13.3f}")
    cost = 100 * (tiled / untiled - 1)
    print(f"  tiled/untiled time ratio: {tiled / untiled:.3f} (tiling costs {cost:+.1f} %; goal <= +15 %)")


def reset_peak_rss() -> None:
    """Linux: restart the kernel's high-water mark of this process's RSS (VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> None:
    """One memory measurement, in a fresh process; prints a JSON line."""
    device = torch.device(args.device)
    model = make_model(args.features, args.convs, device)
    image = make_image(args.size)
    upscale_array(model, image[:32, :32], tile=0)  # warm up allocators and kernels
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    base_rss = psutil.Process().memory_info().rss
    reset_peak_rss()
    start = time.perf_counter()
    out = upscale_array(model, image, tile=args.tile, overlap=DEFAULT_OVERLAP)
    sync(device)
    seconds = time.perf_counter() - start
    result = {"rss_growth": peak_rss() - base_rss, "result_bytes": out.nbytes, "seconds": seconds}
    if device.type == "cuda":
        result["gpu_peak"] = torch.cuda.max_memory_allocated() - base_gpu
    print(json.dumps(result))


def memory(args: argparse.Namespace, device: torch.device) -> None:
    features, convs = 32, 8
    if args.quick:
        runs = [("tiled", 256), ("tiled", 512), ("tiled", 1024), ("untiled", 256), ("untiled", 512)]
    else:
        runs = [("tiled", 512), ("tiled", 1024), ("tiled", 2048)]
        runs += [("untiled", 256), ("untiled", 512), ("untiled", 1024)]
    print(f"\n(b) peak memory of a 4x upscale: Compact {features}x{convs}, {device.type}, tiles "
          f"{DEFAULT_TILE}/{DEFAULT_OVERLAP}, one fresh process per row")
    gpu = device.type == "cuda"
    header = f"  {'mode':<9}{'input':>11}{'output':>13}{'result MB':>11}"
    header += f"{'RSS growth MB':>15}{'overhead MB':>13}"
    print(header + (f"{'GPU peak MB':>13}" if gpu else "") + f"{'seconds':>9}")
    rows = []
    for mode, size in runs:
        command = [
            sys.executable, __file__, "--child", "--device", args.device, "--size", str(size),
            "--tile", str(DEFAULT_TILE if mode == "tiled" else 0),
            "--features", str(features), "--convs", str(convs),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        mb = 1024 * 1024
        overhead = (r["rss_growth"] - r["result_bytes"]) / mb
        rows.append((mode, size, overhead, r.get("gpu_peak", 0) / mb))
        line = f"  {mode:<9}{f'{size}x{size}':>11}{f'{4 * size}x{4 * size}':>13}"
        line += f"{r['result_bytes'] / mb:>11.0f}{r['rss_growth'] / mb:>15.0f}{overhead:>13.0f}"
        if gpu:
            line += f"{r['gpu_peak'] / mb:>13.0f}"
        print(line + f"{r['seconds']:>9.1f}", flush=True)
    tiled = [r for r in rows if r[0] == "tiled"]
    untiled = [r for r in rows if r[0] == "untiled"]
    column = 3 if gpu else 2
    what = "GPU peak" if gpu else "host overhead"
    for label, group in (("tiled", tiled), ("untiled", untiled)):
        small, big = group[0], group[-1]
        pixels, grown = (big[1] / small[1]) ** 2, big[column] / max(small[column], 1)
        print(f"  {label} {what}: {small[column]:.0f} MB at {small[1]}px -> {big[column]:.0f} MB at "
              f"{big[1]}px ({pixels:.0f}x the pixels, {grown:.1f}x the memory)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller images, for a quick look")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help=argparse.SUPPRESS)
    parser.add_argument("--features", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--convs", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    if not args.skip_throughput:
        throughput(args, device)
    if not args.skip_memory:
        memory(args, device)


if __name__ == "__main__":
    main()
