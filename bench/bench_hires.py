"""Hires fix: our two-pass pipeline vs the naive diffusers composition, side by side in one run.

    .venv/bin/python bench/bench_hires.py            # about 4-5 minutes on an idle 2-core CPU
    .venv/bin/python bench/bench_hires.py --quick    # about a minute
    .venv/bin/python bench/bench_hires.py --device cuda   # fp16, larger sizes
    .venv/bin/python bench/bench_hires.py --precision auto [--compile] [--full-width]   # the fast path

The same job both ways: same modules (the very same UNet/VAE/text encoder objects), same prompt pair,
sizes, Euler sampler, CFG 7 and the same number of UNet evaluations:

  ours   prepare() + run_txt2img(): pass one (S1 steps), latent upscale ("Latent", bilinear), pass two with
         A1111's fixed-steps rule (S2 steps from the tail of an int(S2/d)-step schedule), decode.
  naive  what a user writes with diffusers: StableDiffusionPipeline(output_type="latent", S1 steps),
         F.interpolate(scale 2, bilinear), StableDiffusionImg2ImgPipeline sharing the components with
         num_inference_steps = int(S2/d), strength = d (so it runs int(int(S2/d) * d) = S2 steps), decode.

Models: (a) the builtin tiny model; (b) "SD-shaped": the SD 1.5 UNet/VAE layout (4 levels, 2 layers per
block, attention at three levels, 768-wide cross-attention, real CLIP ViT-L text encoder shape) with the
UNet and VAE channel widths reduced so a 2-core CPU finishes (--full-width uses the real SD 1.5 widths).
Random weights: timing does not depend on them.

Printed per model: wall time (median of alternating repeats after a warm-up of each), UNet evaluations of
each pipeline (counted with forward hooks; they must match), the time ratio ours/naive (goal <= 1.0), and
the share of wall time inside UNet and VAE forwards (measured in one extra instrumented run each; goal
>= 90% at SD shapes). Our prompt-encoder cache is cleared before each run: a job with a new prompt.

img2img (second table; `--img2img-size`, default 1024 on CUDA, 256 on the CPU): the same image through
  ours   prepare_img2img() + run_img2img(): encode, A1111's step rule (int(d*S)+1 steps), decode.
  naive  StableDiffusionImg2ImgPipeline on the same modules, num_inference_steps chosen so that it runs
         the same number of steps (diffusers runs int(N*d)), Euler, decode.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.jobs.common import JobContext
from pipeline.jobs.dispatch import (
    prepare_img2img,  # noqa: E402
    run_job,  # noqa: E402
)
from pipeline.jobs.extensions import Extensions  # noqa: E402
from pipeline.jobs.pixel_upscale import HiresUpscaler  # noqa: E402
from pipeline.jobs.processing import prepare  # noqa: E402
from pipeline.jobs.txt2img import run_txt2img  # noqa: E402
from pipeline.models.builtin import build_builtin_model, deterministic_fill, load_sd1_tokenizer  # noqa: E402
from pipeline.models.sd_model import SDModel  # noqa: E402
from pipeline.runtime.job_state import JobState  # noqa: E402
from schemas.img2img import Img2ImgRequest  # noqa: E402
from schemas.txt2img import Txt2ImgRequest  # noqa: E402
from server.config import FUSED_QKV_CHOICES, SDPA_BACKEND_CHOICES  # noqa: E402
from upscalers.registry import UpscalerRegistry  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "pipeline" / "configs" / "sd1"
PROMPT = "a photo of a cat sitting on a windowsill, golden hour, detailed fur"
NEGATIVE = "blurry, lowres"
CFG = 7.0


# -- models ------------------------------------------------------------------------------------------

def sd_shaped_model(device: torch.device, dtype: torch.dtype, width_div: int) -> SDModel:
    """SD 1.5's architecture with UNet and VAE widths divided by `width_div` (1 = the real SD 1.5)."""
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg = {k: v for k, v in json.loads((CONFIGS / "unet" / "config.json").read_text()).items()
                if not k.startswith("_")}
    vae_cfg = {k: v for k, v in json.loads((CONFIGS / "vae" / "config.json").read_text()).items()
               if not k.startswith("_")}
    te_cfg = {k: v for k, v in json.loads((CONFIGS / "text_encoder" / "config.json").read_text()).items()
              if not k.startswith("_")}
    if width_div > 1:
        narrow = lambda cs: [max(32, c // width_div // 32 * 32) for c in cs]  # noqa: E731 - GroupNorm(32)
        unet_cfg["block_out_channels"] = narrow(unet_cfg["block_out_channels"])  # 320.. -> 64, 160, 320, 320
        vae_cfg["block_out_channels"] = narrow(vae_cfg["block_out_channels"])
    modules = {"unet": UNet2DConditionModel(**unet_cfg), "vae": AutoencoderKL(**vae_cfg),
               "text_encoder": CLIPTextModel(CLIPTextConfig(**te_cfg))}
    for i, (name, m) in enumerate(sorted(modules.items())):
        deterministic_fill(m, 1000 + i)
        m.eval().requires_grad_(False).to(device=device, dtype=dtype)
    scheduler_config = json.loads((CONFIGS / "scheduler" / "scheduler_config.json").read_text())
    return SDModel(title=f"sd15-shaped-w{width_div}", family="sd1", unet=modules["unet"], vae=modules["vae"],
                   text_encoders=[modules["text_encoder"]], tokenizers=[load_sd1_tokenizer()],
                   scheduler_config=scheduler_config, device=device, dtype=dtype, vae_dtype=dtype,
                   extra={"model_name": f"sd15-shaped-w{width_div}"})


class OneModel:
    """The `Models` protocol over one in-memory model (what ModelManager does for a loaded checkpoint)."""

    def __init__(self, model: SDModel) -> None:
        self.model = model

    def resolve_title(self, name: str, field: str) -> str:
        return self.model.title

    def get(self, title: str) -> SDModel:
        return self.model

    def info(self, title: str) -> dict[str, Any]:
        return {"title": self.model.title, "short_title": self.model.title, "model_name": self.model.title,
                "hash": None}


# -- the two pipelines -----------------------------------------------------------------------------

@dataclass
class Job:
    width: int
    height: int
    steps: int  # pass one
    hr_steps: int  # pass two
    denoising: float
    seed: int = 1


def run_ours(model: SDModel, job: Job, upscalers: UpscalerRegistry, state: JobState) -> Any:
    encoder = model.extra.get("prompt_encoder")
    if encoder is not None:
        encoder.clear_cache()  # a job with new prompts: they are encoded in this run, as naive does
    req = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, steps=job.steps, width=job.width,
                         height=job.height, seed=job.seed, cfg_scale=CFG, sampler_name="Euler", enable_hr=True,
                         hr_scale=2.0, hr_upscaler="Latent", hr_second_pass_steps=job.hr_steps,
                         denoising_strength=job.denoising)
    options = {"sd_model_checkpoint": "", "CLIP_stop_at_last_layers": 1, "live_previews_enable": True,
               "show_progress_every_n_steps": 10}
    models = OneModel(model)
    p = prepare(req, options, models, upscalers, 10**9)
    try:
        return run_txt2img(p, JobContext(models, HiresUpscaler(upscalers, options), Extensions(), state)).images
    finally:
        state.end()


class Naive:
    """The diffusers composition, built once per model (as a user's script would)."""

    def __init__(self, model: SDModel) -> None:
        from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        scheduler = EulerDiscreteScheduler.from_config(model.scheduler_config)
        self.base = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoders[0],
                                            tokenizer=model.tokenizers[0], unet=model.unet, scheduler=scheduler,
                                            safety_checker=None, feature_extractor=None,
                                            requires_safety_checker=False)
        self.img2img = StableDiffusionImg2ImgPipeline(**self.base.components)
        for pipe in (self.base, self.img2img):
            pipe.set_progress_bar_config(disable=True)
        self.device = model.device

    def __call__(self, job: Job) -> Any:
        g = torch.Generator("cpu").manual_seed(job.seed)
        with torch.inference_mode():
            lat = self.base(PROMPT, negative_prompt=NEGATIVE, width=job.width, height=job.height,
                            num_inference_steps=job.steps, guidance_scale=CFG, generator=g,
                            output_type="latent").images
            lat = F.interpolate(lat, scale_factor=2, mode="bilinear", align_corners=False)
            total = int(job.hr_steps / min(job.denoising, 0.999))
            return self.img2img(PROMPT, negative_prompt=NEGATIVE, image=lat, strength=job.denoising,
                                num_inference_steps=total, guidance_scale=CFG, generator=g).images


