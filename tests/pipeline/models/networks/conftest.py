"""`net_env`: the tiny SD1/SDXL checkpoints behind their own ModelManager (so that the patched models of
these tests are never the ones other tests use), a LoRA folder, and `run()`, which takes a txt2img request
through prepare, the server's network check and run_txt2img, as the route does."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.jobs.common import JobContext, JobResult
from pipeline.jobs.extensions import Extensions
from pipeline.jobs.pixel_upscale import HiresUpscaler
from pipeline.jobs.processing import prepare
from pipeline.jobs.txt2img import run_txt2img
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from pipeline.models.networks import Networks, check_job
from pipeline.runtime.job_state import JobState
from schemas.txt2img import Txt2ImgRequest
from tests.conftest import BASE_OPTIONS, FAST, MAX_PIXELS
from upscalers.registry import UpscalerRegistry


@dataclass
class NetEnv:
    models: ModelManager
    upscalers: UpscalerRegistry
    networks: Networks
    lora_dir: Path
    emb_dir: Path
    ckpts: dict[str, Any]
    state: JobState = field(default_factory=JobState)

    def model(self, which: str = "sd1") -> Any:
        return self.models.get(self.models.resolve_title(self.ckpts[which], "sd_model_checkpoint"))

    def run(self, which: str = "sd1", networks: bool = True, extensions: Extensions | None = None,
            options: dict[str, Any] | None = None, **fields: Any) -> JobResult:
        options = {**BASE_OPTIONS, "sd_model_checkpoint": self.ckpts[which], **(options or {})}
        req = Txt2ImgRequest(**{**FAST, "steps": 3, **fields})
        p = prepare(req, options, self.models, self.upscalers, MAX_PIXELS)
        nets = self.networks if networks else None
        check_job(nets, p, self.models)
        ctx = JobContext(self.models, HiresUpscaler(self.upscalers, p.options), extensions or Extensions(),
                      self.state, networks=nets)
        try:
            return run_txt2img(p, ctx)
        finally:
            self.state.end()


@pytest.fixture(scope="session")
def net_env(tiny_checkpoints: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> NetEnv:
    root = tiny_checkpoints["root"]
    registry = CheckpointRegistry(root, root / "data")
    mm = ModelManager(registry, torch.device("cpu"), torch.float32, max_loaded=2)
    lora_dir = tmp_path_factory.mktemp("Lora")
    emb_dir = tmp_path_factory.mktemp("embeddings")
    networks = Networks([lora_dir], emb_dir)
    return NetEnv(mm, UpscalerRegistry(root), networks, lora_dir, emb_dir, tiny_checkpoints)


def arr(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)
