"""Tiled diffusion: one sampling pass untiled vs tiled at 1024, 2048 and 4096 px, side by side in one run.

    .venv/bin/python bench/bench_tiled.py --untiled-max 2048   # CPU: 1/8-width SD 1.5 UNet, 1 step (~20 min)
    .venv/bin/python bench/bench_tiled.py --sizes 256 512 1024 --tile 24 --overlap 2   # CPU, quarter geometry
    .venv/bin/python bench/bench_tiled.py --device cuda   # full-width SD 1.5, fp16, 4 steps

The model is the SD 1.5 UNet layout (bench_hires.sd_shaped_model: 4 levels, attention at three, 768-wide
cross-attention, the CLIP ViT-L text encoder shape) with random weights; `--width-div N` divides the UNet
channel widths by N (1 = the real SD 1.5) so that a 2-core CPU finishes. A pass is txt2img from noise
(Euler, CFG 7, `--steps` steps) through pipeline.diffusion.denoise.denoise, the same call a job makes, with
`tiles=None` (untiled) or the default tiling (Mixture of Diffusers, 96-cell = 768 px tiles, overlap 8
cells, 4 tiles per UNet call). The VAE is not run: the pass's memory is what tiling bounds.

Each configuration runs in a fresh subprocess, so that one's peak does not hide another's:
  peak  CPU: the process's peak RSS during the pass (VmHWM, reset through /proc/self/clear_refs after the
        model is built and the prompt encoded) minus the RSS then; CUDA: max_memory_allocated minus the
        memory allocated before the pass.
Printed: wall time of the pass, time per megapixel, peak, and the ratios tiled/untiled at each size and
each size's peak against the 1024 px pass (goal: 4096 tiled within 1.10x of 1024; 2048 tiled time per
pixel within 1.3x of untiled). `--untiled-max` skips the untiled passes above a size (an untiled 4096 pass
takes hours on a 2-core CPU)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.diffusion.tiled import TileSettings  # noqa: E402

SIZES = (1024, 2048, 4096)


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(size: int, tiled: bool, steps: int, width_div: int, device_name: str, tiling: TileSettings) -> dict:
    from bench.bench_hires import NEGATIVE, PROMPT, sd_shaped_model
    from pipeline.diffusion import denoise, samplers
    device = torch.device(device_name)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = sd_shaped_model(device, dtype, width_div)
    sampler, schedule = samplers.resolve("Euler", None, "automatic")
    settings = denoise.PassSettings(sampler=sampler, schedule=schedule, steps=steps,
                                    params=samplers.SamplerParams())
    noise, gens = denoise.seeded_noise(model, size, size, [1], [1], 0.0, (0, 0))
    plan = denoise.plan_pass(model, settings, gens, [1])
    cond_at = denoise.prompt_conditioning(model, [PROMPT], [NEGATIVE], 1, steps=len(plan.timesteps))
    cond_at(0)  # the prompt encoded before the measurement
    tiles = tiling if tiled else None
    n_tiles = len(tiling.windows(size // 8, size // 8)) if tiled else 1
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak()
        base = _rss("VmRSS") if reset else _rss("VmHWM")
    start = time.perf_counter()
    res = denoise.denoise(model, plan, noise, None, cond_at, 7.0, size, size, lambda *a: None, tiles=tiles)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss("VmHWM")) - base
    assert res.stopped is None and torch.isfinite(res.latents).all()
    return {"size": size, "tiled": tiled, "tiles": n_tiles, "seconds": seconds, "peak": max(0, peak),
            "calls": res.unet_calls}


def run_child(args: argparse.Namespace, size: int, tiled: bool) -> dict | None:
    cmd = [sys.executable, __file__, "--child", str(size), "1" if tiled else "0", "--steps", str(args.steps),
           "--width-div", str(args.width_div), "--device", args.device, "--tile", str(args.tile),
           "--overlap", str(args.overlap), "--batch", str(args.batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        print(f"  {size} {'tiled' if tiled else 'untiled'} failed: {out.stderr.strip().splitlines()[-1:]}")
        return None
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {size:>5} {'tiled' if tiled else 'untiled':>8}: {row['seconds']:.1f} s, "
          f"{row['peak'] / 2**20:.0f} MiB", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps per pass (CPU 1, CUDA 4)")
    ap.add_argument("--width-div", type=int, default=None, help="UNet widths / N (CPU 8, CUDA 1 = SD 1.5)")
    ap.add_argument("--untiled-max", type=int, default=None, help="largest untiled size (default: all)")
    ap.add_argument("--tile", type=int, default=96, help="tile side in latent cells (default 96 = 768 px)")
    ap.add_argument("--overlap", type=int, default=8, help="tile overlap in latent cells")
    ap.add_argument("--batch", type=int, default=4, help="tiles per UNet call")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    ap.add_argument("--child", nargs=2, type=int, metavar=("SIZE", "TILED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (4 if cuda else 1)
    args.width_div = args.width_div or (1 if cuda else 8)
    if args.child:
        tiling = TileSettings(tile_width=args.tile, tile_height=args.tile, overlap=args.overlap,
                              batch=args.batch)
        print(json.dumps(child(args.child[0], bool(args.child[1]), args.steps, args.width_div, args.device,
                               tiling)))
        return
    untiled_max = args.untiled_max or max(args.sizes)
    torch_threads = torch.get_num_threads()
    print(f"bench_tiled: {args.device}, SD 1.5 UNet widths / {args.width_div}, {args.steps} step(s), Euler, "
          f"CFG 7; tiles {args.tile}x{args.tile} cells, overlap {args.overlap}, {args.batch} per call "
          f"(Mixture of Diffusers); torch threads {torch_threads}")
    rows: dict[tuple[int, bool], dict] = {}
    for size in args.sizes:
        for tiled in (False, True):
            if not tiled and size > untiled_max:
                print(f"  {size:>5}  untiled: skipped (--untiled-max {untiled_max})")
                continue
            row = run_child(args, size, tiled)
            if row is not None:
                rows[(size, tiled)] = row
    print()
    print(f"{'size':>5} {'mode':>8} {'tiles':>5} {'time s':>8} {'s/MPix':>8} {'peak MiB':>9} "
          f"{'t/u time':>9} {'t/u peak':>9} {'peak/smallest':>13}")
    for (size, tiled), r in sorted(rows.items()):
        u = rows.get((size, False))
        first = rows.get((min(args.sizes), tiled))

        def ratio(key: str, r: dict = r, u: dict | None = u, tiled: bool = tiled) -> str:
            return f"{r[key] / u[key]:.2f}x" if tiled and u and u[key] else "-"

        to_first = f"{r['peak'] / first['peak']:.2f}x" if first and first["peak"] else "-"
        print(f"{size:>5} {'tiled' if tiled else 'untiled':>8} {r['tiles']:>5} {r['seconds']:>8.1f} "
              f"{r['seconds'] / (size * size / 1e6):>8.2f} {r['peak'] / 2**20:>9.0f} {ratio('seconds'):>9} "
              f"{ratio('peak'):>9} {to_first:>13}")
    print("\n(t/u: tiled over untiled at the same size, so t/u time is also the time-per-pixel ratio; "
          "peak/smallest: against the same mode at the smallest size)")

if __name__ == "__main__":
    main()