# -- measuring -------------------------------------------------------------------------------------

class Meter:
    """UNet evaluation count (always) and time inside UNet/VAE forwards (when `timed`)."""

    def __init__(self, model: SDModel) -> None:
        self.model = model
        self.evals = 0
        self.inside = 0.0
        self.timed = False
        self._t0: dict[int, float] = {}
        self._handles: list[Any] = []
        self.cuda = model.device.type == "cuda"

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __enter__(self) -> Meter:
        def count(*_: Any, **__: Any) -> None:
            self.evals += 1

        self._handles.append(self.model.unet.register_forward_pre_hook(count))
        if self.timed:
            for module in (self.model.unet, self.model.vae.decoder, self.model.vae.encoder):
                self._handles.append(module.register_forward_pre_hook(self._start))
                self._handles.append(module.register_forward_hook(self._stop))
        return self

    def _start(self, module: Any, *_: Any) -> None:
        self._sync()
        self._t0[id(module)] = time.perf_counter()

    def _stop(self, module: Any, *_: Any) -> None:
        self._sync()
        self.inside += time.perf_counter() - self._t0.pop(id(module))

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def timed(fn: Callable[[], Any], model: SDModel, instrument: bool = False) -> tuple[float, int, float]:
    """(wall seconds, UNet evaluations, seconds inside UNet/VAE forwards)."""
    meter = Meter(model)
    meter.timed = instrument
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    with meter:
        t = time.perf_counter()
        fn()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
    return wall, meter.evals, meter.inside


