"""`--api-auth user:pass[,user2:pass2]`: HTTP Basic auth on every /sdapi/v1, /internal and /agent-scheduler
route and on /docs and /openapi.json, compared in constant time. 401 answers carry `WWW-Authenticate:
Basic` and A1111's error body. A plain ASGI middleware (not Starlette's BaseHTTPMiddleware), so that a
route still sees its client disconnect."""
from __future__ import annotations

import base64
import binascii
import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

PROTECTED = ("/sdapi/", "/internal/", "/agent-scheduler/", "/controlnet/", "/docs", "/redoc", "/openapi.json")


def check_basic(header: str | None, credentials: list[tuple[str, str]]) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, pw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    ok = False
    for u, p in credentials:  # compare against every pair so timing reveals nothing
        ok |= hmac.compare_digest(u.encode(), user.encode()) & hmac.compare_digest(p.encode(), pw.encode())
    return ok


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED)


class BasicAuthMiddleware:
    def __init__(self, app: ASGIApp, credentials: list[tuple[str, str]]) -> None:
        self.app = app
        self.credentials = list(credentials)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = None
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                header = value.decode("latin-1")
                break
        if check_basic(header, self.credentials):
            await self.app(scope, receive, send)
            return
        detail = "Not authenticated" if not header else "Incorrect username or password"
        body = json.dumps({"error": "HTTPException", "detail": detail, "body": "", "errors": detail}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Basic realm="hiresd"')]})
        await send({"type": "http.response.body", "body": body})
