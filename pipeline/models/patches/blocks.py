"""The UNet's skip connections in A1111 / ComfyUI block numbering, for patches that act on them (Deep
Shrink's downscale and upscale; FreeU's backbone and skip scaling).

Input block k is the k-th feature map pushed on the skip stack: 0 is `conv_in`'s output, then each
resnet (+ its attention) of each down block, and each down block's downsampler, in order (SD 1.5: 1-2 at
full latent size, 3 the first downsample, 4-5, 6, 7-8, 9, 10-11). Output block j is the j-th concatenation
of the up path: the hidden state `h` about to be concatenated with the skip `hsp` popped for it (j = 0
pops input block 11 on SD 1.5)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pipeline.models.patches.layer import UNetPatcher

InputFn = Callable[[torch.Tensor, int], torch.Tensor]
OutputFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def _producer(block: Any, j: int) -> Any:
    attentions = getattr(block, "attentions", None)
    return attentions[j] if attentions is not None and j < len(attentions) else block.resnets[j]


def input_blocks(unet: Any) -> list[tuple[Any, Any]]:
    """(producer, consumer) per input block: the module whose output is pushed as skip k, and the module that
    next receives the hidden state (the mid block after the last)."""
    producers: list[Any] = [unet.conv_in]
    consumers: list[Any] = []
    for block in unet.down_blocks:
        for j, resnet in enumerate(block.resnets):
            consumers.append(resnet)
            producers.append(_producer(block, j))
        for down in block.downsamplers or []:
            consumers.append(down)
            producers.append(down)
    consumers.append(unet.mid_block)
    return list(zip(producers, consumers))


def _first_tensor(output: Any) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def _replace_first(output: Any, h: torch.Tensor) -> Any:
    if torch.is_tensor(output):
        return h
    if isinstance(output, tuple):
        return (h, *output[1:])
    output.sample = h
    return output


def input_block_patch(patcher: UNetPatcher, fn: InputFn, after_skip: bool = False) -> None:
    """fn(h, k) -> h for every input block k. `after_skip` False: the result is both pushed as the skip and
    passed on (ComfyUI's input_block_patch); True: the skip keeps the block's output and only the hidden
    state passed on is fn's (input_block_patch_after_skip)."""
    for k, (producer, consumer) in enumerate(input_blocks(patcher.unet)):
        if after_skip:
            def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any], k: int = k) -> Any:
                if args:
                    return (fn(args[0], k), *args[1:]), kwargs
                name = "hidden_states" if "hidden_states" in kwargs else "input_tensor"
                return args, {**kwargs, name: fn(kwargs[name], k)}

            patcher.pre_hook(consumer, pre)
        else:
            def post(_m: Any, _args: Any, output: Any, k: int = k) -> Any:
                return _replace_first(output, fn(_first_tensor(output), k))

            patcher.post_hook(producer, post)


def output_block_patch(patcher: UNetPatcher, fn: OutputFn) -> None:
    """fn(h, hsp, j) -> (h, hsp) before every concatenation j of the up path (ComfyUI's
    output_block_patch). A returned skip other than `hsp` is written into it in place (same shape)."""
    j = 0
    for block in patcher.unet.up_blocks:
        n = len(block.resnets)
        skips: dict[str, tuple[torch.Tensor, ...]] = {}

        def apply(h: torch.Tensor, r: int, j: int, skips: dict[str, Any]) -> torch.Tensor:
            hsp = skips["tuple"][-1 - r]
            h2, hsp2 = fn(h, hsp, j)
            if hsp2 is not hsp:
                hsp.copy_(hsp2)
            return h2

        def wrapper(original: Callable[..., Any], *args: Any, j0: int = j, skips: dict[str, Any] = skips,
                    **kwargs: Any) -> Any:
            if args:
                hidden, res, rest = args[0], args[1], args[2:]
            else:
                hidden, res, rest = kwargs.pop("hidden_states"), kwargs.pop("res_hidden_states_tuple"), ()
            skips["tuple"] = res
            try:
                hidden = apply(hidden, 0, j0, skips)
                return original(hidden, res, *rest, **kwargs)
            finally:
                skips.pop("tuple", None)

        patcher.wrap_forward(block, wrapper)
        for r in range(1, n):
            def post(_m: Any, _args: Any, output: Any, r: int = r, jr: int = j + r,
                     skips: dict[str, Any] = skips) -> Any:
                return _replace_first(output, apply(_first_tensor(output), r, jr, skips))

            patcher.post_hook(_producer(block, r - 1), post)
        j += n
