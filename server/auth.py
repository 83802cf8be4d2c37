"""`--api-auth user:pass[,user2:pass2]`: HTTP Basic auth on every /sdapi/v1 route and on /docs and
/openapi.json, compared in constant time. 401 answers carry `WWW-Authenticate: Basic`."""
from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

PROTECTED = ("/sdapi/", "/docs", "/redoc", "/openapi.json")


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


def install_auth(app: FastAPI, credentials: list[tuple[str, str]]) -> None:
    if not credentials:
        return

    @app.middleware("http")
    async def basic_auth(request: Request, call_next) -> Response:  # type: ignore[no-untyped-def]
        if request.method != "OPTIONS" and request.url.path.startswith(PROTECTED):
            header = request.headers.get("authorization")
            if not check_basic(header, credentials):
                detail = "Not authenticated" if not header else "Incorrect username or password"
                body = {"error": "HTTPException", "detail": detail, "body": "", "errors": detail}
                return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Basic"})
        return await call_next(request)
