"""The `callback_url` of an async task, called once when the task ends, as the agent-scheduler extension
calls it: a multipart POST with the form fields `task_id` and `status` (done, failed, interrupted) and the
images as `files` parts. Each try has a timeout; a connection error, a timeout or a 5xx is tried again
(3 tries, 1 s apart); a 4xx is the receiver's final word. Runs on its own thread, never on the worker."""
from __future__ import annotations

import logging
import time

import httpx

log = logging.getLogger("hiresd.webhook")

TRIES = 3
TIMEOUT_S = 5.0
RETRY_WAIT_S = 1.0
MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


def post_result(url: str, task_id: str, status: str, images: list[bytes], fmt: str = "png",
                tries: int = TRIES, timeout: float = TIMEOUT_S, wait: float = RETRY_WAIT_S) -> bool:
    """POST the task's end to `url`; True when the receiver answered 2xx/3xx."""
    ext = "jpg" if fmt == "jpeg" else fmt
    files = [("files", (f"{task_id}-{i}.{ext}", data, MIME.get(ext, "application/octet-stream")))
             for i, data in enumerate(images)]
    form = {"task_id": task_id, "status": status}
    for attempt in range(1, tries + 1):
        try:
            r = httpx.post(url, data=form, files=files or None, timeout=timeout)
        except httpx.HTTPError as exc:
            log.warning("callback %s for task %s, try %d/%d: %s", url, task_id, attempt, tries, exc)
        else:
            if r.status_code < 400:
                return True
            log.warning("callback %s for task %s, try %d/%d: HTTP %d", url, task_id, attempt, tries,
                        r.status_code)
            if r.status_code < 500:
                return False
        if attempt < tries:
            time.sleep(wait)
    return False
