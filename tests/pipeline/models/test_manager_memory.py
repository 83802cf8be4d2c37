"""Options `sd_checkpoints_limit` / `sd_checkpoints_keep_in_cpu` through the model manager's public API on a
GPU: with room for two checkpoints, the one not in use waits in CPU memory (keep_in_cpu) or stays on the
device (off), and comes back to the device when used. (Over HTTP, tests/server/test_model_options_http.py
checks that a checkpoint kept loaded is not read again.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.models.builtin import BUILTIN_NAME
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _where(model) -> set[str]:
    return {p.device.type for part in (model.unet, model.vae, *model.text_encoders) for p in part.parameters()}


@pytest.mark.parametrize("keep_in_cpu", [True, False])
def test_the_checkpoint_not_in_use_waits_in_cpu_memory(tmp_path: Path, keep_in_cpu: bool) -> None:
    from tests.fixtures.tinymodels import build_tiny_sd1

    build_tiny_sd1(tmp_path / "build", seed=3).write_safetensors(tmp_path / "Stable-diffusion" / "a.safetensors")
    mm = ModelManager(CheckpointRegistry(tmp_path, tmp_path / "data"), torch.device("cuda"), torch.float16)
    mm.set_checkpoints_limit(2, keep_in_cpu)
    a_key, b_key = mm.find("a").filename, mm.find(BUILTIN_NAME).filename
    a = mm.get(a_key)
    b = mm.get(b_key)
    assert mm.is_loaded(a_key) and mm.is_loaded(b_key)
    assert _where(b) == {"cuda"}
    assert _where(a) == ({"cpu"} if keep_in_cpu else {"cuda"})
    assert mm.get(a_key) is a and _where(a) == {"cuda"}
    assert _where(b) == ({"cpu"} if keep_in_cpu else {"cuda"})
