"""Scale-out on Ray Serve, side by side in one run: one `python -m server --workers 2` (CPU replicas, one
torch thread each) and one single process (one torch thread: OMP_NUM_THREADS=1, the compute of a replica)
started together, then measured in alternating rounds so that the load of a shared machine hits every
column alike:

1. throughput: the same job mix (`--jobs` txt2img requests) sent one at a time (one replica busy: the
   1-replica throughput) and all at once (both replicas busy), alternating; ratio 2 / 1 (goal >= 1.7);
2. ingress overhead: one job at a time, alternating between the single process and the cluster; the
   difference per job and its share of a job (goal <= 5% of a 1 s job);
3. multiplexing: a mixed-checkpoint workload (two tiny checkpoints, alternating A B A B ..., one at a
   time) against both: checkpoint loads counted from each server's log.

    .venv/bin/python bench/bench_scale.py                       # 8 jobs of 30 steps at 256x256, 2 rounds
    .venv/bin/python bench/bench_scale.py --jobs 12 --steps 20 --size 192 --rounds 3

On a machine shared with other work, the figures are noisy: say so with them."""
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


def _loads(srv: LiveServer) -> int:
    return srv.log().count("loading checkpoint")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from tests.fixtures.tinymodels import build_tiny_sd1

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    for name, seed in (("tiny-a", 7), ("tiny-b", 8)):
        ckpt = build_tiny_sd1(work / "build", seed=seed)
        for server in ("cluster", "single"):
            ckpt.write_safetensors(work / server / "models" / "Stable-diffusion" / f"{name}.safetensors")
    cluster = LiveServer(work / "cluster", "--workers", "2", "--queue-size", "64",
                         env={"RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}).start()
    single = LiveServer(work / "single", env={"OMP_NUM_THREADS": "1"}).start()
    try:
        cluster.wait_ready(timeout=900)
        single.wait_ready(timeout=900)
        mix = [_job(args, seed) for seed in range(args.jobs)]
        _burst(cluster, [_job(args, 999)] * 2)  # both replicas load the model before the clock starts
        _post(single, _job(args, 999))
        one: list[float] = []
        two: list[float] = []
        solo: list[float] = []
        via: list[float] = []
        for _ in range(args.rounds):
            for job in mix:
                via.append(_post(cluster, job))  # one replica busy at a time
                solo.append(_post(single, job))  # the same job on the single process, right after
            one.append(sum(via[-len(mix):]))
            two.append(_burst(cluster, mix))
        before = {"cluster": _loads(cluster), "single": _loads(single)}
        alternating = [_job(args, i, "tiny-a" if i % 2 == 0 else "tiny-b") for i in range(args.jobs)]
        for job in alternating:
            _post(cluster, job)
            _post(single, job)
        loads = {"cluster": _loads(cluster) - before["cluster"], "single": _loads(single) - before["single"]}
    finally:
        cluster.stop()
        single.stop()

    t1, t2 = statistics.median(one), statistics.median(two)
    print(f"job mix: {args.jobs} x txt2img {args.size}x{args.size}, {args.steps} steps, Euler; "
          f"{args.rounds} alternating rounds, medians")
    print(f"  one replica busy (jobs one at a time): {t1:.2f} s ({args.jobs / t1:.3f} jobs/s)")
    print(f"  two replicas busy (jobs sent at once): {t2:.2f} s ({args.jobs / t2:.3f} jobs/s)")
    print(f"  throughput ratio 2 / 1: {t1 / t2:.2f}x  (goal >= 1.7x)  rounds: "
          + ", ".join(f"{a / b:.2f}x" for a, b in zip(one, two, strict=True)))
    s_med, c_med = statistics.median(solo), statistics.median(via)
    over = c_med - s_med
    print(f"one job at a time, alternating (median of {len(solo)}):")
    print(f"  single process (1 torch thread): {s_med:.3f} s; through the ingress: {c_med:.3f} s")
    print(f"  ingress overhead: {over * 1000:+.0f} ms per job = {over / s_med * 100:+.1f}% of this job, "
          f"{over * 100:+.1f}% of a 1 s job (goal <= 5%)")
    print(f"mixed checkpoints ({args.jobs} jobs alternating tiny-a / tiny-b, one at a time):")
    print(f"  checkpoint loads: single process {loads['single']}, --workers 2 (multiplexed) "
          f"{loads['cluster']}; reloads avoided: {loads['single'] - loads['cluster']}")


if __name__ == "__main__":
    main()
