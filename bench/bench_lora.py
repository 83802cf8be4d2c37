"""LoRA switching cost, per-step cost and cache memory, side by side in one run.

    .venv/bin/python bench/bench_lora.py                  # real SD1.5 at 512 and real SDXL at 1024
    .venv/bin/python bench/bench_lora.py --quick          # CPU: narrowed SD1.5 shape only, a minute or two
    .venv/bin/python bench/bench_lora.py --device cuda    # the same on CUDA (fp16)
    .venv/bin/python bench/bench_lora.py --device cuda --backups cpu   # backups on the CPU, as A1111
    .venv/bin/python bench/bench_lora.py --models sdxl --sdxl-size 512 --step-factor 1024  # slow CPUs

The dtype is the server's default for the device (`--precision auto`: bf16 on CPUs with native bf16, else
fp32; fp16 on CUDA) unless `--precision` says otherwise.

Models: the SD 1.5 and SDXL architectures from the shipped configs (random weights: timing does not depend
on them); `--width-div N` narrows the UNet channels for slow machines (the printout says what ran). Networks:
rank-32 LoRA, LoHa and LoKr files in kohya layout over every attention/feed-forward linear of the UNet and
every attention/MLP linear of the text encoder(s), written to a temporary folder and loaded through
`pipeline.models.networks.Networks`, exactly as a job does.

Printed per model, as ratios of one UNet step (one CFG batch of 2 at the job's size):
  cold apply     first use of a file: read + parse + patch
  switch         from set A to set B (restore A's parameters, patch B's), files already cached
  restore        back to no networks
  step ratio     a UNet step with a LoRA applied / without (goal <= 1.02: the weights are plain tensors):
                 the median of the ratios of back-to-back pairs (their range and the ratio of the sums
                 beside it). The steps alternate with / without, so drift of the machine falls on both
                 sides; each timed step follows an untimed one after the switch (steady state, as a job's
                 later steps); the first step right after applying is printed beside it; a control (two
                 steps without networks, a switch there and back between them) shows the noise floor
  memory         bytes held by the parsed-file cache and by the backups of the patched parameters
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.accel.precision import PRECISIONS, choose  # noqa: E402
from pipeline.models.builtin import deterministic_fill, load_sd1_tokenizer  # noqa: E402
from pipeline.models.networks import Networks  # noqa: E402
from pipeline.models.networks.patch import BACKUP_DEVICES  # noqa: E402
from pipeline.models.sd_model import SDModel  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "pipeline" / "configs"
UNET_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TE_SUFFIXES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _cfg(family: str, part: str) -> dict[str, Any]:
    raw = json.loads((CONFIGS / family / part / "config.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def build(family: str, device: torch.device, dtype: torch.dtype, width_div: int) -> SDModel:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_cfg = _cfg(family, "unet")
    if width_div > 1:
        channels = unet_cfg["block_out_channels"]
        unet_cfg["block_out_channels"] = [max(32, c // width_div // 32 * 32) for c in channels]
    with torch.device("meta"):  # no init pass, no float32 copy of a 2.6B-parameter UNet
        unet = UNet2DConditionModel(**unet_cfg)
    unet = unet.to_empty(device="cpu").to(dtype)  # no buffers: every tensor is filled below
    encoders = [CLIPTextModel(CLIPTextConfig(**_cfg(family, "text_encoder")))]
    if family == "sdxl":
        encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**_cfg(family, "text_encoder_2"))))
    for i, m in enumerate([unet, *encoders]):
        deterministic_fill(m, 100 + i)
        m.eval().requires_grad_(False).to(device=device, dtype=dtype)
    tok = load_sd1_tokenizer()
    return SDModel(title=f"{family}-shaped-w{width_div}", family=family, unet=unet, vae=None,
                   text_encoders=encoders, tokenizers=[tok] * len(encoders), scheduler_config={},
                   device=device, dtype=dtype)


def write_network(model: SDModel, kind: str, path: Path, rank: int, seed: int) -> int:
    """A kohya-layout file of `kind` over the model's attention/MLP linears; returns its module count."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.01).to(torch.float16)

    prefixes = [("lora_unet_", model.unet, UNET_SUFFIXES)]
    te_prefixes = ["lora_te1_", "lora_te2_"] if model.family == "sdxl" else ["lora_te_"]
    prefixes += [(p, enc, TE_SUFFIXES) for p, enc in zip(te_prefixes, model.text_encoders)]
    count = 0
    for prefix, component, suffixes in prefixes:
        for name, mod in component.named_modules():
            if not (isinstance(mod, torch.nn.Linear) and name.endswith(suffixes)):
                continue
            if prefix != "lora_unet_" and not name.startswith("text_model."):
                name = "text_model." + name
            stem = prefix + name.replace(".", "_")
            o, i = mod.weight.shape
            if kind == "lora":
                out.update({f"{stem}.lora_up.weight": rnd(o, rank), f"{stem}.lora_down.weight": rnd(rank, i)})
            elif kind == "loha":
                out.update({f"{stem}.hada_w1_a": rnd(o, rank), f"{stem}.hada_w1_b": rnd(rank, i),
                            f"{stem}.hada_w2_a": rnd(o, rank), f"{stem}.hada_w2_b": rnd(rank, i)})
            else:  # lokr: a small full factor times a rank-32 factor, as LyCORIS writes it for big layers
                a = 4 if o % 4 == 0 and i % 4 == 0 else 1
                out.update({f"{stem}.lokr_w1": rnd(a, a), f"{stem}.lokr_w2_a": rnd(o // a, rank),
                            f"{stem}.lokr_w2_b": rnd(rank, i // a)})
            out[f"{stem}.alpha"] = torch.tensor(float(rank) / 2)
            count += 1
    save_file(out, str(path))
    return count


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Any, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


@torch.no_grad()
def unet_step(model: SDModel, size: int) -> None:
    x = torch.randn(2, 4, size // 8, size // 8, device=model.device, dtype=model.dtype)
    ctx_dim = model.unet.config.cross_attention_dim
    ctx = torch.randn(2, 77, ctx_dim, device=model.device, dtype=model.dtype)
    kwargs: dict[str, Any] = {}
    if model.family == "sdxl":
        embeds = torch.randn(2, 1280, device=model.device, dtype=model.dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": embeds,
                                       "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2,
                                                                device=model.device, dtype=model.dtype)}
    model.unet(x, torch.tensor([500.0] * 2, device=model.device), encoder_hidden_states=ctx, **kwargs)


def step_factor(model: SDModel, size: int, other: int) -> str:
    """One UNet step at `other` against steps at `size` just before and after it."""
    dev = model.device
    a = timed(lambda: unet_step(model, size), dev)
    b = timed(lambda: unet_step(model, other), dev)
    a = (a + timed(lambda: unet_step(model, size), dev)) / 2
    return (f"one UNet step at {other}: {b * 1000:.0f} ms = {b / a:.2f} x the step at {size} "
            f"({a * 1000:.0f} ms)")


def bench_model(model: SDModel, size: int, repeats: int, folder: Path, backups: str = "auto") -> list[str]:
    dev = model.device
    lines = [f"== {model.title} at {size}x{size}, {model.dtype}, {dev}, backups {backups} =="]
    networks = Networks([folder])
    networks.backups = backups
    counts = {kind: write_network(model, kind, folder / f"{model.title}-{kind}.safetensors", 32, i)
              for i, kind in enumerate(("lora", "loha", "lokr"))}
    networks.loras.refresh()
    unet_step(model, size)  # warm-up
    step = statistics.median(timed(lambda: unet_step(model, size), dev) for _ in range(repeats))
    lines.append(f"one UNet step (CFG batch 2): {step * 1000:.0f} ms")
    print("\n".join(lines), flush=True)
    for kind in ("lora", "loha", "lokr"):
        tag = f"<lora:{model.title}-{kind}:0.8>"
        other = f"<lora:{model.title}-{kind}:0.5>"  # another set (other weights): a full switch
        cold = timed(lambda: networks.activate(model, tag), dev)
        switches, restores = [], []
        for _ in range(repeats):
            switches.append(timed(lambda: networks.activate(model, other), dev))
            switches.append(timed(lambda: networks.activate(model, tag), dev))
            restores.append(timed(lambda: networks.activate(model, None), dev))
            networks.activate(model, tag)
        # Steady state, as in a job's later steps: after each switch one untimed step first, so the
        # allocator's refill after the switch's temporaries (page faults of fresh pages) is not charged to
        # the timed step; the first step after a switch is reported on its own ("first step after apply").
        # The control: a second step without networks after a switch there and back (the same work
        # between the two steps as on the LoRA side), whose ratio to the first is the machine's noise floor.
        with_steps, without_steps, control_steps, first_steps = [], [], [], []
        for _ in range(repeats):
            first_steps.append(timed(lambda: unet_step(model, size), dev))
            with_steps.append(timed(lambda: unet_step(model, size), dev))
            networks.activate(model, None)
            unet_step(model, size)
            without_steps.append(timed(lambda: unet_step(model, size), dev))
            networks.activate(model, other)
            networks.activate(model, None)
            unet_step(model, size)
            control_steps.append(timed(lambda: unet_step(model, size), dev))
            networks.activate(model, tag)
        with_lora, without = sum(with_steps), sum(without_steps)
        # Each pair ran back to back: the median of the pair ratios shrugs off a slow stretch of a shared
        # machine that the ratio of sums (printed too) absorbs on one side only.
        pairs = sorted(w / o for w, o in zip(with_steps, without_steps))
        noise = sorted(c / o for c, o in zip(control_steps, without_steps))
        patcher = model.extra["networks.patcher"]
        cache_mb, backup_mb = networks.cache.bytes / 2**20, patcher.backup_bytes / 2**20
        sw, rs = statistics.median(switches), statistics.median(restores)
        lines.append(f"{kind:5s} rank 32, {counts[kind]} modules: cold apply {cold * 1000:7.0f} ms "
                     f"({cold / step:5.2f} steps) | switch {sw * 1000:6.0f} ms ({sw / step:5.2f} steps) | "
                     f"restore {rs * 1000:5.0f} ms ({rs / step:5.3f} steps) | step with/without "
                     f"{statistics.median(pairs):5.3f} (pairs {pairs[0]:.3f}-{pairs[-1]:.3f}, sums "
                     f"{with_lora / without:5.3f}; control without/without {statistics.median(noise):5.3f} "
                     f"({noise[0]:.3f}-{noise[-1]:.3f}); first step after apply "
                     f"{sum(first_steps) / without:5.3f}) | "
                     f"cache {cache_mb:6.1f} MiB, backups {backup_mb:6.1f} MiB")
        print(lines[-1], flush=True)
        networks.activate(model, None)
        networks.cache.clear()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="narrowed SD1.5 shape only")
    ap.add_argument("--width-div", type=int, default=None, help="divide UNet channels (default 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="sd1,sdxl", help="comma-separated: sd1, sdxl")
    ap.add_argument("--sdxl-size", type=int, default=1024, help="image size of the SDXL UNet step")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS)
    ap.add_argument("--backups", default="auto", choices=BACKUP_DEVICES,
                    help="where the backups of patched weights live (the option lora_backup_device)")
    ap.add_argument("--step-factor", type=int, default=None, metavar="SIZE",
                    help="also time one UNet step at SIZE against the bench size (to convert the ratios)")
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = choose(device, a.precision).dtype
    sizes = {"sd1": 512, "sdxl": a.sdxl_size}
    if a.quick:
        plan = [("sd1", 512, a.width_div or 4)]
    else:
        plan = [(m, sizes[m], a.width_div or 1) for m in a.models.split(",")]
    torch.manual_seed(0)
    out: list[str] = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}"]
    print(out[0], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for family, size, div in plan:
            model = build(family, device, dtype, div)
            if a.step_factor:
                out.append(step_factor(model, size, a.step_factor))
                print(out[-1], flush=True)
            out += bench_model(model, size, a.repeats, Path(tmp), a.backups)
            del model
    print("\n".join(["", "== summary ==", *out]))


if __name__ == "__main__":
    main()
