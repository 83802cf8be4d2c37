"""Per-request work limits: `--max-steps`, `--max-n-iter`, `--max-batch-size` (next to `--max-pixels`).

`check_work_limits` runs before a job is queued, so a request that would hold the one worker for hours
(A1111 accepts `n_iter: 416` and runs it) is a 400 naming the limit and the flag that raises it."""
from __future__ import annotations

from pipeline.runtime.errors import InvalidRequest
from server.config import ServerConfig


class TooMuchWork(InvalidRequest):
    """A request over one of the server's per-request work limits (HTTP 400)."""


def check_work_limits(config: ServerConfig, *, steps: int, n_iter: int, batch_size: int,
                      hr_steps: int | None = None) -> None:
    """Raise TooMuchWork for the first value over its limit. `hr_steps`: the hires pass's steps when
    hires fix runs (`hr_second_pass_steps`, or `steps` when that is 0); img2img passes None."""
    checks = [("steps", steps, config.max_steps, "--max-steps"),
              ("hr_second_pass_steps", hr_steps, config.max_steps, "--max-steps"),
              ("n_iter", n_iter, config.max_n_iter, "--max-n-iter"),
              ("batch_size", batch_size, config.max_batch_size, "--max-batch-size")]
    for field, value, limit, flag in checks:
        if value is not None and value > limit:
            raise TooMuchWork(field, f"{value} is over this server's limit of {limit} per request; send at "
                                     f"most {limit} (the server's {flag} flag raises the limit)")
