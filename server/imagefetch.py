"""Image inputs given as http(s) URLs, fetched as A1111's API fetches them (`modules/api/api.py`,
`decode_base64_to_image` / `verify_url`), steered by A1111's three options:

- `api_enable_requests` (default on): off, a URL is refused;
- `api_forbid_local_requests` (default on): the host must resolve to global addresses only, every one of
  them (A1111's rule); a redirect is followed only to a host that passes the same check;
- `api_useragent` (default empty: httpx's own): the User-Agent header of the request.

Stricter than A1111, on purpose: the connection goes to the address that was checked (no second DNS answer
between check and connect), only http and https are fetched, at most `MAX_REDIRECTS` redirects, a body
larger than the byte cap is cut off (the server's --max-body-mb: what the same image could weigh as base64),
30 s per network step as A1111 (`timeout=30`) and `TOTAL_S` for the whole download. Every refusal or failure
is an `ImageDecodeError` (HTTP 400) naming the option or the cause; A1111 answers 500.

This is the server's only outgoing request made on a request's behalf besides an async task's
`callback_url`: the user asks for it, and nothing else (weights, configs) is ever downloaded."""
from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

TIMEOUT_S = 30.0  # A1111: requests.get(..., timeout=30): connect and each read
TOTAL_S = 90.0  # the whole download, redirects included (A1111 has no such limit)
MAX_REDIRECTS = 5
CHUNK = 1 << 16

# (host, port) -> the addresses the name resolves to (socket.getaddrinfo's); a parameter for the tests
Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class FetchRefused(Exception):
    """A URL this server will not fetch, or a fetch that failed; the message says which and why."""


@dataclass(frozen=True)
class UrlFetch:
    """How image URLs are handled for one request: A1111's options plus this server's byte cap."""
    enabled: bool = True
    forbid_local: bool = True
    useragent: str = ""
    max_bytes: int = 200 << 20
    timeout_s: float = TIMEOUT_S
    total_s: float = TOTAL_S
    resolver: Resolver = resolve

    @classmethod
    def from_options(cls, opts: Mapping[str, Any], max_bytes: int) -> UrlFetch:
        return cls(enabled=bool(opts.get("api_enable_requests", True)),
                   forbid_local=bool(opts.get("api_forbid_local_requests", True)),
                   useragent=str(opts.get("api_useragent") or ""), max_bytes=max_bytes)


def is_url(text: str) -> bool:
    """An http(s) URL, as A1111 tells one from base64 (it checks the prefix, case-sensitively; so do we,
    case-insensitively)."""
    head = text[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


def shown(url: str) -> str:
    return repr(url if len(url) <= 100 else url[:97] + "...")


def _pinned(url: httpx.URL, policy: UrlFetch) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """Where to connect for `url`: with `forbid_local`, its host's first address after every address was
    checked (the request then carries the name in Host and in TLS SNI, so certificates are checked
    against the name); else the URL as it is."""
    if url.scheme not in ("http", "https"):
        raise FetchRefused(f"only http and https URLs are fetched, not {url.scheme}: ({shown(str(url))})")
    host = url.host
    if not host:
        raise FetchRefused(f"the URL {shown(str(url))} has no host")
    if not policy.forbid_local:
        return url, {}, {}
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = policy.resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise FetchRefused(f"cannot resolve the host {host!r} of {shown(str(url))}: {exc}") from None
    if not addresses:
        raise FetchRefused(f"the host {host!r} of {shown(str(url))} resolves to no address")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            raise FetchRefused(
                f"{host!r} resolves to {address}, which is not a global (public) address, and the option "
                "api_forbid_local_requests is on (A1111's default): local and private hosts are not fetched; "
                "turn the option off (POST /sdapi/v1/options or override_settings) to allow them")
    headers = {"Host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    return url.copy_with(host=addresses[0]), headers, extensions


def fetch_url(url_text: str, policy: UrlFetch) -> bytes:
    """The body of `url_text` (an http(s) URL) under `policy`, or FetchRefused saying why not."""
    if not policy.enabled:
        raise FetchRefused(
            f"image URLs are not fetched ({shown(url_text)}): the option api_enable_requests is off; turn it "
            "on (POST /sdapi/v1/options or override_settings) or send the image itself as base64")
    try:
        url = httpx.URL(url_text)
    except (httpx.InvalidURL, ValueError) as exc:
        raise FetchRefused(f"not a valid URL ({shown(url_text)}): {exc}") from None
    headers = {"User-Agent": policy.useragent} if policy.useragent else {}
    deadline = time.monotonic() + policy.total_s
    # the environment's proxy settings only when the host is not checked (a proxy would resolve it itself)
    with httpx.Client(timeout=policy.timeout_s, follow_redirects=False,
                      trust_env=not policy.forbid_local) as client:
        for _ in range(MAX_REDIRECTS + 1):
            target, host_header, extensions = _pinned(url, policy)
            try:
                with client.stream("GET", target, headers={**headers, **host_header},
                                   extensions=extensions) as response:
                    if response.is_redirect and "location" in response.headers:
                        try:
                            url = url.join(response.headers["location"])
                        except (httpx.InvalidURL, ValueError) as exc:
                            raise FetchRefused(f"{shown(str(url))} redirects to a bad URL: {exc}") from None
                        continue
                    if response.status_code != 200:
                        raise FetchRefused(f"fetching {shown(str(url))} failed: the server answered HTTP "
                                           f"{response.status_code}")
                    return _body(response, url, policy, deadline)
            except httpx.TimeoutException:
                raise FetchRefused(f"fetching {shown(str(url))} timed out ({policy.timeout_s:g} s without "
                                   "progress)") from None
            except httpx.HTTPError as exc:
                why = str(exc) or type(exc).__name__
                raise FetchRefused(f"fetching {shown(str(url))} failed: {why}") from None
    raise FetchRefused(f"{shown(url_text)} redirects more than {MAX_REDIRECTS} times")


def _body(response: httpx.Response, url: httpx.URL, policy: UrlFetch, deadline: float) -> bytes:
    too_large = (f"the image at {shown(str(url))} is larger than {policy.max_bytes} bytes (this server's "
                 "--max-body-mb); send a smaller file")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchRefused(too_large)
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes(CHUNK):
        size += len(chunk)
        if size > policy.max_bytes:
            raise FetchRefused(too_large)
        if time.monotonic() > deadline:
            raise FetchRefused(f"fetching {shown(str(url))} took longer than {policy.total_s:g} s")
        parts.append(chunk)
    if not size:
        raise FetchRefused(f"{shown(str(url))} answered an empty body")
    return b"".join(parts)