def compare(label: str, model: SDModel, job: Job, repeats: int) -> dict[str, Any]:
    upscalers = UpscalerRegistry(Path("/nonexistent-models"))
    state = JobState()
    naive = Naive(model)
    ours_fn = lambda: run_ours(model, job, upscalers, state)  # noqa: E731
    naive_fn = lambda: naive(job)  # noqa: E731
    ours_fn(), naive_fn()  # warm-up (allocator, kernels, scheduler construction caches)
    t_ours, t_naive = [], []
    ev_ours = ev_naive = 0
    for r in range(repeats):  # alternate in ABBA order, so drift (load, clocks) hits both alike
        for which in (("ours", "naive") if r % 2 == 0 else ("naive", "ours")):
            if which == "ours":
                w, ev_ours, _i = timed(ours_fn, model)
                t_ours.append(w)
            else:
                w, ev_naive, _i = timed(naive_fn, model)
                t_naive.append(w)
    w_n, _, in_n = timed(naive_fn, model, instrument=True)
    w_o, _, in_o = timed(ours_fn, model, instrument=True)
    ours, nv = statistics.median(t_ours), statistics.median(t_naive)
    return {"label": label, "job": job, "ours": ours, "naive": nv, "ratio": ours / nv, "ev_ours": ev_ours,
            "ev_naive": ev_naive, "share_ours": in_o / w_o, "share_naive": in_n / w_n, "repeats": repeats}


