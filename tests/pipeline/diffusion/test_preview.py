"""Live previews by A1111's option `show_progress_type`: "Approx NN" from the user's A1111 file
(`<models>/VAE-approx/model.pt`), checked against the network written out with torch's functional ops;
without the file, or for TAESD / Full, the linear approximation with one log line."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.diffusion import preview as preview_mod
from pipeline.diffusion.denoise import progress_callback
from pipeline.diffusion.preview import ApproxNN, Previews, latent_preview
from pipeline.runtime.job_state import JobState


def _approx_file(folder: Path, name: str = "model.pt") -> dict[str, torch.Tensor]:
    """An Approx NN state dict as A1111 keeps it (conv1..conv8 weights and biases), random but fixed."""
    g = torch.Generator().manual_seed(0)
    chans, kernels = (4, 8, 16, 32, 64, 32, 16, 8, 3), (7, 5, 3, 3, 3, 3, 3, 3)
    state = {}
    for i, k in enumerate(kernels):
        state[f"conv{i + 1}.weight"] = torch.randn(chans[i + 1], chans[i], k, k, generator=g) * 0.2
        state[f"conv{i + 1}.bias"] = torch.randn(chans[i + 1], generator=g) * 0.05
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    return state


def _reference(state: dict[str, torch.Tensor], z: torch.Tensor) -> np.ndarray:
    x = F.interpolate(z, scale_factor=2.0, mode="nearest")
    x = F.pad(x, (11, 11, 11, 11))
    for i in range(8):
        x = F.leaky_relu(F.conv2d(x, state[f"conv{i + 1}.weight"], state[f"conv{i + 1}.bias"]), 0.1)
    return ((x[0] + 1) / 2).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()


def test_approx_nn_from_the_users_file_matches_the_reference(tmp_path: Path) -> None:
    state = _approx_file(tmp_path / "VAE-approx")
    z = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    img = Previews(tmp_path / "VAE-approx").render(z, "sd1", "Approx NN")
    assert img.size == (10, 12)  # a quarter of the 40x48 image
    assert np.array_equal(np.asarray(img), _reference(state, z[:1]))
    assert sum(p.numel() for p in ApproxNN().parameters()) == sum(t.numel() for t in state.values())


def test_without_the_file_approx_nn_is_the_cheap_preview_with_one_log_line(tmp_path: Path, caplog) -> None:
    z = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    previews = Previews(tmp_path / "VAE-approx")
    with caplog.at_level(logging.INFO, logger="hiresd.preview"):
        a = previews.render(z, "sdxl", "Approx NN")
        b = previews.render(z, "sdxl", "Approx NN")
    assert np.array_equal(np.asarray(a), np.asarray(latent_preview(z, "sdxl")))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    lines = [r.getMessage() for r in caplog.records if "vaeapprox-sdxl.pt" in r.getMessage()]
    assert len(lines) == 1 and "Approx cheap" in lines[0]


def test_the_option_picks_the_method_of_the_jobs_previews(tmp_path: Path, caplog) -> None:
    state = _approx_file(tmp_path / "VAE-approx")
    previews = Previews(tmp_path / "VAE-approx")
    z = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    got = {}
    preview_mod._told.discard("Full")
    for method in ("Approx NN", "Approx cheap", "TAESD", "Full"):
        js = JobState()
        js.begin("txt2img", 1)
        opts = {"show_progress_every_n_steps": 1, "live_previews_enable": True, "show_progress_type": method}
        with caplog.at_level(logging.INFO, logger="hiresd.preview"):
            progress_callback(js, opts, "sd1", 2, previews)(1, z, None)
        got[method] = np.asarray(js.snapshot()["preview"]())
    assert np.array_equal(got["Approx NN"], _reference(state, z))
    cheap = np.asarray(latent_preview(z, "sd1"))
    assert all(np.array_equal(got[m], cheap) for m in ("Approx cheap", "TAESD", "Full"))  # no TAESD file here
    assert any("'Full'" in r.getMessage() for r in caplog.records)


def test_taesd_previews_use_the_taesd_decoder_file(tmp_path: Path) -> None:
    from pipeline.models.taesd import TinyVAEs, decoder

    folder = tmp_path / "VAE-taesd"
    folder.mkdir()
    g = torch.Generator().manual_seed(5)
    torch.save({k: torch.randn(v.shape, generator=g) * 0.05 for k, v in decoder().state_dict().items()},
               folder / "taesd_decoder.pth")
    tiny = TinyVAEs(folder)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(6))
    img = Previews(None, tiny).render(z, "sd1", "TAESD")
    want = (tiny.decode(tiny.get("decoder", "sd1"), z)[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    assert img.size == (32, 32) and np.array_equal(np.asarray(img), want)
