"""Patching a loaded model's weights with a set of networks, and restoring them exactly.

One `Patcher` per loaded model. `apply(plan)` does nothing when the wanted set (its signature) is the one
already applied. Otherwise it copies back, bit for bit, every parameter the previous set touched (from a
backup taken the first time it was touched), then adds each network's delta in order. Only parameters the
old or the new set touch are written; backups exist only while their parameter is patched. Sampling then
runs on plain weights: no per-step cost.

Where the backups live (option `lora_backup_device`): on the CPU, as A1111 keeps them, when the weights are
on an accelerator whose memory they would crowd ("auto": unless at least half of the device's memory stays
free after them), so a LoRA never costs VRAM that sampling needs; "device" keeps them beside the weights
(fastest switch), "cpu" always on the CPU. On a CPU-only machine the three are the same.

Option `lora_functional` (A1111's "Lora: use old method that takes longer when you have multiple Loras
active"): the networks are not merged; each patched Linear / Conv2d adds its networks' outputs to its own
on every call (a plain LoRA as up(down(x)), other types as the layer's operation with the delta weight),
the weights staying untouched. Same results up to rounding (with float8 weights the networks keep their
own precision); modules of other kinds (norms) are merged as usual."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.models.networks.keys import Target
from pipeline.models.networks.types import ModuleNetwork

log = logging.getLogger("hiresd.networks")


@dataclass(frozen=True)
class Step:
    """One module delta of the plan: where, what, with which multiplier and dyn."""

    target: Target
    network: ModuleNetwork
    multiplier: float
    dyn: int | None


BACKUP_DEVICES = ("auto", "device", "cpu")
BACKUP_BUFFER = 128 * 2**20  # elements per backup buffer (256 MiB in 16-bit weights)


def backup_device(policy: str, weights: torch.device, need: int, free: int, total: int) -> torch.device:
    """Where the backups of `need` more bytes go, for weights on `weights` with `free` of `total` bytes of
    its memory free (see the module's text)."""
    if weights.type == "cpu" or policy == "cpu":
        return torch.device("cpu")
    if policy == "device" or free - need >= total // 2:
        return weights
    return torch.device("cpu")


def _memory(device: torch.device) -> tuple[int, int]:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)
    return 0, 0


@dataclass
class Patcher:
    """The networks applied to one model, and the pristine copies of the parameters they changed."""

    signature: tuple = ()
    backups: str = "auto"  # one of BACKUP_DEVICES
    # id(module) -> (module, pristine copy)
    _weights: dict[int, tuple[Any, torch.Tensor]] = field(default_factory=dict)
    _biases: dict[int, tuple[Any, torch.Tensor | None]] = field(default_factory=dict)  # None: had no bias
    _hooks: list[Any] = field(default_factory=list)  # forward hooks of the functional mode

    @property
    def backup_bytes(self) -> int:
        n = sum(t.numel() * t.element_size() for _, t in self._weights.values())
        return n + sum(t.numel() * t.element_size() for _, t in self._biases.values() if t is not None)

    @property
    def touched(self) -> int:
        return len(self._weights)

    @torch.no_grad()
    def restore(self) -> None:
        """Every patched parameter back to its original bits; no network applied."""
        for module, original in self._weights.values():
            module.weight.copy_(original)
        for module, original in self._biases.values():
            if original is None:
                module.bias = None
            else:
                module.bias.copy_(original)
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._weights.clear()
        self._biases.clear()
        self.signature = ()

    @torch.no_grad()
    def apply(self, signature: tuple, plan: list[Step], functional: bool = False) -> bool:
        """Make `plan` the applied set (False when it already is). Deltas are added in plan order, each
        computed from the weight as the earlier ones left it (IA3, OFT, GLoRA and DoRA depend on it). If a
        step fails, every weight is restored before the error goes up. `functional`: option
        `lora_functional` (see the module's text); it is part of the signature."""
        if signature == self.signature:
            return False
        self.restore()
        try:
            if functional:
                layers = [isinstance(s.target.module, (torch.nn.Linear, torch.nn.Conv2d)) for s in plan]
                self._add([s for s, layer in zip(plan, layers, strict=True) if not layer])
                self._hook([s for s, layer in zip(plan, layers, strict=True) if layer])
            else:
                self._add(plan)
        except Exception:
            self.restore()
            raise
        self.signature = signature
        return True

    def _backup_to(self, modules: list[Any]) -> torch.device | None:
        """The device for the backups of these modules' weights on an accelerator (None: none is on one)."""
        on = [m for m in modules if m.weight.device.type != "cpu"]
        if not on:
            return None
        need = sum(m.weight.numel() * m.weight.element_size() for m in on)
        return backup_device(self.backups, on[0].weight.device, need, *_memory(on[0].weight.device))

    def _take_backups(self, plan: list[Step]) -> None:
        """Copy the weights the plan touches (all pristine: `restore` came first) into a few buffers of
        about BACKUP_BUFFER elements each, not one allocation per parameter: on the CPU, hundreds of
        parameter-sized blocks would sit in the C heap while the set is applied and slow the sampler's
        allocations (bench/results/lora-cpu-control.txt); large buffers are mapped apart from it and
        given back whole. A part on the CPU (offloaded text encoders) keeps its backups there."""
        modules = list({id(s.target.module): s.target.module for s in plan}.values())
        accelerator = self._backup_to(modules)
        groups: dict[tuple[Any, torch.dtype], list[Any]] = {}
        for m in modules:
            to = torch.device("cpu") if m.weight.device.type == "cpu" else accelerator
            groups.setdefault((to, m.weight.dtype), []).append(m)
        for (to, dtype), members in groups.items():
            start = 0
            while start < len(members):
                end, size = start, 0
                while end < len(members) and (end == start or size < BACKUP_BUFFER):
                    size += members[end].weight.numel()
                    end += 1
                flat = torch.empty(size, dtype=dtype, device=to)
                offset = 0
                for m in members[start:end]:
                    n = m.weight.numel()
                    copy = flat[offset:offset + n].view(m.weight.shape)
                    copy.copy_(m.weight.detach())
                    self._weights[id(m)] = (m, copy)
                    offset += n
                start = end

    def _add(self, plan: list[Step]) -> None:
        self._take_backups(plan)
        # float8 weights (option `fp8_storage`): the deltas go onto a float32 copy (of the float16 one
        # kept by `cache_fp16_weight`, else of the float8 weight), rounded back to float8 once at the end
        widened: dict[int, tuple[Any, torch.Tensor]] = {}
        for step in plan:
            module = step.target.module
            key = id(module)
            weight = module.weight
            if weight.dtype == torch.float8_e4m3fn:
                if key not in widened:
                    base = getattr(module, "fp16_weight", None)
                    wide = (weight if base is None else base).to(weight.device, torch.float32)
                    widened[key] = (module, wide)
                weight = widened[key][1]
            db = step.network.add_to(weight, step.multiplier, step.dyn)
            if db is not None:
                if key not in self._biases:
                    bias = getattr(module, "bias", None)
                    self._biases[key] = (module, None if bias is None else bias.detach().clone())
                if module.bias is None:
                    module.bias = torch.nn.Parameter(torch.zeros(db.numel(), device=module.weight.device,
                                                                 dtype=module.weight.dtype),
                                                     requires_grad=False)
                if module.bias.dtype == torch.float8_e4m3fn:
                    module.bias.copy_(module.bias.float() + db.reshape(module.bias.shape).float())
                else:
                    module.bias.add_(db.reshape(module.bias.shape).to(module.bias.dtype))
        for module, wide in widened.values():
            module.weight.copy_(wide)

    def _hook(self, plan: list[Step]) -> None:
        """The functional mode: one forward hook per module adding its steps' outputs."""
        per_module: dict[int, tuple[Any, list[_Functional]]] = {}
        for step in plan:
            module = step.target.module
            per_module.setdefault(id(module), (module, []))[1].append(_Functional(step, module))
        for module, parts in per_module.values():
            def add(mod: Any, args: tuple, out: torch.Tensor,
                    parts: list[_Functional] = parts) -> torch.Tensor:
                x = args[0]
                for part in parts:
                    out = out + part(mod, x)
                return out
            self._hooks.append(module.register_forward_hook(add))