def print_table(rows: list[dict[str, Any]], device: str, dtype: torch.dtype) -> None:
    print(f"\nhires fix, ours vs naive diffusers, {device} {str(dtype).replace('torch.', '')}, "
          f"{torch.get_num_threads()} threads, Euler, CFG {CFG}, latent upscale x2")
    head = (f"{'model':<26}{'job':<28}{'UNet evals o/n':>15}{'ours s':>9}{'naive s':>9}{'ratio':>7}"
            f"{'in fwd o':>10}{'in fwd n':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        j = r["job"]
        job = f"{j.width}x{j.height}->{2 * j.width}x{2 * j.height} {j.steps}+{j.hr_steps} d{j.denoising}"
        print(f"{r['label']:<26}{job:<28}{r['ev_ours']:>7}/{r['ev_naive']:<7}{r['ours']:>9.3f}{r['naive']:>9.3f}"
              f"{r['ratio']:>7.2f}{100 * r['share_ours']:>9.1f}%{100 * r['share_naive']:>9.1f}%")
    print("\nratio = ours/naive wall time (median of alternating runs; goal <= 1.0); 'in fwd' = share of wall"
          " time inside UNet + VAE forwards (goal >= 90% at SD shapes).")
    bad = [r["label"] for r in rows if r["ev_ours"] != r["ev_naive"]]
    if bad:
        print(f"WARNING: UNet evaluation counts differ for {bad}")


# -- img2img ---------------------------------------------------------------------------------------

def naive_img2img_steps(steps: int, d: float) -> int:
    """The diffusers num_inference_steps N whose int(N * d) equals A1111's int(d * steps) + 1."""
    want = int(min(d, 0.999) * steps) + 1
    n = want
    while int(n * d) < want:
        n += 1
    return n


def compare_img2img(label: str, model: SDModel, size: int, steps: int, d: float, repeats: int) -> dict[str, Any]:
    import numpy as np
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
    from PIL import Image

    image = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8))
    upscalers = UpscalerRegistry(Path("/nonexistent-models"))
    state = JobState()
    models = OneModel(model)
    options = {"sd_model_checkpoint": "", "CLIP_stop_at_last_layers": 1, "live_previews_enable": True,
               "show_progress_every_n_steps": 10}

    def ours() -> Any:
        encoder = model.extra.get("prompt_encoder")
        if encoder is not None:
            encoder.clear_cache()
        req = Img2ImgRequest(init_images=["bench"], prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps,
                             width=size, height=size, seed=1, cfg_scale=CFG, sampler_name="Euler",
                             denoising_strength=d)
        p = prepare_img2img(req, options, models, upscalers, 10**9, [image], None)
        try:
            return run_job(p, JobContext(models, HiresUpscaler(upscalers, options), Extensions(), state)).images
        finally:
            state.end()

    pipe = StableDiffusionImg2ImgPipeline(vae=model.vae, text_encoder=model.text_encoders[0],
                                          tokenizer=model.tokenizers[0], unet=model.unet,
                                          scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config),
                                          safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    n = naive_img2img_steps(steps, d)

    def naive() -> Any:
        with torch.inference_mode():
            return pipe(PROMPT, negative_prompt=NEGATIVE, image=image, strength=d, num_inference_steps=n,
                        guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(1)).images

    ours(), naive()
    t_ours, t_naive = [], []
    ev_ours = ev_naive = 0
    for r in range(repeats):
        for which in (("ours", "naive") if r % 2 == 0 else ("naive", "ours")):
            w, ev, _ = timed(ours if which == "ours" else naive, model)
            if which == "ours":
                t_ours.append(w)
                ev_ours = ev
            else:
                t_naive.append(w)
                ev_naive = ev
    o, nv = statistics.median(t_ours), statistics.median(t_naive)
    return {"label": label, "size": size, "steps": steps, "d": d, "ours": o, "naive": nv, "ratio": o / nv,
            "ev_ours": ev_ours, "ev_naive": ev_naive}


