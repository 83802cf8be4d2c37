"""What a client waits for, synchronous against async (agent-scheduler) requests, side by side in one run:
the real app in this process (built-in model, real worker), the same small txt2img request.

    .venv/bin/python bench/bench_async_tasks.py            # 3 repeats, 20 steps, 64x64
    .venv/bin/python bench/bench_async_tasks.py --steps 30 --ahead 4

Columns: a synchronous `POST /sdapi/v1/txt2img` (the client holds its connection until the image comes);
`POST /agent-scheduler/v1/queue/txt2img` until its task id comes back (nothing else queued, then with
`--ahead` tasks queued in front); the async task from submit until its results are fetched (submit, poll
`task/{id}` every 10 ms, fetch `results`). Ratios: async answer / sync request, async end-to-end / sync."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ServerConfig

AS = "/agent-scheduler/v1"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ahead", type=int, default=3)
    a = ap.parse_args()
    req = {"prompt": "a fox", "steps": a.steps, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"}
    root = Path(tempfile.mkdtemp())
    cfg = ServerConfig(models_dir=root / "models", data_dir=root / "data", outputs_dir=root / "outputs",
                       extensions_dir=None, queue_size=a.ahead + 4)
    with TestClient(create_app(cfg)) as c:
        c.post("/sdapi/v1/txt2img", json=req)  # warm-up (model load)
        sync, answer, answer_busy, end_to_end = [], [], [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            assert c.post("/sdapi/v1/txt2img", json=req).status_code == 200
            sync.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            task = c.post(f"{AS}/queue/txt2img", json=req).json()["task_id"]
            answer.append(time.perf_counter() - t0)
            while c.get(f"{AS}/task/{task}").json()["data"]["status"] != "done":
                time.sleep(0.01)
            assert c.get(f"{AS}/task/{task}/results").json()["success"]
            end_to_end.append(time.perf_counter() - t0)
            ahead = [c.post(f"{AS}/queue/txt2img", json=req).json()["task_id"] for _ in range(a.ahead)]
            t0 = time.perf_counter()
            last = c.post(f"{AS}/queue/txt2img", json=req).json()["task_id"]
            answer_busy.append(time.perf_counter() - t0)
            for t in [*ahead, last]:
                while c.get(f"{AS}/task/{t}").json()["data"]["status"] != "done":
                    time.sleep(0.01)
    med = statistics.median
    print(f"txt2img 64x64, {a.steps} steps, Euler; median of {a.repeats}")
    print(f"{'sync request':>34}: {med(sync) * 1000:8.1f} ms")
    print(f"{'async: task id back':>34}: {med(answer) * 1000:8.1f} ms   "
          f"ratio to sync {med(answer) / med(sync):.3f}")
    print(f"{f'async: task id, {a.ahead} queued ahead':>34}: {med(answer_busy) * 1000:8.1f} ms   "
          f"ratio to sync {med(answer_busy) / med(sync):.3f}")
    print(f"{'async: submit to results fetched':>34}: {med(end_to_end) * 1000:8.1f} ms   "
          f"ratio to sync {med(end_to_end) / med(sync):.3f}")


if __name__ == "__main__":
    main()
