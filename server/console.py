"""A progress bar in the server console for the running job, read from the worker's `JobState`.

On a terminal one line is redrawn in place twice a second; when the console is not a terminal (a log
file, a container) a plain log line is written when a job or pass starts and at most every 10 s
while it runs, so logs stay readable."""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

log = logging.getLogger("hiresd.progress")

WIDTH = 24


def progress_line(snap: dict[str, Any]) -> str:
    """`txt2img  Batch 1 out of 1  job 2/2 [#########-------]  56%  step 5/10  ETA 3s`"""
    st = snap["state"]
    frac = float(snap["progress"])
    filled = int(round(frac * WIDTH))
    steps = f"  step {st['sampling_step']}/{st['sampling_steps']}" if st["sampling_steps"] else ""
    flags = "  interrupted" if st["interrupted"] else ("  skipped" if st["skipped"] else "")
    return (f"{st['job'] or 'job'}  job {st['job_no'] + 1}/{st['job_count']} "
            f"[{'#' * filled}{'-' * (WIDTH - filled)}] {frac * 100:4.0f}%{steps}  "
            f"ETA {snap['eta_relative']:.0f}s{flags}")


class ConsoleProgress:
    """A daemon thread drawing `progress_line` for whatever job the state reports."""

    def __init__(self, state: Any, stream: TextIO | None = None, interval: float = 0.5,
                 log_every: float = 10.0) -> None:
        self.state = state
        self.stream = stream or sys.stderr
        self.interval = interval
        self.log_every = log_every
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hiresd-progress", daemon=True)

    def start(self) -> ConsoleProgress:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        drawn = False
        last_key: tuple[Any, ...] | None = None
        last_log = 0.0
        while not self._stop.wait(self.interval):
            try:
                snap = self.state.snapshot()
            except Exception:  # noqa: BLE001 - a progress bar must never take the server down
                continue
            st = snap["state"]
            if st["job_count"] == 0:
                if drawn:
                    self.stream.write("\n")
                    self.stream.flush()
                    drawn = False
                last_key = None
                continue
            line = progress_line(snap)
            if self.tty:
                self.stream.write("\r" + line.ljust(100)[:120])
                self.stream.flush()
                drawn = True
                continue
            key = (st["job_timestamp"], st["job_no"])
            now = time.monotonic()
            if key != last_key or now - last_log >= self.log_every:
                log.info("%s", line)
                last_key, last_log = key, now
