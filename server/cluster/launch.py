"""`python -m server --workers N` / `--ray-address ADDR`: the server scaled out on Ray Serve.

`--workers N` alone starts a local Ray cluster in this process (no dashboard, no auth token written) and N
worker replicas: one GPU each when the machine has N GPUs, else CPU replicas with one torch thread each.
`--ray-address ADDR` joins a running cluster (`ray start --head` on one host, `ray start --address ...` on
the others) and runs one replica per GPU there (or N with --workers). Serve's HTTP proxy listens on
--host/--port, so clients see the same API as the single process. SIGTERM or Ctrl-C: Serve drains the
replicas (a running job may finish for --shutdown-grace seconds) and the cluster stops."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from server.config import ServerConfig

log = logging.getLogger("hiresd.cluster")


def serve_cluster(config: ServerConfig) -> None:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SystemExit("--workers / --ray-address need Ray Serve: pip install -e '.[cluster]' "
                         "(bash scripts/setup.sh installs it)") from None
    from server.cluster.deployments import APP_NAME, app

    if config.ray_address:
        ray.init(address=config.ray_address, include_dashboard=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster: no token in ~/.ray
        import torch

        gpus = torch.cuda.device_count() if config.device in ("auto", "cuda") else 0
        ray.init(num_cpus=max(os.cpu_count() or 1, config.workers), num_gpus=gpus, include_dashboard=False,
                 object_store_memory=_object_store_bytes())
    gpus_there = int(ray.cluster_resources().get("GPU", 0))
    workers = config.workers or gpus_there or 1
    use_gpus = config.device != "cpu" and gpus_there >= workers
    if config.device not in ("auto", "cpu") and not use_gpus:
        log.warning("--device %s: the cluster has %d GPU(s) for %d worker(s); running CPU replicas",
                    config.device, gpus_there, workers)
    log.info("scaling out: %d worker replica(s), %s; the API on http://%s:%d", workers,
             "one GPU each" if use_gpus else "CPU, one torch thread each", config.host, config.port)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(app(config, workers, use_gpus, (socket.gethostname(), os.getpid())), name=APP_NAME,
              route_prefix="/")
    log.info("ready")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping: draining the worker replicas")
    serve.shutdown()
    ray.shutdown()


def _object_store_bytes() -> int:
    """Ray sizes its object store from /dev/shm; jobs pass images only, so a small store does (and fits a
    container's small /dev/shm)."""
    return 512 << 20
