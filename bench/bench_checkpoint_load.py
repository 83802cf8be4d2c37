"""Checkpoint loading, side by side in one run: our strict loader (architecture read from the tensors,
tensors assigned) against diffusers' `from_single_file` with the shipped config directory (the previous
path), on a real-size SD 1.5 file with random weights (fp16, about 2 GB; peak RAM about 7 GB).

    .venv/bin/python bench/bench_checkpoint_load.py [--repeats 2]

Prints each path's best wall time and the ratio, and checks both give identical weights.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.checkpoints import CONFIGS_DIR, CheckpointInfo, load_checkpoint, read_state_dict  # noqa: E402
from tests.fixtures.ldm_export import sd_to_ldm  # noqa: E402
from tests.pipeline.models.test_realsize import _build_random_sd15  # noqa: E402


def diffusers_path(path: Path) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    sd = read_state_dict(path)
    common = {"config": str(CONFIGS_DIR / "sd1"), "local_files_only": True, "torch_dtype": torch.float32}
    return {"unet": UNet2DConditionModel.from_single_file(sd, subfolder="unet", **common),
            "vae": AutoencoderKL.from_single_file(sd, subfolder="vae", **common),
            "text_encoder": create_diffusers_clip_model_from_ldm(CLIPTextModel, sd, subfolder="text_encoder",
                                                                 **common)}


def main() -> None:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its "kept in float32: []" notice on every load
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sd15-random.safetensors"
        src = _build_random_sd15()
        from safetensors.torch import save_file

        save_file({k: v.half().contiguous() for k, v in sd_to_ldm(src["unet"], src["vae"],
                                                                  src["text_encoder"]).items()}, str(path))
        del src
        gc.collect()
        times: dict[str, list[float]] = {"ours": [], "diffusers": []}
        ours = theirs = None
        for _ in range(args.repeats):
            for name in ("ours", "diffusers"):
                ours = theirs = None
                gc.collect()
                t0 = time.perf_counter()
                if name == "ours":
                    ours = load_checkpoint(CheckpointInfo.from_path(path), "cpu", torch.float32, compute_hash=False)
                else:
                    theirs = diffusers_path(path)
                times[name].append(time.perf_counter() - t0)
        ours = load_checkpoint(CheckpointInfo.from_path(path), "cpu", torch.float32, compute_hash=False)
        theirs = diffusers_path(path)
        pairs = [(ours.unet, theirs["unet"]), (ours.vae, theirs["vae"]), (ours.text_encoders[0], theirs["text_encoder"])]
        same = all(set(a.state_dict()) == set(b.state_dict()) and
                   all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items()) for a, b in pairs)
    best = {k: min(v) for k, v in times.items()}
    print(f"load real-size SD 1.5 (fp16 file -> fp32), best of {args.repeats}:")
    for k, v in best.items():
        print(f"  {k:10s} {v:7.2f} s")
    print(f"  ratio ours/diffusers: {best['ours'] / best['diffusers']:.2f}   identical weights (UNet, VAE, text): {same}")


if __name__ == "__main__":
    main()