class _Functional:
    """One step's output for a layer's input: up(down(x)) x scale for a plain LoRA, else the layer's
    operation with the step's delta weight and bias (A1111's functional LoRA). Factors are cast to the
    input's device and dtype once."""

    def __init__(self, step: Step, module: Any) -> None:
        net, f = step.network, step.network.factors
        self.conv = isinstance(module, torch.nn.Conv2d)
        self.coef = net.scale() * step.multiplier
        self.low_rank = net.kind == "lora" and not ({"lora_mid", "dora_scale", "bias"} & f.keys())
        if self.low_rank:
            up, down = f["lora_up"], f["lora_down"]
            if step.dyn is not None:
                up, down = up[:, :step.dyn], down[:step.dyn]
            if self.conv:
                down = down if down.dim() == 4 else down[:, :, None, None]
                up = up.reshape(up.shape[0], up.shape[1], 1, 1)
            else:
                up, down = up.flatten(1), down.flatten(1)
            self.tensors: tuple[torch.Tensor, torch.Tensor | None] = (down, up)
        else:
            weight = module.weight
            base = getattr(module, "fp16_weight", None) if weight.dtype == torch.float8_e4m3fn else None
            w = (weight if base is None else base).to(weight.device, torch.float32)
            dw, db = net.delta(w, step.multiplier, step.dyn)
            self.tensors = (dw.reshape(weight.shape), db)
            self.coef = 1.0
        self._cast: tuple[Any, tuple[torch.Tensor | None, ...]] | None = None

    def _on(self, x: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        key = (x.device, x.dtype)
        if self._cast is None or self._cast[0] != key:
            self._cast = (key, tuple(None if t is None else t.to(x.device, x.dtype) for t in self.tensors))
        return self._cast[1]

    def __call__(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        a, b = self._on(x)
        if self.low_rank:
            if self.conv:
                h = F.conv2d(x, a, None, module.stride, module.padding, module.dilation)
                return F.conv2d(h, b) * self.coef
            return F.linear(F.linear(x, a), b) * self.coef
        if self.conv:
            return F.conv2d(x, a, None if b is None else b.reshape(-1), module.stride, module.padding,
                            module.dilation, module.groups)
        return F.linear(x, a, None if b is None else b.reshape(-1))
