"""Patching a loaded model's weights with a set of networks, and restoring them exactly.

One `Patcher` per loaded model. `apply(plan)` does nothing when the wanted set (its signature) is the one
already applied. Otherwise it copies back, bit for bit, every parameter the previous set touched (from a
backup taken the first time it was touched), then adds each network's delta in order. Only parameters the
old or the new set touch are written; backups exist only while their parameter is patched. Sampling then
runs on plain weights: no per-step cost.

Where the backups live (option `lora_backup_device`): on the CPU, as A1111 keeps them, when the weights are
on an accelerator whose memory they would crowd ("auto": unless at least half of the device's memory stays
free after them), so a LoRA never costs VRAM that sampling needs; "device" keeps them beside the weights
(fastest switch), "cpu" always on the CPU. On a CPU-only machine the three are the same."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

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
        self._weights.clear()
        self._biases.clear()
        self.signature = ()

    @torch.no_grad()
    def apply(self, signature: tuple, plan: list[Step]) -> bool:
        """Make `plan` the applied set (False when it already is). Deltas are added in plan order, each
        computed from the weight as the earlier ones left it (IA3, OFT, GLoRA and DoRA depend on it). If a
        step fails, every weight is restored before the error goes up."""
        if signature == self.signature:
            return False
        self.restore()
        try:
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
        for step in plan:
            module = step.target.module
            key = id(module)
            db = step.network.add_to(module.weight, step.multiplier, step.dyn)
            if db is not None:
                if key not in self._biases:
                    bias = getattr(module, "bias", None)
                    self._biases[key] = (module, None if bias is None else bias.detach().clone())
                if module.bias is None:
                    module.bias = torch.nn.Parameter(torch.zeros(db.numel(), device=module.weight.device,
                                                                 dtype=module.weight.dtype),
                                                     requires_grad=False)
                module.bias.add_(db.reshape(module.bias.shape).to(module.bias.dtype))
