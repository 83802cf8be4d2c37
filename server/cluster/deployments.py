"""The scaled-out server as a Ray Serve application (docs/operating.md, "Growing past one GPU").

- `HiresdIngress` (one replica): the FastAPI app of the single process, unchanged (validation, 4xx, error
  shapes, openapi), with the one options store, the job registry and the async tasks; its worker is a
  `ClusterWorker` (server/cluster/ingress_worker.py) with a slot per worker replica.
- `HiresdWorker` (one replica per GPU, or CPU replicas with one torch thread each): the single process's
  `Services` (model manager, upscalers, its own device worker), running one job at a time. Requests are
  multiplexed by checkpoint + VAE, so that a job goes to a replica that already holds its model; a replica
  holds one model at a time (the model manager frees the previous one, CUDA cache included, on the next
  load). While a job runs, the replica reports its progress to the ingress every `REPORT_S` and applies
  the interrupt or skip it hears back (Ray does not stop a thread: the worker sets its own flag); a
  cancelled request (the ingress gave up) interrupts the job the same way.

`app(config, workers, gpus)` builds the application; `app_builder(args)` is the same for
`serve run` / `serve deploy` config files (examples/serve/)."""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import socket
from typing import Any

from ray import serve
from ray.serve import Application

from server.app import create_app
from server.cluster.ingress_worker import REPORT_S, ClusterWorker
from server.cluster.outcome import pack_error
from server.config import ServerConfig, from_args
from server.routes.options import LoadModelCall
from server.services import Services

log = logging.getLogger("hiresd.cluster")

APP_NAME = "hiresd"
INGRESS = "HiresdIngress"


QUIET = {"enable_access_log": False}  # no line per progress report; hiresd's own request log stays


@serve.deployment(name="HiresdWorker", max_ongoing_requests=1, health_check_period_s=2,
                  health_check_timeout_s=30, logging_config=QUIET)
class HiresdWorker:
    def __init__(self, config: ServerConfig, torch_threads: int) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.svc = Services.create(config, console=False)
        self._ingress: Any = None

    def check_health(self) -> None:
        """Serve restarts a replica whose device worker has stopped."""
        if not self.svc.worker.alive:
            raise RuntimeError("the device worker thread has stopped")

    @serve.multiplexed(max_num_models_per_replica=1)
    async def model(self, key: str) -> str:
        """Load checkpoint + VAE `key` on this replica's device worker (one load at a time)."""
        filename, _, vae = key.partition("|")
        call = LoadModelCall(filename, vae or "Automatic")
        await asyncio.wrap_future(self.svc.worker.submit("load-model", lambda: call.run(self.svc)).future)
        return key

    async def run(self, task_id: str, name: str, call: Any) -> tuple[str, Any]:
        """Run `call` (a job's remote form) as task `task_id`: ("ok", value) or ("error", packed error)."""
        job = None
        reporter = asyncio.ensure_future(self._report(task_id))
        try:
            key = serve.get_multiplexed_model_id()
            if key:
                await self.model(key)
            job = self.svc.worker.submit(name, lambda: call.run(self.svc), task_id=task_id)
            return "ok", await asyncio.shield(asyncio.wrap_future(job.future))
        except asyncio.CancelledError:  # the ingress gave up on it: stop the job (a thread is not cancelled)
            if job is not None and not self.svc.worker.cancel(job):
                self.svc.worker.interrupt(job)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the ingress, typed
            return "error", pack_error(exc)
        finally:
            reporter.cancel()

    async def _report(self, task_id: str) -> None:
        sent = -1
        worker = self.svc.worker
        while True:
            await asyncio.sleep(REPORT_S)
            if not worker.is_running(task_id):
                continue
            fields, preview, preview_id = worker.state.export(sent)
            try:
                if self._ingress is None:
                    self._ingress = serve.get_deployment_handle(INGRESS, app_name=APP_NAME)
                interrupt, skip = await self._ingress.report.remote(task_id, fields, preview, preview_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - progress is best effort; the job runs on
                log.warning("progress report for %s failed: %s", task_id, exc)
                continue
            if preview is not None:
                sent = preview_id
            if interrupt:
                worker.interrupt_task(task_id)
            if skip:
                worker.skip_task(task_id)

    def __del__(self) -> None:
        svc = getattr(self, "svc", None)
        if svc is not None:
            svc.shutdown()


@serve.deployment(name=INGRESS, num_replicas=1, max_ongoing_requests=1000, max_queued_requests=200,
                  logging_config=QUIET)
@serve.ingress()
class HiresdIngress:
    def __init__(self, config: ServerConfig, workers: Any, slots: int, launcher: tuple[str, int] | None = None
                 ) -> None:
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.config = config
        self.launcher = launcher  # (host name, pid) of `python -m server --workers N`, when it started us
        self.svc = Services.create(config, worker=ClusterWorker(workers, config.queue_size, slots))

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(self.config, self.svc)
        if self.launcher is not None and self.launcher[0] == socket.gethostname():
            # --api-server-stop: stop the launcher (it drains the replicas), not just this replica
            pid = self.launcher[1]
            app.state.stop_server = lambda: os.kill(pid, signal.SIGTERM)
        return app

    async def report(self, task_id: str, fields: dict[str, Any], preview: Any, preview_id: int
                     ) -> tuple[bool, bool]:
        worker: ClusterWorker = self.svc.worker  # type: ignore[assignment]
        return worker.report(task_id, fields, preview, preview_id)


def app(config: ServerConfig, workers: int, gpus: bool,
        launcher: tuple[str, int] | None = None) -> Application:
    """Ingress + `workers` worker replicas: with `gpus`, one GPU each (CUDA); else CPU replicas with one
    torch thread and one CPU each. Never asks for a GPU when `gpus` is false: such a deployment would wait
    forever on a cluster without one."""
    grace = config.shutdown_grace_s + 30  # a running job may finish (it is interrupted after the grace)
    if gpus:
        worker_config, actor = config, {"num_gpus": 1, "num_cpus": 1}
    else:
        worker_config, actor = _replace(config, device="cpu"), {"num_gpus": 0, "num_cpus": 1}
    worker = HiresdWorker.options(num_replicas=workers, ray_actor_options=actor,
                                  graceful_shutdown_timeout_s=grace)
    ingress = HiresdIngress.options(ray_actor_options={"num_cpus": 0, "num_gpus": 0},
                                    graceful_shutdown_timeout_s=grace)
    return ingress.bind(_replace(config, device="cpu"), worker.bind(worker_config, 0 if gpus else 1), workers,
                        launcher)


def app_builder(args: dict[str, Any]) -> Application:
    """For `serve run` / `serve deploy`: `args` = {"argv": "<python -m server flags>", "workers": N,
    "gpus": true|false}."""
    config = from_args(shlex.split(str(args.get("argv", ""))), environ={})
    workers = int(args.get("workers", config.workers or 1))
    return app(config, workers, str(args.get("gpus", "false")).lower() in ("1", "true", "yes"))


def _replace(config: ServerConfig, **changes: Any) -> ServerConfig:
    from dataclasses import replace

    return replace(config, **changes)


__all__ = ["APP_NAME", "HiresdIngress", "HiresdWorker", "app", "app_builder"]
