"""`tiling: true`: seamlessly tileable images, by circular padding in every UNet and VAE convolution."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def circular_padding(modules: list[Any], enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    changed: list[tuple[torch.nn.Conv2d, str]] = []
    for module in modules:
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d) and m.padding_mode != "circular":
                changed.append((m, m.padding_mode))
                m.padding_mode = "circular"
                # Conv2d precomputes the padding tuple it hands to F.pad for non-zero modes
                m._reversed_padding_repeated_twice = [p for p in reversed(m.padding) for _ in range(2)] \
                    if not isinstance(m.padding, str) else m._reversed_padding_repeated_twice
    try:
        yield
    finally:
        for m, mode in changed:
            m.padding_mode = mode
