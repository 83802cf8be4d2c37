"""Speed: the precision policy (dtypes, CPU bf16 detection, channels-last), opt-in compiled forwards, and what
is done to a model once it is loaded so that its forwards run fast. One entry point, `Accel.prepare(model)`,
called by the model manager after every load."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.models.accel import compiling, memory
from pipeline.models.accel.fused_qkv import fuse_qkv
from pipeline.models.accel.layout import apply_layout
from pipeline.models.accel.precision import Precision
from pipeline.models.accel.sdpa import set_sdpa_backend
from pipeline.models.sd_model import SDModel

log = logging.getLogger("hiresd.accel")


@dataclass
class Accel:
    """Everything the speed flags ask of a loaded model. `compile`: torch.compile the UNet and VAE
    (`--compile`), caching generated code under `cache_dir`; `warmup`: (width, height) sizes run once right
    after a compiled load (`--compile-warmup`)."""

    precision: Precision
    compile: bool = False
    cache_dir: Path | None = None
    warmup: list[tuple[int, int]] = field(default_factory=list)
    memory: str = "none"  # none | medvram | lowvram | medvram-sdxl (pipeline/accel/memory.py)
    fused_qkv: str = "auto"  # auto | on | off: stacked attention projections (pipeline/accel/fused_qkv.py)
    sdpa_backend: str = "auto"  # auto | flash | efficient | cudnn | math, CUDA only (pipeline/accel/sdpa.py)
    sdp_no_mem: bool = False  # --opt-sdp-no-mem-attention: no memory-efficient SDPA kernel
    cuda_graphs: bool = False  # with compile on CUDA: "reduce-overhead" mode (pipeline/accel/compiling.py)

    def wants_fused_qkv(self, device: torch.device) -> bool:
        """`on` only, for now: `auto` is off on the CPU (the idle development machine took 1.10x the unfused
        UNet step, bench/results/cpu-fused-qkv.txt) and on CUDA (not measured yet: bench/gpu_check.sh);
        never together with compilation (the stacked-weight cache is Python state a graph would freeze)."""
        if self.compile:
            return False
        return self.fused_qkv == "on"

    def load_device(self, device: torch.device) -> torch.device:
        """Where a checkpoint is built: the CPU under a memory mode (only the running part goes to the GPU,
        so the whole model never has to fit there), else the compute device."""
        return torch.device("cpu") if self.memory != "none" and device.type != "cpu" else device

    def prepare(self, model: SDModel, device: torch.device | None = None) -> None:
        """Make a freshly loaded model fast on `device` (default: where it was loaded): layout, memory mode
        placement, then compilation (not under a memory mode: modules moving mid-forward do not compile)."""
        apply_layout(model, self.precision)
        device = device or model.device
        model.device = device
        set_sdpa_backend(device, self.sdpa_backend, self.sdp_no_mem)
        if self.wants_fused_qkv(device):
            model.extra["fused_qkv"] = fuse_qkv(model.unet)
        if memory.install(model, self.memory) is not None:
            if self.compile:
                log.warning("--compile is not used together with --%s; running eagerly", self.memory)
            return
        for module in (model.unet, model.vae, *model.text_encoders):
            module.to(device)
        if self.compile:
            problem = compiling.compiler_problem(model.device)
            if problem is not None:
                log.warning("--compile: %s; running eagerly", problem)
                return
            if self.cache_dir is not None:
                compiling.use_cache_dir(self.cache_dir)
            compiling.compile_model(model, cuda_graphs=self.cuda_graphs)
            if self.warmup:
                compiling.warm_up(model, self.warmup)
