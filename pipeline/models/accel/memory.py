"""Memory modes for small GPUs (A1111's `--medvram`, `--lowvram`, `--medvram-sdxl`).

medvram: the model's components (each text encoder, the UNet, the VAE) are kept on the offload device (the
  CPU) and only the one that is running sits on the compute device: a forward pre-hook on a component moves
  it there and sends the previously running one back. Text encoding, the UNet passes and the VAE decode
  each hold one component in GPU memory at a time.
lowvram: the same, one level finer for the UNet: each of its blocks (conv_in, the time embedding, every down
  block, the mid block, every up block, the output layers) moves in just before its forward and the previous
  block moves out, so the GPU holds one UNet block's weights at a time (slow: weights cross the bus every
  step). Text encoders and the VAE move whole, as in medvram.
medvram-sdxl: medvram for SDXL checkpoints, the normal mode for others.

The model's `device` stays the compute device: inputs go there and each module arrives before they need it.
`Placement.log` records every move (phase name, component, device) so that tests can check where each module
lives at each phase on a machine without a GPU."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.models.sd_model import SDModel

log = logging.getLogger("hiresd.accel")

MODES = ("none", "medvram", "lowvram", "medvram-sdxl")


def effective_mode(mode: str, family: str) -> str:
    """`medvram-sdxl` is medvram for SDXL models only."""
    if mode == "medvram-sdxl":
        return "medvram" if family == "sdxl" else "none"
    return mode


@dataclass
class Placement:
    """Moves a model's parts between `compute` and `offload` so that one part at a time is on `compute`."""

    compute: torch.device
    offload: torch.device
    parts: dict[str, Any] = field(default_factory=dict)  # name -> module (a component or a UNet block)
    active: str | None = None
    log: list[tuple[str, str]] = field(default_factory=list)  # (part moved in, part moved out or "")
    _handles: list[Any] = field(default_factory=list)

    def bring(self, name: str) -> None:
        """Put part `name` on the compute device, the previously active part back on the offload device."""
        if self.active == name:
            return
        out = self.active or ""
        if self.active is not None:
            self.parts[self.active].to(self.offload)
        self.parts[name].to(self.compute)
        self.active = name
        self.log.append((name, out))
        if self.compute.type == "cuda" and out:
            torch.cuda.empty_cache()

    def release(self) -> None:
        """Everything on the offload device (before another model, e.g. the pixel upscaler, runs)."""
        if self.active is not None:
            self.parts[self.active].to(self.offload)
            self.log.append(("", self.active))
            self.active = None
            if self.compute.type == "cuda":
                torch.cuda.empty_cache()

    def where(self) -> dict[str, str]:
        """The device of each part's first parameter (what a test asserts)."""
        return {name: str(_first_device(m)) for name, m in self.parts.items()}

    def add(self, name: str, module: Any, *triggers: Any) -> None:
        """Register a part; a forward pre-hook on the part (or on each of `triggers`) brings it in and moves
        the forward's tensor arguments to the compute device (callers that place inputs by a parameter's
        device, as the prompt encoder does, would otherwise send them to the offload device)."""
        self.parts[name] = module
        module.to(self.offload)

        def pre(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            self.bring(name)
            return _to(args, self.compute), _to(kwargs, self.compute)

        for m in triggers or (module,):
            self._handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device) if value.device != device else value
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _first_device(module: Any) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def unet_blocks(unet: Any) -> Iterator[tuple[str, Any]]:
    """The UNet's top-level pieces in forward order, ModuleLists split into their blocks."""
    for name, child in unet.named_children():
        if isinstance(child, torch.nn.ModuleList):
            for i, block in enumerate(child):
                yield f"unet.{name}.{i}", block
        elif any(True for _ in child.parameters()):
            yield f"unet.{name}", child


def install(model: SDModel, mode: str, offload: torch.device | None = None) -> Placement | None:
    """Set up `mode` (none, medvram, lowvram, medvram-sdxl) on a loaded model; None when it runs normally.
    The placement is kept in `model.extra["placement"]`."""
    mode = effective_mode(mode, model.family)
    if mode == "none":
        return None
    if mode not in MODES:
        raise ValueError(f"memory mode must be one of {', '.join(MODES)}, got {mode!r}")
    placement = Placement(model.device, offload or torch.device("cpu"))
    for i, te in enumerate(model.text_encoders):
        placement.add(f"text_encoder.{i}" if i else "text_encoder", te)
    if mode == "lowvram":
        for name, block in unet_blocks(model.unet):
            placement.add(name, block)
    else:
        placement.add("unet", model.unet)
    vae = model.vae
    triggers = [m for m in (vae.encoder, vae.decoder, getattr(vae, "quant_conv", None),
                            getattr(vae, "post_quant_conv", None)) if m is not None]
    placement.add("vae", vae, *triggers)
    model.extra["placement"] = placement
    model.extra["memory_mode"] = mode
    log.info("%s: %s components wait on %s, each moves to %s while it runs", mode, model.title,
             placement.offload, placement.compute)
    return placement
