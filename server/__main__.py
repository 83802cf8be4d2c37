"""`python -m server [--host H] [--port P] [--models-dir D] [--device cpu|cuda] ...`, or with A1111's
flags, also from `COMMANDLINE_ARGS` (see `server/config.py`).

Shutdown (SIGTERM, Ctrl-C, or POST /sdapi/v1/server-stop with --api-server-stop): the server stops
accepting connections and jobs at once and answers every waiting job with 503; the running job may finish
for --shutdown-grace seconds (then it is interrupted and still returns its partial result); uvicorn waits
for those in-flight responses before the app shuts down, so no request is silently lost."""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import uvicorn

from server.app import create_app
from server.config import from_args
from server.services import Services

log = logging.getLogger("hiresd")


class HiresdServer(uvicorn.Server):
    """uvicorn's server, telling the services to stop taking jobs the moment a stop is asked for."""

    def __init__(self, config: uvicorn.Config, app_state: object) -> None:
        super().__init__(config)
        self.app_state = app_state

    def _begin_shutdown(self) -> None:
        svc: Services | None = getattr(self.app_state, "services", None)
        if svc is not None:
            # not inline: a signal handler may interrupt the event loop while it holds the worker's lock
            threading.Thread(target=svc.begin_shutdown, name="hiresd-stop", daemon=True).start()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("received %s: finishing the running job, refusing new ones", signal.Signals(sig).name)
            self._begin_shutdown()
        super().handle_exit(sig, frame)

    def request_stop(self) -> None:
        """A graceful stop asked for over HTTP (server-stop)."""
        if not self.should_exit:
            self._begin_shutdown()
            self.should_exit = True


def main(argv: list[str] | None = None) -> None:
    config = from_args(argv)  # reads COMMANDLINE_ARGS too; a refused flag exits here with status 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for note in config.launch_notes:
        log.info("%s", note)
    if config.workers or config.ray_address:  # scaled out on Ray Serve; the single process never imports Ray
        from server.cluster.launch import serve_cluster

        serve_cluster(config)
        return
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    diffusers.utils.logging.set_verbosity_error()  # their load-time notices are not the user's concern
    transformers.utils.logging.set_verbosity_error()
    if config.sdp_no_mem:  # --opt-sdp-no-mem-attention: A1111's deterministic SDPA
        torch.backends.cuda.enable_mem_efficient_sdp(False)
    app = create_app(config)
    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                               timeout_keep_alive=config.timeout_keep_alive,
                               timeout_graceful_shutdown=int(config.shutdown_grace_s) + 15)
    server = HiresdServer(uv_config, app.state)
    app.state.stop_server = server.request_stop
    server.run()


if __name__ == "__main__":
    main()
