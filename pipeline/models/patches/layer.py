"""The per-pass UNet patching layer: changes to how the UNet computes (Hypertile, token merging, Deep
Shrink; FreeU, SAG, PAG next) installed for one sampling pass and removed after it.

A patch is any object with `apply(patcher: UNetPatcher) -> None` (the `UNetPatch` protocol). In `apply` it
installs what it needs through the patcher, never by hand, so that everything is undone when the pass
ends, whatever happens (an error, an interrupt):

    patcher.unet                       the UNet being patched (a diffusers UNet2DConditionModel)
    patcher.model                      the SDModel it belongs to (family, dtype, device)
    patcher.info                       PassInfo: pass number (1, 2 = hires), pixel size, the job's seed
    patcher.call                       UNetCall: the UNet call in progress (timestep, latent size, batch),
                                       updated before every call of the UNet
    patcher.pre_hook(module, fn)       torch forward pre-hook (with_kwargs: fn(module, args, kwargs))
    patcher.post_hook(module, fn)      torch forward hook fn(module, args, output)
    patcher.wrap_forward(module, fn)   module.forward(*a, **k) becomes fn(original_forward, *a, **k)
    patcher.on_exit(fn)                any other undo step
    blocks.input_block_patch / output_block_patch   (pipeline/models/patches/blocks.py) the UNet's skip
                                       connections in A1111/ComfyUI block numbering

Patches are installed in the order given and removed in reverse. They only add hooks and instance-level
forwards, never touch weights, so they compose with LoRA (weights patched in place), fused QKV (attention
processors), tiled diffusion (the UNet is called per tile: `patcher.call` then sees the tile's size) and a
compiled UNet (torch.compile traces through the hooks; a pass with patches compiles its own graph). With
no patch nothing at all is installed, so a job without options runs the exact code it ran before.
`apply_patches(model, patches, info)` is the context manager `jobs/common.run_pass` wraps each pass in."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from pipeline.models.sd_model import SDModel

TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class PassInfo:
    """What a patch may know of the pass: `pass_no` 1 (or the only pass), 2 the hires pass; the pass's pixel
    size; `seed` the job's first seed (A1111's `p.all_seeds[0]`); `img2img` a pass of an img2img job."""

    pass_no: int
    width: int
    height: int
    seed: int
    img2img: bool = False


@dataclass
class UNetCall:
    """The UNet call in progress: its timestep (on the 0..999 training scale; None before the first call),
    the latent's (height, width) and batch size as the UNet receives them (a tile's under tiled
    diffusion)."""

    timestep: float | None = None
    latent_size: tuple[int, int] = (0, 0)
    batch: int = 0
    count: int = 0  # calls so far in this pass

    def percent(self) -> float:
        """How far into the model's noise range the call is: 0 at the noisiest timestep (999), 1 at 0, as
        ComfyUI's / Forge's start and end percents count (percent p is timestep (1 - p) * 999)."""
        t = 0.0 if self.timestep is None else self.timestep
        return 1.0 - t / (TRAIN_TIMESTEPS - 1)


class UNetPatch(Protocol):
    def apply(self, patcher: UNetPatcher) -> None: ...


@dataclass
class UNetPatcher:
    """Installs patches on one model's UNet for one pass and removes all of them in `close()`."""

    model: SDModel
    info: PassInfo
    call: UNetCall = field(default_factory=UNetCall)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    @property
    def unet(self) -> Any:
        return self.model.unet

    def on_exit(self, fn: Callable[[], None]) -> None:
        self._undo.append(fn)

    def pre_hook(self, module: torch.nn.Module, fn: Callable[..., Any]) -> None:
        """fn(module, args, kwargs) -> None or a new (args, kwargs)."""
        self.on_exit(module.register_forward_pre_hook(fn, with_kwargs=True).remove)

    def post_hook(self, module: torch.nn.Module, fn: Callable[..., Any]) -> None:
        """fn(module, args, output) -> None or a new output."""
        self.on_exit(module.register_forward_hook(fn).remove)

    def wrap_forward(self, module: torch.nn.Module, fn: Callable[..., Any]) -> None:
        """Until the pass ends, `module(*a, **k)` runs fn(original_forward, *a, **k) (hooks still run
        around it). Wrapping a module twice chains the wrappers, the later outermost."""
        had_own = "forward" in module.__dict__
        previous = module.__dict__.get("forward")
        original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            return fn(original, *args, **kwargs)

        module.forward = forward

        def undo() -> None:
            if had_own:
                module.forward = previous
            else:
                del module.forward

        self.on_exit(undo)

    def close(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _track_calls(self) -> None:
        def before(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            sample = args[0] if args else kwargs["sample"]
            t = args[1] if len(args) > 1 else kwargs.get("timestep")
            if torch.is_tensor(t):
                t = t.flatten()[0].item() if t.numel() else None
            self.call.timestep = None if t is None else float(t)
            self.call.latent_size = (int(sample.shape[-2]), int(sample.shape[-1]))
            self.call.batch = int(sample.shape[0])
            self.call.count += 1

        self.pre_hook(self.unet, before)


@contextlib.contextmanager
def apply_patches(model: SDModel, patches: list[UNetPatch], info: PassInfo) -> Iterator[UNetPatcher | None]:
    """`patches` installed on `model`'s UNet for the body, all removed after it (also on an error). No
    patches: nothing is installed and None is yielded."""
    if not patches:
        yield None
        return
    patcher = UNetPatcher(model, info)
    try:
        patcher._track_calls()
        for patch in patches:
            patch.apply(patcher)
        yield patcher
    finally:
        patcher.close()
