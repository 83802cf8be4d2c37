"""Speed: the precision policy (dtypes, CPU bf16 detection, channels-last), opt-in compiled forwards, and what
is done to a model once it is loaded so that its forwards run fast. One entry point, `Accel.prepare(model)`,
called by the model manager after every load."""
from pipeline.models.accel.policy import Accel
from pipeline.models.accel.precision import Precision, choose, resolve_device

__all__ = ["Accel", "Precision", "choose", "resolve_device"]
