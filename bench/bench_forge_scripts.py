"""Forge's integrated scripts: one sampling pass with each of FreeU, SAG, PAG and Dynamic Thresholding
enabled against the same pass with none, side by side in one run, with the ratio of the step time.

    .venv/bin/python bench/bench_forge_scripts.py                       # CPU: 1/8-width SD 1.5 UNet, 512 px
    .venv/bin/python bench/bench_forge_scripts.py --device cuda --width-div 1 --size 1024 --steps 10

The model is the SD 1.5 UNet layout with random weights (bench_hires.sd_shaped_model; `--width-div N`
divides the channel widths). A pass is txt2img from noise (Euler, CFG 7) through
pipeline.diffusion.denoise.denoise with the script's guidance and per-pass UNet patches installed exactly as
jobs/common.run_pass installs them (jobs/forge_pass.ForgePass). Each configuration runs `--repeat` times
in turn (off, FreeU, SAG, PAG, DynThres, off, ...) and the best time is kept, so that a noisy neighbour
hurts every configuration alike; on the CPU the time is the process's CPU time (time.process_time), which
a busy shared machine disturbs far less than the wall clock, with one torch thread; the UNet rows
evaluated per step (batch rows through the UNet's forward) are printed too, a machine-independent count.
What to expect: SAG and PAG each cost one more UNet evaluation per step
(SAG: the unconditional prediction of the blurred image; PAG: the prompt with identity attention), so
about 1.5x a CFG step (2 UNet rows); FreeU and Dynamic Thresholding add a few element-wise operations."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.jobs import forge_scripts as fs
from pipeline.jobs.forge_pass import ForgePass
from pipeline.models.patches import PassInfo, apply_patches

CONFIGS = {
    "off": {},
    "FreeU": {fs.FREEU.key: [True, 1.3, 1.4, 0.9, 0.2]},
    "SAG": {fs.SAG.key: [True, 0.5, 2.0, 1.0]},
    "PAG": {fs.PAG.key: [True, 3.0]},
    "DynThres": {fs.DYNTHRES.key: [True, 7.0, 0.95]},
}


def run(model, plan_for, cond_at, noise, size: int, scripts: dict) -> tuple[float, int]:
    """(seconds, UNet rows evaluated) of one pass."""
    from pipeline.diffusion import denoise

    rows = [0]
    hook = model.unet.register_forward_pre_hook(lambda _m, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))

    p = SimpleNamespace(script_args=scripts, extra_generation_params={})
    plan = plan_for()
    forge = ForgePass.open(p, model, plan, 7.0)
    patches = forge.patches if forge is not None else []
    clock = time.perf_counter if model.device.type == "cuda" else time.process_time
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    with apply_patches(model, patches, PassInfo(1, size, size, 1)):
        res = denoise.denoise(model, plan, noise, None, cond_at, 7.0, size, size, lambda *a: None,
                              cfg_mix=forge.guidance if forge is not None else None)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = clock() - start
    hook.remove()
    assert res.stopped is None and torch.isfinite(res.latents).all()
    return seconds, rows[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--width-div", type=int, default=None, help="UNet widths / N (CPU 8, CUDA 1 = SD 1.5)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from bench.bench_hires import NEGATIVE, PROMPT, sd_shaped_model
    from pipeline.diffusion import denoise, samplers

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one thread: its CPU time is the work, not other jobs' contention
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    width_div = args.width_div or (1 if device.type == "cuda" else 8)
    torch.manual_seed(0)
    model = sd_shaped_model(device, dtype, width_div)
    sampler, schedule = samplers.resolve("Euler", None, "automatic")
    settings = denoise.PassSettings(sampler=sampler, schedule=schedule, steps=args.steps,
                                    params=samplers.SamplerParams())
    noise, gens = denoise.seeded_noise(model, args.size, args.size, [1], [1], 0.0, (0, 0))
    plan_for = lambda: denoise.plan_pass(model, settings, gens, [1])
    cond_at = denoise.prompt_conditioning(model, [PROMPT], [NEGATIVE], 1, steps=args.steps)
    cond_at(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, SD 1.5 UNet / {width_div}, {args.size} px, {args.steps} Euler steps, CFG 7, "
          f"best of {args.repeat}, {'wall' if device.type == 'cuda' else 'process CPU'} time")
    run(model, plan_for, cond_at, noise, args.size, {})  # warm-up
    best: dict[str, float] = {}
    rows: dict[str, int] = {}
    for _ in range(args.repeat):
        for label, scripts in CONFIGS.items():
            seconds, rows[label] = run(model, plan_for, cond_at, noise, args.size, scripts)
            best[label] = min(best.get(label, seconds), seconds)
    base = best["off"]
    for label, seconds in best.items():
        print(f"  {label:>9}: {seconds / args.steps * 1000:8.1f} ms/step   x{seconds / base:.2f} of off   "
              f"UNet rows/step {rows[label] / args.steps:.0f} (x{rows[label] / rows['off']:.2f})")


if __name__ == "__main__":
    main()
