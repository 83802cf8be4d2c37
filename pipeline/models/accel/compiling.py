"""Opt-in `--compile`: the UNet and the VAE's encoder/decoder compiled with torch.compile (inductor).

Shapes: a hires job runs the UNet at two resolutions. The modules are compiled with dynamo's automatic
dynamic shapes: the first size seen gets a static graph, the first *other* size one graph with symbolic
height/width/batch that then serves every later size, so a server pays two compilations per component in
its life, not one per job or per size (`recompiles_on_repeat` in the tests counts them). Dynamo's recompile
limit bounds the rest: past it a frame runs eagerly, it never compiles without end.

Disk cache: inductor's FX-graph and AOT caches live under `<data-dir>/compile-cache` (set once, before the
first compilation), so a restart reuses the generated kernels instead of generating them again; dynamo's
tracing itself still runs in each process (seconds, not the minutes of code generation).

Inductor on the CPU needs a C++ compiler (it builds the kernels it generates); `compiler_problem()` says
when none is found, and the server then runs eagerly with one log line."""
from __future__ import annotations

import logging
import os
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import torch

from pipeline.models.sd_model import SDModel

log = logging.getLogger("hiresd.accel")

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
_configured: Path | None = None


def compiler_problem(device: torch.device) -> str | None:
    """Why inductor cannot compile for `device` here (None when it can)."""
    if device.type == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "no C++ compiler (g++/clang++) on PATH: inductor builds its CPU kernels with one"
        include = sysconfig.get_paths().get("include")
        if not include or not Path(include, "Python.h").is_file():
            return f"no Python headers (Python.h under {include}): inductor's CPU kernels include them"
    return None


def use_cache_dir(path: Path) -> Path:
    """Point inductor's on-disk caches at `path` (created). Process-wide, so done once; a second call with
    another folder keeps the first (the generated code is already being written there)."""
    global _configured
    if _configured is not None:
        return _configured
    path.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(path.resolve())
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    try:
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError):
        pass
    _configured = path
    return path


def compile_model(model: SDModel, cuda_graphs: bool = False) -> None:
    """Compile the UNet and the VAE's decoder and encoder in place (`nn.Module.compile`: the same module
    objects, so hooks, `.config` and weight swaps such as LoRA patching keep working).

    `cuda_graphs` (`--cuda-graphs`, CUDA only): inductor's "reduce-overhead" mode, which records each
    compiled graph as a CUDA graph per input shape and replays it (one launch instead of hundreds). Weights
    are static inputs read in place, so in-place LoRA patching still shows; forwards run under inference
    mode, where each call starts a new CUDA-graph iteration and the previous call's outputs are already
    consumed (the sampler and the 8-bit conversion copy what they keep)."""
    if model.extra.get("compiled"):
        return
    mode = "reduce-overhead" if cuda_graphs and model.device.type == "cuda" else None
    for module in (model.unet, model.vae.decoder, model.vae.encoder):
        module.compile(mode=mode)
    model.extra["compiled"] = mode or "default"


def warm_up(model: SDModel, sizes: list[tuple[int, int]], batch: int = 1) -> None:
    """Run the compiled forwards once at each (width, height), so the first user job finds them compiled
    (the two sizes of a hires job: e.g. 512x512 and 1024x1024)."""
    f = model.vae_scale_factor
    c = model.latent_channels
    dev, dt = model.device, model.dtype
    ctx_dim = int(model.unet.config.cross_attention_dim)
    # the timestep as the sampling loop makes it: float32, created outside inference mode (dynamo guards on
    # both, so a warm-up tensor of another kind would leave the first real job to compile again)
    t = torch.tensor(999.0, device=dev)
    with torch.inference_mode():
        for w, h in sizes:
            channels = int(model.unet.config.in_channels)
            x = torch.zeros(2 * batch, channels, h // f, w // f, device=dev, dtype=dt)
            kwargs: dict[str, Any] = {}
            if model.family == "sdxl":
                pooled = int(model.unet.config.projection_class_embeddings_input_dim) - 6 * int(
                    model.unet.config.addition_time_embed_dim)
                kwargs["added_cond_kwargs"] = {
                    "text_embeds": torch.zeros(2 * batch, pooled, device=dev, dtype=dt),
                    "time_ids": torch.tensor([[h, w, 0, 0, h, w]] * (2 * batch), device=dev, dtype=dt)}
            model.unet(x, t,
                       encoder_hidden_states=torch.zeros(2 * batch, 77, ctx_dim, device=dev, dtype=dt),
                       return_dict=False, **kwargs)
            z = torch.zeros(1, c, h // f, w // f, device=dev, dtype=model.vae_dtype or dt)
            model.vae.decode(z)
    log.info("compiled forwards warmed up at %s", ", ".join(f"{w}x{h}" for w, h in sizes))
