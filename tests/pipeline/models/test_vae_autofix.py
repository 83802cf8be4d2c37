"""Options `auto_vae_precision` / `auto_vae_precision_bfloat16` through the model manager's public API: a VAE
file whose decoder overflows float16 (its first convolution scaled up 10^4: values past 65504 become inf,
then every GroupNorm NaN) but not float32 or bfloat16, run in float16 as on a GPU. The decode is run again
in the option's dtype, which the VAE keeps; with both options off it stays all NaN (a black image).

CPU runs cannot take a float16 VAE through the server's flags (the CPU policy has none), so this is the
closest honest test: the same manager and codec calls a job makes, with the manager built as a GPU's."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pipeline.models import vae_codec
from pipeline.models.builtin import BUILTIN_NAME, build_builtin_model
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from pipeline.models.vae_files import VaeRegistry


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("autofix")
    state = {k: v.clone() for k, v in build_builtin_model().vae.state_dict().items()}
    state["decoder.conv_in.weight"] *= 1e4
    (root / "VAE").mkdir()
    torch.save(state, root / "VAE" / "hot.pt")
    return root


def _decode(models_dir: Path, vae_dtype: torch.dtype, auto: bool, bf16: bool
            ) -> tuple[torch.Tensor, ModelManager]:
    mm = ModelManager(CheckpointRegistry(models_dir, models_dir / "data"), torch.device("cpu"), torch.float32,
                      vae_dtype=vae_dtype, vaes=VaeRegistry(models_dir))
    mm.select_vae("hot.pt", apply_now=False)
    mm.set_vae_autofix(auto, bf16)
    model = mm.get(mm.find(BUILTIN_NAME).filename)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    return vae_codec.decode(model, z), mm


@pytest.fixture(scope="module")
def reference(models_dir: Path) -> torch.Tensor:
    out, _ = _decode(models_dir, torch.float32, False, False)
    assert torch.isfinite(out).all()
    return out


@pytest.mark.parametrize("auto,bf16,dtype", [(True, False, torch.float32), (False, True, torch.bfloat16),
                                             (True, True, torch.bfloat16)])
def test_an_all_nan_decode_is_run_again_wider(models_dir: Path, reference: torch.Tensor, auto: bool,
                                              bf16: bool, dtype: torch.dtype, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="hiresd.vae")
    out, mm = _decode(models_dir, torch.float16, auto, bf16)
    assert torch.isfinite(out).all()
    # the weights went through float16 once (as a GPU's VAE does): equal to the float32 decode up to that
    assert (out - reference).abs().max() < (0.05 if dtype == torch.bfloat16 else 2e-3)
    model = mm.get(mm.current_filename)
    assert model.vae_dtype == dtype and next(model.vae.parameters()).dtype == dtype  # kept from then on
    assert any("all NaNs" in r.getMessage() for r in caplog.records)


def test_with_both_options_off_the_nans_stay(models_dir: Path) -> None:
    out, mm = _decode(models_dir, torch.float16, False, False)
    assert torch.isnan(out).all()
    assert mm.get(mm.current_filename).vae_dtype == torch.float16
