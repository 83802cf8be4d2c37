"""Reading model files without executing them, and detecting their architecture with spandrel.

`.safetensors` files are read with safetensors; `.pth`/`.pt` files only with
`torch.load(weights_only=True)`, which refuses any pickled object other than tensors and plain
containers. spandrel's own file loader is never used (it would `torch.jit.load` a `.pt` file),
only its architecture detection on a state dict we read ourselves.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import safetensors.torch
import spandrel
import torch

from .errors import ModelLoadError, UnsafeModelFile, UpscalerError

MODEL_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt")
"""File extensions scanned for upscaler models, lower case."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The canonical state dict of a model file, on the CPU, read without running pickled code.

    Raises UnsafeModelFile for files that would need arbitrary unpickling (or have another
    extension) and ModelLoadError for unreadable ones.
    """
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            raw: object = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(path, f"not a readable safetensors file ({exc})") from exc
    elif suffix in (".pth", ".pt"):
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsafeModelFile(
                path,
                "it holds pickled objects other than tensors, which are never executed here "
                f"({first_line}); convert it to .safetensors",
            ) from exc
        except Exception as exc:  # torch raises RuntimeError, EOFError, ... on garbage
            reason = f"not a readable torch weights file ({type(exc).__name__}: {exc})"
            raise ModelLoadError(path, reason) from exc
    else:
        raise UnsafeModelFile(path, f"unsupported model file extension {suffix!r}")
    if not isinstance(raw, dict):
        raise ModelLoadError(path, f"holds a {type(raw).__name__}, not a state dict")
    state = spandrel.canonicalize_state_dict(raw)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(path, "holds no tensors")
    return tensors


def architecture_registry(allow_noncommercial: bool) -> spandrel.ArchRegistry:
    """spandrel's registry, plus the non-commercial `spandrel_extra_arches` when allowed."""
    if not allow_noncommercial:
        return spandrel.MAIN_REGISTRY
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY  # type: ignore[import-not-found]
    except ImportError as exc:
        raise UpscalerError(
            "non-commercial upscaler architectures were allowed, but the spandrel_extra_arches "
            "package is not installed; install it or drop the option"
        ) from exc
    registry = spandrel.MAIN_REGISTRY.copy()
    registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


def load_descriptor(path: Path, registry: spandrel.ArchRegistry) -> spandrel.ImageModelDescriptor:
    """The spandrel model of `path`, on the CPU in fp32, in eval mode.

    Raises UnsafeModelFile, or ModelLoadError when the architecture is not recognised or the file
    is not a single-image model (inpainting models are not upscalers).
    """
    state = read_state_dict(path)
    try:
        descriptor = registry.load(state)
    except spandrel.UnsupportedModelError as exc:
        raise ModelLoadError(path, "spandrel does not recognise its architecture") from exc
    except Exception as exc:  # a recognised architecture with inconsistent weights
        raise ModelLoadError(path, f"spandrel failed to build it ({type(exc).__name__}: {exc})") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in (
        "SR",
        "Restoration",
    ):
        raise ModelLoadError(path, f"a {descriptor.purpose} model is not an upscaler")
    if descriptor.input_channels not in (1, 3) or descriptor.output_channels not in (1, 3):
        raise ModelLoadError(
            path,
            f"{descriptor.input_channels}->{descriptor.output_channels} channel models are not supported",
        )
    return descriptor.eval()
