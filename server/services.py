"""The app's one `Services` object: configuration, options, the worker and the registries it drives."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipeline.checkpoints import CheckpointRegistry
from pipeline.extensions import Extensions
from pipeline.models import ModelManager
from pipeline.pixel_upscale import HiresUpscaler
from pipeline.processing import Processing
from pipeline.txt2img import Context, Txt2ImgResult, run_txt2img
from pipeline.worker import Worker
from server.config import ServerConfig
from server.imagecodec import encode_image
from server.options import OptionsStore
from upscalers.registry import UpscalerRegistry

log = logging.getLogger("hiresd.services")


def pick_device(config: ServerConfig) -> tuple[torch.device, torch.dtype, torch.dtype | None]:
    """(device, model dtype, VAE dtype): CUDA when present (fp16 UNet and text encoders, bf16 VAE where the
    card supports it, since SDXL's VAE overflows in fp16), else the CPU in fp32."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cpu":
        if config.precision in ("fp16",):
            log.warning("fp16 on the CPU is very slow and inexact; using fp32")
        dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
        return device, dtype, None
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(config.precision, torch.float16)
    vae = torch.bfloat16 if dtype == torch.float16 and torch.cuda.is_bf16_supported() else None
    if dtype == torch.float16 and vae is None:
        vae = torch.float32
    return device, dtype, vae


@dataclass
class Services:
    config: ServerConfig
    options: OptionsStore
    worker: Worker
    models: ModelManager
    upscalers: UpscalerRegistry
    extensions: Extensions

    @classmethod
    def create(cls, config: ServerConfig) -> Services:
        device, dtype, vae_dtype = pick_device(config)
        log.info("device %s, dtype %s, VAE dtype %s", device, dtype, vae_dtype or dtype)
        registry = CheckpointRegistry(config.models_dir, config.data_dir)
        models = ModelManager(registry, device, dtype, vae_dtype, builtin=config.builtin_model)
        registry.start_background_hashing()
        upscalers = UpscalerRegistry(config.models_dir, allow_noncommercial=config.allow_noncommercial_upscalers,
                                     device=device)
        options = OptionsStore(config.data_dir / "options.json")
        svc = cls(config, options, Worker(config.queue_size), models, upscalers,
                  Extensions.load(config.extensions_dir))
        return svc

    def shutdown(self) -> None:
        self.worker.stop(self.config.shutdown_grace_s)
        self.models.registry.stop_background_hashing()

    def current_options(self) -> dict[str, Any]:
        values = self.options.all()
        info = self.models.default()
        values["sd_model_checkpoint"] = info.title
        values["sd_checkpoint_hash"] = info.sha256 or ""
        return values

    # -- jobs (run on the worker thread) --------------------------------------------------------------
    def run_txt2img(self, p: Processing) -> Txt2ImgResult:
        ctx = Context(self.models, HiresUpscaler(self.upscalers, p.options), self.extensions, self.worker.state)
        try:
            return run_txt2img(p, ctx)
        finally:
            if p.hr_checkpoint:  # pass two ran on another model: the job's model stays the selected one
                self.models.current_filename = p.checkpoint

    def save_images(self, images: list[Image.Image], infotexts: list[str], fmt: str, opts: dict[str, Any]) -> None:
        """A1111-style numbered files `NNNNN-<seed>.<ext>` under outputs/txt2img-images/<date>/, written
        atomically and never overwriting an existing file."""
        root = Path(opts.get("outdir_samples") or opts.get("outdir_txt2img_samples") or "txt2img-images")
        if not root.is_absolute():
            root = self.config.outputs_dir / root
        folder = root / date.today().isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        ext = "jpg" if fmt == "jpeg" else fmt
        for img, text in zip(images, infotexts, strict=True):
            data = encode_image(img, fmt, text_chunks={"parameters": text} if opts.get("enable_pnginfo") else {})
            seed = _seed_of(text)
            while True:
                number = _next_number(folder)
                path = folder / f"{number:05d}-{seed}.{ext}"
                tmp = folder / f".{path.name}.tmp"
                tmp.write_bytes(data)
                try:
                    os.link(tmp, path)  # atomic, and fails rather than overwrite
                except FileExistsError:
                    tmp.unlink(missing_ok=True)
                    continue
                tmp.unlink(missing_ok=True)
                break


def _seed_of(infotext: str) -> str:
    for part in infotext.rsplit("\n", 1)[-1].split(", "):
        if part.startswith("Seed: "):
            return part[6:]
    return "0"


def _next_number(folder: Path) -> int:
    best = -1
    for f in folder.iterdir():
        head = f.name.split("-", 1)[0]
        if head.isdigit():
            best = max(best, int(head))
    return best + 1
