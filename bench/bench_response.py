"""Time outside the forwards, through the real HTTP path: from the end of the last VAE decode to the last byte
of the response, per result size (512, 1024, 2048) and batch (1, 4), side by side in one run.

    .venv/bin/python bench/bench_response.py                 # the server as configured (PNG level 6)
    .venv/bin/python bench/bench_response.py --sizes 1024 --batches 1 --repeats 5

The real app (`server.app.create_app`, the built-in model, middleware, the txt2img route, FastAPI's response
model) runs under uvicorn in this process; an httpx client posts a txt2img request over a socket and reads the
whole body, as `requests`/`webuiapi` do (they send `Accept-Encoding: gzip, deflate`; `--identity` asks for no
content coding). Only the job itself is canned: instead of sampling, the worker takes a decoded-looking float
image batch (B, 3, H, W) in [0, 1] (smooth gradients, texture and noise, like a VAE output; random bytes
would not compress and would hide the encoder's cost), stamps the clock (= the last VAE decode ended) and goes
on exactly as the pipeline does after its decode: `pipeline.models.vae_codec.to_images`, then the route's tail (encode,
base64, JSON, send). The time is from that stamp to the client's last byte; the body is checked to hold the
images.

Beside it, in the same run, the same batch through A1111's tail in this process (no socket): numpy's 8-bit
conversion, Pillow's PNG writer with the infotext chunk (its default level 6, as A1111), base64,
`json.dumps` and Starlette's GZipMiddleware level 9 (A1111 gzips every response over 1000 bytes); ratio =
ours / A1111's.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image
from PIL.PngImagePlugin import PngInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.jobs.common import JobResult
from pipeline.models.vae_codec import to_images
from server.app import create_app
from server.config import ServerConfig
from server.services import Services

INFOTEXT = ("a photo of a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7, "
            "Seed: {seed}, Size: {w}x{h}, Model: x, Denoising strength: 0.5, Hires upscale: 2, "
            "Hires upscaler: Latent")


def decoded_batch(side: int, batch: int) -> torch.Tensor:
    """A VAE-output-like batch (B, 3, side, side) float32 in [0, 1]."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    out = []
    for b in range(batch):
        base = np.stack([np.sin(6 * x + 2 * y + b), np.cos(5 * y - 3 * x), np.sin(9 * x * y)], 0) * 0.35 + 0.5
        texture = np.sin(side / 8 * x) * np.cos(side / 11 * y) * 0.05
        out.append((base + texture[None] + rng.normal(0, 0.02, base.shape)).clip(0, 1).astype(np.float32))
    return torch.from_numpy(np.stack(out))


class CannedJob:
    """Stands in for `Services.run_txt2img` in this bench: the decoded batch, then what the pipeline does
    after its decode."""

    def __init__(self) -> None:
        self.decoded: torch.Tensor | None = None
        self.stamp = 0.0

    def __call__(self, p) -> JobResult:
        assert self.decoded is not None
        self.stamp = time.perf_counter()  # the last VAE decode has just returned
        images = to_images(self.decoded)
        h, w = self.decoded.shape[-2:]
        texts = [INFOTEXT.format(seed=i, w=w, h=h) for i in range(len(images))]
        return JobResult(images=images, infotexts=texts, info={"infotexts": texts})


def serve(root: Path, png_level: int) -> tuple[uvicorn.Server, CannedJob, str]:
    config = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                          extensions_dir=None, device="cpu", api_log=False, png_compress_level=png_level,
                          max_body_mb=1000)
    svc = Services.create(config, console=False)
    job = CannedJob()
    svc.run_txt2img = job  # type: ignore[method-assign]
    app = create_app(config, svc)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, job, f"http://127.0.0.1:{port}/sdapi/v1"


def a1111_tail(decoded: torch.Tensor) -> float:
    start = time.perf_counter()
    arr = (decoded.float().clamp(0, 1).permute(0, 2, 3, 1).numpy() * np.float32(255.0)).astype(np.uint8)
    h, w = decoded.shape[-2:]
    encoded = []
    for i, a in enumerate(arr):
        info = PngInfo()
        info.add_text("parameters", INFOTEXT.format(seed=i, w=w, h=h))
        buf = io.BytesIO()
        Image.fromarray(a, "RGB").save(buf, format="PNG", pnginfo=info)  # Pillow's level 6
        encoded.append(base64.b64encode(buf.getvalue()).decode())
    body = json.dumps({"images": encoded, "parameters": {}, "info": "{}"}, ensure_ascii=False).encode()
    gzip.compress(body, 9)
    return time.perf_counter() - start


def one_request(client: httpx.Client, api: str, job: CannedJob, side: int, batch: int,
                identity: bool) -> tuple[float, int]:
    headers = {"Accept-Encoding": "identity"} if identity else {}
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 1, "batch_size": batch}
    with client.stream("POST", f"{api}/txt2img", json=body, headers=headers) as r:
        raw = b"".join(r.iter_raw())
        end = time.perf_counter()
        wire = len(raw)
        r.raise_for_status()
    data = httpx.Response(200, content=raw, headers=r.headers).json()
    images = data["images"]
    assert len(images) == batch, len(images)
    first = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert first.size == (side, side) and first.info.get("parameters", "").startswith("a photo"), first.info
    return end - job.stamp, wire


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--png-level", type=int, default=ServerConfig.png_compress_level)
    ap.add_argument("--identity", action="store_true", help="ask for no gzip content coding")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        server, job, api = serve(Path(tmp), args.png_level)
        coding = "identity" if args.identity else "client default (gzip, deflate accepted)"
        print(f"last VAE decode -> last response byte, txt2img route over HTTP, PNG level {args.png_level}, "
              f"encoding {coding}, {torch.get_num_threads()} torch threads, median of {args.repeats}")
        print(f"{'size':>6}{'batch':>7}{'tail s':>9}{'min s':>9}{'wire MB':>9}{'A1111 tail s':>14}"
              f"{'ratio':>7}")
        with httpx.Client(timeout=600) as client:
            for side in args.sizes:
                for batch in args.batches:
                    job.decoded = decoded_batch(side, batch)
                    one_request(client, api, job, side, batch, args.identity)  # warm-up
                    times, ref, wire = [], [], 0
                    for _ in range(args.repeats):  # alternating, so that load changes hit both alike
                        t, wire = one_request(client, api, job, side, batch, args.identity)
                        times.append(t)
                        ref.append(a1111_tail(job.decoded))
                    ours, theirs = statistics.median(times), statistics.median(ref)
                    print(f"{side:>6}{batch:>7}{ours:>9.3f}{min(times):>9.3f}{wire / 1e6:>9.2f}"
                          f"{theirs:>14.3f}{ours / theirs:>7.2f}", flush=True)
        server.should_exit = True


if __name__ == "__main__":
    main()
