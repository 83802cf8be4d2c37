"""The per-pass UNet patching layer (pipeline/models/patches, applied by jobs/common.run_pass): patches see
every UNet call of the passes they are given, the model is left as found after every job (also a failed
one), and the block-numbered skip patches address the blocks A1111/ComfyUI number."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pipeline.jobs import unet_patches
from pipeline.models.patches import UNetPatcher
from pipeline.models.patches.blocks import input_block_patch, input_blocks, output_block_patch
from tests.conftest import pixels


def hook_state(unet: Any) -> list[tuple[str, int, int, bool]]:
    """Every module's hook counts and whether it carries an instance-level forward."""
    return [(name, len(m._forward_pre_hooks), len(m._forward_hooks), "forward" in m.__dict__)
            for name, m in unet.named_modules()]


class Recorder:
    """A patch recording (pass, timestep, latent size) of every UNet call it sees."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float, tuple[int, int]]] = []

    def apply(self, patcher: UNetPatcher) -> None:
        def after(_m: Any, _a: Any, _o: Any) -> None:
            self.seen.append((patcher.info.pass_no, patcher.call.timestep, patcher.call.latent_size))

        patcher.post_hook(patcher.unet.conv_in, after)


def test_a_patch_sees_each_pass_and_the_model_is_left_as_found(env, monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(unet_patches, "PROVIDERS", [lambda p, info: rec])
    unet = env.model().unet
    before = hook_state(unet)
    res = env.run(enable_hr=True, hr_scale=2.0)
    assert hook_state(unet) == before
    passes = [s[0] for s in rec.seen]
    assert passes.count(1) == res.unet_calls[0] and passes.count(2) == res.unet_calls[1]
    assert {s[2] for s in rec.seen if s[0] == 1} == {(8, 8)} and {s[2] for s in rec.seen if s[0] == 2} == {(16, 16)}
    assert all(0 <= s[1] <= 999 for s in rec.seen)


def test_a_failing_pass_still_removes_its_patches(env, monkeypatch):
    class Boom(Recorder):
        def apply(self, patcher: UNetPatcher) -> None:
            super().apply(patcher)

            def fail(*_: Any, **__: Any) -> None:
                raise RuntimeError("patch failed")

            patcher.wrap_forward(patcher.unet.mid_block, fail)

    monkeypatch.setattr(unet_patches, "PROVIDERS", [lambda p, info: Boom()])
    unet = env.model().unet
    before = hook_state(unet)
    with pytest.raises(RuntimeError, match="patch failed"):
        env.run()
    assert hook_state(unet) == before


def test_block_numbering_and_identity_block_patches_keep_the_image(env, monkeypatch):
    """The builtin UNet (2 levels, 1 resnet each) has input blocks conv_in, 1, downsample, 3; an input and
    output patch that returns what it gets changes no byte, and each block is seen once per call."""
    unet = env.model().unet
    assert len(input_blocks(unet)) == 4
    plain = env.run(seed=5)
    seen: dict[str, set[int]] = {"in": set(), "out": set()}

    class Identity:
        def apply(self, patcher: UNetPatcher) -> None:
            def on_in(h: torch.Tensor, k: int) -> torch.Tensor:
                seen["in"].add(k)
                return h

            def on_out(h: torch.Tensor, hsp: torch.Tensor, j: int):
                assert h.shape[-2:] == hsp.shape[-2:]
                seen["out"].add(j)
                return h, hsp

            input_block_patch(patcher, on_in, after_skip=True)
            output_block_patch(patcher, on_out)

    monkeypatch.setattr(unet_patches, "PROVIDERS", [lambda p, info: Identity()])
    patched = env.run(seed=5)
    assert seen == {"in": {0, 1, 2, 3}, "out": {0, 1, 2, 3}}
    assert np.array_equal(pixels(plain.images[0]), pixels(patched.images[0]))
