"""Job state as A1111's `/progress` reports it, plus the interrupt and skip flags the loops check.

One `JobState` belongs to the worker. The worker thread writes it; HTTP handlers read snapshots and set
the flags. A small lock keeps each update and each snapshot consistent."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.runtime.errors import Interrupted


class Skipped(Exception):
    """Raised inside a sampling loop when the current batch was skipped."""


@dataclass
class _Snapshot:
    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    stopping_generation: bool = False
    job_timestamp: str = "0"
    time_start: float | None = None
    # relative cost of each job (pass) for the ETA; progress itself follows A1111's equal-job formula
    weights: list[float] = field(default_factory=list)
    textinfo: str | None = None
    # tiled sampling (pipeline/tiled): tiles of the current model call done / planned; 0 / 0 when untiled
    tiles_done: int = 0
    tiles_total: int = 0
    step_part: float = 0.0  # the part of the step under way that is done (tiles); never goes back in a step


class JobState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._s = _Snapshot()
        self._preview: Any = None  # a callable returning a PIL image, or None
        self._preview_step = -1
        self._preview_seq = 0  # counts the previews of the server's life: id_live_preview
        self._interrupt_at_begin = False  # the running job was interrupted before it began its progress

    # -- written by the worker -------------------------------------------------------------------
    def begin(self, job: str, job_count: int, weights: list[float] | None = None) -> None:
        with self._lock:
            self._s = _Snapshot(
                job=job,
                job_count=job_count,
                job_timestamp=datetime.now().strftime("%Y%m%d%H%M%S"),
                time_start=time.monotonic(),
                weights=list(weights) if weights else [1.0] * job_count,
                interrupted=self._interrupt_at_begin,
            )
            self._preview = None
            self._preview_step = -1

    def set_job(self, job_no: int, job: str | None = None, sampling_steps: int = 0) -> None:
        with self._lock:
            self._s.job_no = job_no
            self._s.sampling_step = 0
            self._s.tiles_done = self._s.tiles_total = 0
            self._s.step_part = 0.0
            self._s.textinfo = None
            self._s.sampling_steps = sampling_steps
            if job is not None:
                self._s.job = job

    def set_step(self, step: int, steps: int | None = None, preview: Any = None) -> None:
        with self._lock:
            self._s.sampling_step = step
            self._s.step_part = 0.0
            if steps is not None:
                self._s.sampling_steps = steps
            if preview is not None:
                self._preview = preview
                self._preview_step = step
                self._preview_seq += 1

    def set_tiles(self, done: int, total: int) -> None:
        """Tiled sampling: `done` of the `total` tiles of the step under way are through the model. Progress
        then moves within the step (a sampler with two model calls per step holds at the first call's
        end until the step is done) and `textinfo` reads "Tiled Diffusion: tile done/total of step n/N"."""
        with self._lock:
            s = self._s
            s.tiles_done, s.tiles_total = done, total
            s.step_part = max(s.step_part, done / total if total else 0.0)
            s.textinfo = (f"Tiled Diffusion: tile {done}/{total} of step {s.sampling_step + 1}/"
                          f"{s.sampling_steps}")

    def clear_skip(self) -> None:
        with self._lock:
            self._s.skipped = False

    def end(self) -> None:
        with self._lock:
            self._s = _Snapshot()
            self._preview = None
            self._interrupt_at_begin = False

    def check(self) -> None:
        """Raise Interrupted or Skipped when a flag is set; called once per step or tile."""
        if self._s.interrupted:
            raise Interrupted()
        if self._s.skipped:
            raise Skipped()

    @property
    def interrupted(self) -> bool:
        return self._s.interrupted

    @property
    def skipped(self) -> bool:
        return self._s.skipped

    # -- written by HTTP handlers ----------------------------------------------------------------
    def interrupt(self) -> None:
        with self._lock:
            if self._s.job_count > 0:
                self._s.interrupted = True

    def interrupt_running(self) -> None:
        """Interrupt the job the worker runs now, also when it has not begun its progress yet (it then
        stops at its first check). Only the worker calls this, for the job it knows is running."""
        with self._lock:
            self._interrupt_at_begin = True
            if self._s.job_count > 0:
                self._s.interrupted = True

    def skip(self) -> None:
        with self._lock:
            if self._s.job_count > 0:
                self._s.skipped = True

    # -- a job running in another process (server/cluster/) ----------------------------------------
    def export(self, sent_preview: int = -1) -> tuple[dict[str, Any], Any, int]:
        """The state's fields (plain data), the preview image when it is newer than `sent_preview` (else
        None), and the preview's id: what a worker replica sends to the ingress."""
        with self._lock:
            fields = dict(vars(self._s))
            fields["weights"] = list(self._s.weights)
            preview, seq = self._preview, self._preview_seq if self._preview is not None else -1
        return fields, (preview() if preview is not None and seq != sent_preview else None), seq

    def mirror(self, fields: dict[str, Any], preview: Any, preview_id: int) -> tuple[bool, bool]:
        """Take the state of the job this one stands for (`export` on its replica), keeping an interrupt
        asked for here; returns the (interrupt, skip) requests to send to that job."""
        with self._lock:
            interrupt = self._s.interrupted or self._interrupt_at_begin
            skip = self._s.skipped and not fields.get("skipped")
            running_since = self._s.time_start
            self._s = _Snapshot(**fields)
            self._s.interrupted = self._s.interrupted or interrupt
            self._s.skipped = self._s.skipped or skip
            # the ETA runs on this process's clock: the job's own start time is another machine's
            if fields.get("time_start") is not None:
                self._s.time_start = running_since or time.monotonic()
            if preview is not None:
                self._preview, self._preview_seq = (lambda img=preview: img), preview_id
            elif preview_id < 0:
                self._preview = None
        return interrupt, skip

    # -- read by /progress -----------------------------------------------------------------------
    @property
    def job_timestamp(self) -> str:
        """When the running (or last) job began, as A1111 writes it: YYYYmmddHHMMSS."""
        with self._lock:
            return self._s.job_timestamp

    def snapshot(self) -> dict[str, Any]:
        """A1111's progress numbers: progress, eta_relative, state dict, textinfo; and the preview maker."""
        with self._lock:
            s = self._s
            state = {
                "skipped": s.skipped,
                "interrupted": s.interrupted,
                "stopping_generation": s.stopping_generation,
                "job": s.job,
                "job_count": s.job_count,
                "job_timestamp": s.job_timestamp,
                "job_no": s.job_no,
                "sampling_step": s.sampling_step,
                "sampling_steps": s.sampling_steps,
            }
            if s.job_count == 0:
                return {"progress": 0.0, "eta_relative": 0.0, "state": state, "textinfo": s.textinfo,
                        "preview": None, "preview_id": -1}
            done_steps = s.sampling_step + s.step_part
            step_frac = min(1.0, done_steps / s.sampling_steps) if s.sampling_steps else 0.0
            progress = min(1.0, 0.01 + s.job_no / s.job_count + step_frac / s.job_count)
            # ETA from the work-weighted fraction, so that a cheap pass one does not promise a short job
            w = s.weights or [1.0] * s.job_count
            total = sum(w) or 1.0
            done = sum(w[: s.job_no]) + (w[s.job_no] if s.job_no < len(w) else 0.0) * step_frac
            frac = max(done / total, 1e-3)
            elapsed = time.monotonic() - (s.time_start or time.monotonic())
            eta = max(0.0, elapsed / frac - elapsed) if done > 0 else 0.0
            return {"progress": progress, "eta_relative": eta, "state": state, "textinfo": s.textinfo,
                    "preview": self._preview, "preview_id": self._preview_seq if self._preview else -1}
