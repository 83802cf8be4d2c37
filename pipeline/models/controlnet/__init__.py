"""ControlNet models: files and titles (`store`), the architecture read from the tensors (`architecture`),
T2I-Adapters (`adapter`), ControlLoRA files (`control_lora`), and the residuals they add to the UNet call
(`residuals`)."""

from pipeline.models.controlnet.architecture import ControlNetArch
from pipeline.models.controlnet.residuals import ActiveControl, ControlResiduals, residual_scales
from pipeline.models.controlnet.store import ControlNetFile, ControlNetStore

__all__ = [
    "ActiveControl",
    "ControlNetArch",
    "ControlNetFile",
    "ControlNetStore",
    "ControlResiduals",
    "residual_scales",
]
