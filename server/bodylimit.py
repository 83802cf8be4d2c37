"""`--max-body-mb`: request bodies larger than the limit are answered with 413 before they are read.

A declared `Content-Length` over the limit is refused at once, without reading a byte of the body. A body
without one (chunked transfer) or one that turns out longer is counted while it streams in, and refused
as soon as the count passes the limit: at most the limit plus one network chunk is ever held. uvicorn
reads the socket only as fast as the app takes the body, so nothing larger piles up below us either."""
from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MIB = 1024 * 1024


class BodyTooLarge(HTTPException):
    """A request body over --max-body-mb (HTTP 413)."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        said = f"declares {size} bytes" if size is not None else "is larger than that"
        super().__init__(413, f"request body too large: this server accepts at most {limit // MIB} MB "
                              f"({limit} bytes) and this body {said}; send fewer or smaller images, or "
                              "start the server with a larger --max-body-mb")


class BodyLimitMiddleware:
    """Plain ASGI middleware (routes still see their client disconnect) enforcing `max_bytes` per body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _answer(send, 400, "BadRequest", "the Content-Length header is not a number of bytes")
            return
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, BodyTooLarge.__name__, BodyTooLarge(self.max_bytes, declared).detail)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no FastAPI handler turned it into the response
            if started:
                raise
            await _answer(send, 413, type(exc).__name__, exc.detail)


def _content_length(scope: Scope) -> int | None:
    """The declared length; None when absent, -1 when it is not a number."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                n = int(value)
            except ValueError:
                return -1
            return n if n >= 0 else -1
    return None


async def _answer(send: Send, status: int, error: str, detail: str) -> None:
    """An A1111-shaped error response; the connection is closed after it (the body was not read)."""
    body = json.dumps({"error": error, "detail": detail, "body": "", "errors": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
