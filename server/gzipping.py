"""Gzip content coding for every response except those that carry generated images.

A1111 gzips every response over 1000 bytes. A body of base64 PNGs gains only about a quarter from gzip (the
PNG data is already deflated; base64 spends 8 bits per 6), while compressing it costs more than writing the
PNGs: Starlette's level 9 took 0.58 s for the 10 MB body of one 2048x2048 image on this machine, level 1 still
0.48 s. So the routes that answer with images send them uncompressed; clients that ask for gzip
(`requests`, `httpx`, `webuiapi`) read either, as HTTP's content negotiation intends."""
from __future__ import annotations

from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["IMAGE_ROUTES", "GZipExceptImages"]

IMAGE_ROUTES = frozenset({
    "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images",
})


class GZipExceptImages:
    def __init__(self, app: ASGIApp, minimum_size: int = 1000, plain: frozenset[str] = IMAGE_ROUTES) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size)
        self.plain = plain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") in self.plain:
            await self.app(scope, receive, send)
        else:
            await self.gzip(scope, receive, send)