def print_img2img(rows: list[dict[str, Any]], device: str, dtype: torch.dtype) -> None:
    print(f"\nimg2img, ours vs diffusers StableDiffusionImg2ImgPipeline, {device} "
          f"{str(dtype).replace('torch.', '')}, {torch.get_num_threads()} threads, Euler, CFG {CFG}")
    head = f"{'model':<26}{'job':<24}{'UNet evals o/n':>15}{'ours s':>9}{'naive s':>9}{'ratio':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        job = f"{r['size']}x{r['size']} S{r['steps']} d{r['d']}"
        print(f"{r['label']:<26}{job:<24}{r['ev_ours']:>7}/{r['ev_naive']:<7}{r['ours']:>9.3f}{r['naive']:>9.3f}"
              f"{r['ratio']:>7.2f}")
    bad = [r["label"] for r in rows if r["ev_ours"] != r["ev_naive"]]
    if bad:
        print(f"WARNING: UNet evaluation counts differ for {bad}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (about a minute on a CPU)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--full-width", action="store_true", help="real SD 1.5 widths for the SD-shaped model")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--img2img-size", type=int, default=None, help="img2img side in pixels (0: skip img2img)")
    ap.add_argument("--img2img-only", action="store_true", help="only the img2img comparison")
    fast = ap.add_argument_group("fast path (bench/hires_fastpath.py): ours with the server's speed policy vs "
                                 "naive fp32 diffusers, with fidelity")
    fast.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default=None,
                      help="our dtypes as the server's --precision chooses them (auto: the server default)")
    fast.add_argument("--compile", action="store_true", help="ours with --compile (UNet and VAE compiled)")
    fast.add_argument("--compile-cache", type=Path, default=Path("data/compile-cache"),
                      help="inductor's cache folder for --compile (the server uses <data-dir>/compile-cache)")
    fast.add_argument("--no-half-vae", action="store_true", help="ours with the VAE in fp32")
    fast.add_argument("--skip-tiny", action="store_true", help="only the SD-shaped model")
    fast.add_argument("--unet-channels-last", action="store_true",
                      help="ours with the UNet's weights channels-last too (not a server default)")
    fast.add_argument("--fused-qkv", choices=FUSED_QKV_CHOICES, default="auto",
                      help="ours with the server's --fused-qkv")
    fast.add_argument("--sdpa-backend", choices=SDPA_BACKEND_CHOICES, default="auto",
                      help="ours with the server's --sdpa-backend (CUDA)")
    fast.add_argument("--cuda-graphs", action="store_true", help="with --compile on CUDA: CUDA graphs")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available")
    if (args.precision or args.compile or args.unet_channels_last or args.fused_qkv != "auto"
            or args.sdpa_backend != "auto"):
        from bench.hires_fastpath import run as run_fastpath

        run_fastpath(args)
        return
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    cuda = device.type == "cuda"
    repeats = args.repeats or (2 if args.quick else 3)
    torch.manual_seed(0)
    rows = []

    width_div = 1 if (args.full_width or cuda) else 4
    name = "SD1.5 shape" if width_div == 1 else f"SD1.5 shape, width/{width_div}"
    size = args.img2img_size if args.img2img_size is not None else (1024 if cuda else 256)
    if args.img2img_only:
        sd = sd_shaped_model(device, dtype, width_div)
        print_img2img([compare_img2img(name, sd, size, 20 if not args.quick else 8, 0.5, repeats)],
                      args.device, dtype)
        return

    tiny = build_builtin_model(device, dtype)
    tiny_job = Job(128, 128, 8, 8, 0.5) if args.quick else Job(256, 256, 20, 10, 0.5)
    rows.append(compare("builtin tiny", tiny, tiny_job, repeats * 2))
    del tiny

    sd = sd_shaped_model(device, dtype, width_div)
    if cuda:
        sd_job = Job(512, 512, 20, 10, 0.5) if not args.quick else Job(512, 512, 10, 6, 0.5)
    else:
        sd_job = Job(256, 256, 6, 4, 0.5) if args.quick else Job(256, 256, 12, 8, 0.5)
    rows.append(compare(name, sd, sd_job, repeats))
    print_table(rows, args.device, dtype)
    if size:
        print_img2img([compare_img2img(name, sd, size, 20 if not args.quick else 8, 0.5, repeats)],
                      args.device, dtype)


if __name__ == "__main__":
    main()
