"""A real `python -m server` in a subprocess for the live tests, with its own models, data, outputs and
extensions folders, plus the test extension `slowmo` (a prompt containing "slowmo" sleeps a little in
every sampling step, so that a tiny job runs long enough to be polled, interrupted or queued behind)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]

SLOWMO_EXTENSION = '''
"""Test extension: a prompt containing "slowmo" sleeps SLOWMO_S seconds before every step's callback."""
import time

import pipeline.diffusion.denoise as _denoise

NAME = "slowmo"
SLOWMO_S = 0.05
_delay = {"s": 0.0}
_run_pass = _denoise.run_pass  # every pass (txt2img, hires, img2img) samples through it


def process_before_every_sampling(p, **kwargs):
    _delay["s"] = SLOWMO_S if "slowmo" in p.prompt else 0.0


def _slow_run_pass(*args, **kwargs):
    *head, callback = args

    def slow_callback(*a):
        if _delay["s"]:
            time.sleep(_delay["s"])
        return callback(*a)

    return _run_pass(*head, slow_callback, **kwargs)


_denoise.run_pass = _slow_run_pass
'''


def write_tiny_esrgan(models_dir: Path, file_name: str = "4x-Tiny.safetensors") -> Path:
    """A tiny real-architecture 4x ESRGAN file (seeded weights) in `<models_dir>/ESRGAN`, as users keep theirs."""
    import safetensors.torch
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    folder = models_dir / "ESRGAN"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = ESRGAN(num_filters=8, num_blocks=1, scale=4)
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / file_name))
    return folder / file_name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, root: Path, *args: str, auth: tuple[str, str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.models = root / "models"
        self.data = root / "data"
        self.outputs = root / "outputs"
        self.extensions = root / "extensions"
        for d in (self.models, self.data, self.outputs, self.extensions):
            d.mkdir(parents=True, exist_ok=True)
        (self.extensions / "slowmo.py").write_text(SLOWMO_EXTENSION)
        self.args = list(args)
        self.auth = auth
        self.env = dict(env or {})  # extra environment variables (COMMANDLINE_ARGS, ...)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "server.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.base}/sdapi/v1"

    def start(self) -> LiveServer:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               **self.env}
        cmd = [sys.executable, "-m", "server", "--port", str(self.port), "--models-dir", str(self.models),
               "--data-dir", str(self.data), "--outputs-dir", str(self.outputs),
               "--extensions-dir", str(self.extensions), *self.args]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 180) -> LiveServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(f"{self.api}/progress", auth=self.auth, timeout=2)
                if r.status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()}")

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, auth=self.auth, timeout=kw.pop("timeout", 120), **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.01) -> Any:
    """Poll `predicate()` until it returns something truthy; that value, or AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")
