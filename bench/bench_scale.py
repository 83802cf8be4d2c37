"""Scale-out on Ray Serve, side by side in one run (real `python -m server` subprocesses, one at a time):

1. throughput: the same job mix (`--jobs` txt2img requests, all sent at once) against `--workers 1` and
   `--workers 2` (CPU replicas, one torch thread each); ratio 2 / 1 (goal >= 1.7 on 2 free cores);
2. ingress overhead: one job at a time, the single process (one torch thread: OMP_NUM_THREADS=1, the
   same compute as a replica) against `--workers 1`; the difference per job, and its share of a job;
3. multiplexing: a mixed-checkpoint workload (two tiny checkpoints, alternating A B A B ...) against the
   single process and `--workers 2`: checkpoint loads counted from each server's log.

    .venv/bin/python bench/bench_scale.py                     # 8 jobs of 20 steps at 128x128
    .venv/bin/python bench/bench_scale.py --jobs 12 --steps 30 --size 192

On a machine shared with other work, the throughput ratio is noisy: say so with the figures."""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.server.livesrv import LiveServer  # noqa: E402 - the tests' server launcher


def _job(args: argparse.Namespace, seed: int, checkpoint: str | None = None) -> dict[str, Any]:
    job: dict[str, Any] = {"prompt": "a lighthouse at dusk", "steps": args.steps, "width": args.size,
                           "height": args.size, "sampler_name": "Euler", "seed": seed}
    if checkpoint:
        job["override_settings"] = {"sd_model_checkpoint": checkpoint}
    return job


def _start(root: Path, *flags: str, env: dict[str, str] | None = None) -> LiveServer:
    root.mkdir(parents=True, exist_ok=True)
    srv = LiveServer(root, *flags, env={"RAY_AUTH_MODE": "disabled", **(env or {})})
    return srv.start().wait_ready(timeout=600)


def _post(srv: LiveServer, job: dict[str, Any]) -> float:
    t = time.perf_counter()
    r = httpx.post(f"{srv.api}/txt2img", json=job, timeout=1200)
    r.raise_for_status()
    return time.perf_counter() - t


def _burst(srv: LiveServer, jobs: list[dict[str, Any]]) -> float:
    """Every job sent at once; seconds until the last answer."""
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(len(jobs)) as ex:
        list(ex.map(lambda j: _post(srv, j), jobs))
    return time.perf_counter() - t


def _sequential(srv: LiveServer, args: argparse.Namespace) -> float:
    """The median time of one job at a time."""
    return statistics.median(_post(srv, _job(args, 100 + i)) for i in range(args.repeats))


def _loads(srv: LiveServer) -> int:
    return srv.log().count("loading checkpoint")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="sequential jobs for the overhead")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    mix = [_job(args, seed) for seed in range(args.jobs)]
    warm = _job(args, 999)

    rows: dict[str, Any] = {}
    for workers in (1, 2):
        srv = _start(work / f"w{workers}", "--workers", str(workers), "--queue-size", "64")
        try:
            _burst(srv, [warm] * workers)  # every replica loads the model before the clock starts
            rows[f"w{workers}"] = _burst(srv, mix)
            if workers == 1:
                rows["w1_seq"] = _sequential(srv, args)
        finally:
            srv.stop()
    single = _start(work / "single", env={"OMP_NUM_THREADS": "1"})
    try:
        _post(single, warm)
        rows["single_seq"] = _sequential(single, args)
    finally:
        single.stop()

    # multiplexing: two checkpoints, alternating
    from tests.fixtures.tinymodels import build_tiny_sd1

    models = work / "ckpts" / "models"
    for name, seed in (("tiny-a", 7), ("tiny-b", 8)):
        build_tiny_sd1(work / "build", seed=seed).write_safetensors(
            models / "Stable-diffusion" / f"{name}.safetensors")
    alternating = [_job(args, i, "tiny-a" if i % 2 == 0 else "tiny-b") for i in range(args.jobs)]
    loads: dict[str, int] = {}
    for label, flags in (("single", ()), ("w2", ("--workers", "2", "--queue-size", "64"))):
        root = work / f"mux-{label}"
        root.mkdir(parents=True)
        (root / "models").symlink_to(models, target_is_directory=True)
        srv = _start(root, *flags)
        try:
            for job in alternating:  # one at a time: the order, not the burst, decides the loads
                _post(srv, job)
            loads[label] = _loads(srv)
        finally:
            srv.stop()

    tput1, tput2 = args.jobs / rows["w1"], args.jobs / rows["w2"]
    print(f"job mix: {args.jobs} x txt2img {args.size}x{args.size}, {args.steps} steps, Euler, sent at once")
    print(f"  --workers 1: {rows['w1']:.2f} s  ({tput1:.3f} jobs/s)")
    print(f"  --workers 2: {rows['w2']:.2f} s  ({tput2:.3f} jobs/s)")
    print(f"  throughput ratio 2 / 1: {tput2 / tput1:.2f}x  (goal >= 1.7x)")
    over = rows["w1_seq"] - rows["single_seq"]
    print(f"one job at a time (median of {args.repeats}):")
    print(f"  single process (1 torch thread): {rows['single_seq']:.3f} s; "
          f"--workers 1: {rows['w1_seq']:.3f} s")
    print(f"  ingress overhead: {over * 1000:+.0f} ms per job = {over / rows['single_seq'] * 100:+.1f}% of "
          f"this job, {over * 100:+.1f}% of a 1 s job (goal <= 5%)")
    print(f"mixed checkpoints ({args.jobs} jobs alternating tiny-a / tiny-b, one at a time):")
    print(f"  checkpoint loads: single process {loads['single']}, --workers 2 (multiplexed) {loads['w2']}; "
          f"reloads avoided: {loads['single'] - loads['w2']}")


if __name__ == "__main__":
    main()
