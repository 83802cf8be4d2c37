"""Speed: the precision policy (dtypes, CPU bf16 detection, channels-last), and what is done to a model once
it is loaded so that its forwards run fast. One entry point, `Accel.prepare(model)`, called by the model
manager after every load."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.accel.layout import apply_layout
from pipeline.accel.precision import Precision, choose, resolve_device
from pipeline.model import SDModel

__all__ = ["Accel", "Precision", "choose", "resolve_device"]


@dataclass
class Accel:
    """Everything the speed flags ask of a loaded model."""

    precision: Precision

    def prepare(self, model: SDModel) -> None:
        apply_layout(model, self.precision)
