"""Time outside the forwards: from the decoded image to the response bytes (PNG encode with the infotext,
base64, the JSON body), per image size and PNG compress level, side by side in one run.

    .venv/bin/python bench/bench_encode.py            # 512, 1024, 2048; levels 6 (Pillow's default), 1, 0

The image is a decoded-looking picture (smooth gradients, texture and 8-bit noise), not random bytes (random
bytes do not compress at any level and would hide the difference). Also prints a batch of 4 encoded one after
another vs on 4 threads (zlib releases the GIL)."""
from __future__ import annotations

import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.imagecodec import encode_image_b64

INFOTEXT = ("a photo of a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, "
            "Size: 512x512, Model: x, Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent")


def picture(side: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(9 * x * y)], -1) * 0.35 + 0.5
    texture = np.sin(side / 8 * x) * np.cos(side / 11 * y) * 0.05
    img = (base + texture[..., None] + rng.normal(0, 0.02, base.shape)).clip(0, 1) * 255
    return Image.fromarray(img.astype(np.uint8), "RGB")


def respond(images: list[Image.Image], level: int, threads: int = 1) -> int:
    def one(img: Image.Image) -> str:
        return encode_image_b64(img, "png", text_chunks={"parameters": INFOTEXT}, compress_level=level)

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            encoded = list(pool.map(one, images))
    else:
        encoded = [one(i) for i in images]
    return len(json.dumps({"images": encoded, "parameters": {}, "info": "{}"}).encode())


def timed(fn, repeats: int = 3) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    print(f"{'size':>6}{'level':>7}{'encode+b64+json s':>19}{'body MB':>9}{'vs level 6':>12}")
    for side in (512, 1024, 2048):
        img = picture(side)
        base = None
        for level in (6, 1, 0):
            t = timed(lambda img=img, level=level: respond([img], level))
            size = respond([img], level) / 1e6
            base = base or t
            print(f"{side:>6}{level:>7}{t:>19.3f}{size:>9.1f}{t / base:>12.2f}")
    batch = [picture(1024, s) for s in range(4)]
    for level in (6, 1):
        seq = timed(lambda level=level: respond(batch, level), 2)
        par = timed(lambda level=level: respond(batch, level, threads=4), 2)
        print(f"batch of 4 x 1024, level {level}: one by one {seq:.3f} s, 4 threads {par:.3f} s "
              f"(ratio {par / seq:.2f})")


if __name__ == "__main__":
    main()
