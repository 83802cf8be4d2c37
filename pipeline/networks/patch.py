"""Patching a loaded model's weights with a set of networks, and restoring them exactly.

One `Patcher` per loaded model. `apply(plan)` does nothing when the wanted set (its signature) is the one
already applied. Otherwise it copies back, bit for bit, every parameter the previous set touched (from a
backup taken the first time it was touched), then adds each network's delta in order. Only parameters the
old or the new set touch are written; backups exist only while their parameter is patched. Sampling then
runs on plain weights: no per-step cost."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.networks.keys import Target
from pipeline.networks.types import ModuleNetwork

log = logging.getLogger("hiresd.networks")


@dataclass(frozen=True)
class Step:
    """One module delta of the plan: where, what, with which multiplier and dyn."""

    target: Target
    network: ModuleNetwork
    multiplier: float
    dyn: int | None


@dataclass
class Patcher:
    """The networks applied to one model, and the pristine copies of the parameters they changed."""

    signature: tuple = ()
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

    def _add(self, plan: list[Step]) -> None:
        for step in plan:
            module = step.target.module
            key = id(module)
            if key not in self._weights:
                self._weights[key] = (module, module.weight.detach().clone())
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
