"""Tiled vs untiled upscaling: throughput and peak memory, measured side by side in one run.

    .venv/bin/python bench/bench_upscale.py            # about 2-3 minutes on a 2-core CPU
    .venv/bin/python bench/bench_upscale.py --quick    # about a minute
    .venv/bin/python bench/bench_upscale.py --device cuda

(a) Throughput: one realistic-size Real-ESRGAN Compact x4 (64 features, 16 convs: the size of
    realesr-general-x4v3; random weights) over the same photo (512 px on the CPU, 2048 px on
    CUDA), untiled vs tiled with the default 192 px tiles / 8 px overlap, alternating runs,
    median of each. Goal: tiling costs <= 15 %.
(b) Peak memory of a 4x upscale beyond the uint8 result: tiled runs of 512, 1024 and 2048 px
    inputs side by side, and untiled runs of smaller inputs for comparison, each in a fresh
    subprocess (peak RSS growth over the run on CPU; peak CUDA memory on CUDA). "overhead" is
    the growth minus the uint8 result itself, which any method must hold; on CPU, "held" is the
    same measured with glibc unmapping big blocks on free, i.e. without the heap's cache of
    freed tile-sized temporaries. Goal: the tiled numbers do not grow with the image (2048^2 /
    512^2 ratio close to 1: only a thin overlap strip as wide as the output grows), while the
    untiled ones grow with its area.
(c) LDSR next to the spandrel model: the same photos upscaled 4x by the Compact x4 of (a) (tiled) and by
    LDSR (`upscalers/ldsr`, random weights: LDSR's real shapes on CUDA or with --ldsr-real, the tests'
    tiny ones on the CPU), seconds and ratio, seconds per sampling step, and peak memory (CUDA: allocated;
    CPU: RSS growth). Goal: the LDSR peak grows far slower than the pixels (tiles of 128 latents).
"""

from __future__ import annotations

import argparse
import json
import os
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

from tests.fixtures.ldsr import REAL, TINY, tiny_ldsr_state  # noqa: E402
from upscalers.ldsr import LdsrOptions, super_resolution  # noqa: E402
from upscalers.ldsr.checkpoint import LdsrConfig, build_model  # noqa: E402
from upscalers.ldsr.sampler import tile_count  # noqa: E402
from upscalers.ldsr.upscale import padded_size  # noqa: E402
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


LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc: serve every block over 128 KiB by mmap and unmap it on free (its static default), so
that peak RSS follows the memory actually held instead of what the heap keeps cached after
many tile-sized temporaries (the dynamic threshold otherwise moves such blocks onto the heap)."""


def measure(args: argparse.Namespace, mode: str, size: int, live: bool = False) -> dict:
    """Run one memory measurement in a fresh process."""
    command = [
        sys.executable, __file__, "--child", "--device", args.device, "--size", str(size),
        "--tile", str(DEFAULT_TILE if mode == "tiled" else 0),
        "--features", str(MEMORY_MODEL[0]), "--convs", str(MEMORY_MODEL[1]),
    ]
    env = {**os.environ, **LIVE_ENV} if live else None
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


MEMORY_MODEL = (32, 8)
"""Compact features and convolutions for the memory runs."""


def memory(args: argparse.Namespace, device: torch.device) -> None:
    tiled_sizes = [512, 1024, 2048]  # below 512 px the default tiles shrink to fit the image
    untiled_sizes = [256, 512] if args.quick else [256, 512, 1024]
    runs = [("tiled", size) for size in tiled_sizes] + [("untiled", size) for size in untiled_sizes]
    gpu = device.type == "cuda"
    print(f"\n(b) peak memory of a 4x upscale: Compact {MEMORY_MODEL[0]}x{MEMORY_MODEL[1]}, {device.type}, "
          f"tiles {DEFAULT_TILE}/{DEFAULT_OVERLAP}, one fresh process per measurement")
    print("  overhead = peak RSS growth - the uint8 result (glibc defaults, as a server runs);")
    print("  held = the same with big blocks unmapped on free (what the code holds, not the heap's cache)")
    header = f"  {'mode':<9}{'input':>11}{'output':>13}{'result MB':>11}{'RSS growth MB':>15}"
    header += f"{'overhead MB':>13}" + (f"{'GPU peak MB':>13}" if gpu else f"{'held MB':>9}")
    print(header + f"{'seconds':>9}")
    mb = 1024 * 1024
    found: dict[str, list[tuple[int, float, float]]] = {"tiled": [], "untiled": []}
    for mode, size in runs:
        r = measure(args, mode, size)
        overhead = (r["rss_growth"] - r["result_bytes"]) / mb
        if gpu:
            second = r["gpu_peak"] / mb
        else:
            held = measure(args, mode, size, live=True)
            second = (held["rss_growth"] - held["result_bytes"]) / mb
        found[mode].append((size, overhead, second))
        line = f"  {mode:<9}{f'{size}x{size}':>11}{f'{4 * size}x{4 * size}':>13}"
        line += f"{r['result_bytes'] / mb:>11.0f}{r['rss_growth'] / mb:>15.0f}{overhead:>13.0f}"
        line += f"{second:>13.0f}" if gpu else f"{second:>9.0f}"
        print(line + f"{r['seconds']:>9.1f}", flush=True)
    for mode, group in found.items():
        small, big = group[0][0], group[-1][0]
        print(f"  {mode}: {(big / small) ** 2:.0f}x the pixels from {small}px to {big}px"
              + (" (goal: memory ratios close to 1)" if mode == "tiled" else ""))
        for column, what in ((1, "host overhead"), (2, "GPU peak" if gpu else "host held")):
            steps = " -> ".join(f"{row[column]:.0f}" for row in group)
            ratio = group[-1][column] / max(group[0][column], 1)
            print(f"    {what:<14} MB {steps}: {big}^2/{small}^2 ratio {ratio:.2f}")


def ldsr(args: argparse.Namespace, device: torch.device) -> None:
    real = device.type == "cuda" or args.ldsr_real
    steps = args.ldsr_steps or (100 if real else 5)
    model = build_model(tiny_ldsr_state(ema=False, shape=REAL if real else TINY), LdsrConfig(), Path("bench"))
    model = model.to(device)
    compact = make_model(64, 16, device)
    sizes = ([128] if args.quick else [128, 512]) if real else ([64] if args.quick else [64, 160])
    print(f"\n(c) LDSR ({'real' if real else 'tiny'} shapes, {steps} steps) next to Compact 64x16 x4 (tiled), "
          f"{device.type} float32")
    print(f"  {'input':>9}{'UNet tiles':>11}{'Compact s':>11}{'LDSR s':>9}{'LDSR/Compact':>14}{'s/step':>8}"
          f"{'LDSR peak MB':>14}")
    upscale_array(compact, make_image(32), tile=0)  # warm up both
    with torch.inference_mode():
        super_resolution(model, Image.fromarray(make_image(32)), 4, LdsrOptions(steps=1))
    for size in sizes:
        photo = make_image(size)
        sync(device)
        start = time.perf_counter()
        upscale_array(compact, photo, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP)
        sync(device)
        compact_s = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = psutil.Process().memory_info().rss
            reset_peak_rss()
        start = time.perf_counter()
        super_resolution(model, Image.fromarray(photo), 4, LdsrOptions(steps=steps))
        sync(device)
        ldsr_s = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()) - base
        tiles = tile_count(*padded_size(size, size)[::-1])
        print(f"  {f'{size}x{size}':>9}{tiles:>11}{compact_s:>11.2f}{ldsr_s:>9.2f}{ldsr_s / compact_s:>14.1f}"
              f"{ldsr_s / steps:>8.2f}{peak / 1024 / 1024:>14.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller images, for a quick look")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-ldsr", action="store_true")
    parser.add_argument("--ldsr-real", action="store_true", help="LDSR's real shapes on the CPU too (slow)")
    parser.add_argument("--ldsr-steps", type=int, default=0, help="LDSR steps (default 100 real, 5 tiny)")
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
    if not args.skip_ldsr:
        ldsr(args, device)


if __name__ == "__main__":
    main()
