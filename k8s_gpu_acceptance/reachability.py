"""Is the API server reachable? Answered once, fast, and with the one sentence that names the cause.

The check is a plain TCP connect with the connect timeout (no retries), then `GET /version` through the
real client for what only HTTP can tell (TLS, credentials, a proxy's answer). So:
- nothing listening (connection refused) or a name that does not resolve: answered in milliseconds;
- a black-holed address (firewall drop, VPN down, a private EKS endpoint from outside): answered after
  exactly the connect timeout, CONNECT_TIMEOUT_S = 5 s;
- reachable but failing TLS or authentication: answered by the server's own reply.
Every failure is classified from the exception chain (urllib3 wraps the socket error two levels deep), so
the report says "connection refused" instead of a MaxRetryError traceback; the cause and fix of each kind
are a rule in diagnosis.py (`diagnose_unreachable`).
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Unreachable:
    """Why the API server could not be used: `kind` for rules and tests, `seen` for people."""

    # refused, timeout, dns, no-route, reset, tls, read-timeout, unauthorized, forbidden, http, other
    kind: str
    seen: str
    elapsed_s: float = 0.0


def _chain(exc: BaseException) -> list[BaseException]:
    out = [exc]
    while True:
        nxt = getattr(out[-1], "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = out[-1].__cause__ or out[-1].__context__
        if nxt is None or nxt in out:
            return out
        out.append(nxt)


def classify(exc: BaseException, server: str, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> Unreachable:
    """Name what went wrong talking to `server`, from any exception the client or a socket raised."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status > 0:
        if status == 401:
            return Unreachable("unauthorized", f"API server {server} answered 401 Unauthorized")
        if status == 403:
            return Unreachable("forbidden", f"API server {server} answered 403 Forbidden")
        return Unreachable(
            "http", f"API server {server} answered {status} {getattr(exc, 'reason', '')}".strip()
        )
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    root = chain[-1]
    number = getattr(root, "errno", None)
    if isinstance(root, ssl.SSLError) or "SSLError" in names:
        return Unreachable("tls", f"TLS with {server} failed: {_first_line(root)}")
    if isinstance(root, socket.gaierror) or "NameResolutionError" in names:
        host = urllib.parse.urlsplit(server).hostname or server
        return Unreachable("dns", f"the API server's name {host!r} does not resolve ({_first_line(root)})")
    if isinstance(root, ConnectionRefusedError) or number == errno.ECONNREFUSED:
        return Unreachable("refused", f"connection to {server} refused: nothing listens at that address")
    if number in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return Unreachable("no-route", f"no route to {server} ({_first_line(root)})")
    if "ReadTimeoutError" in names:
        return Unreachable("read-timeout", f"{server} accepted the connection but did not answer in time")
    if isinstance(root, TimeoutError | socket.timeout) or "ConnectTimeoutError" in names:
        return Unreachable(
            "timeout",
            f"no answer from {server} within the {connect_timeout_s:g} s connect timeout "
            "(packets are dropped on the way)",
        )
    if isinstance(root, ConnectionResetError | BrokenPipeError) or "ProtocolError" in names:
        return Unreachable("reset", f"{server} closed the connection ({_first_line(root)})")
    return Unreachable("other", f"cannot reach {server}: {type(root).__name__}: {_first_line(root)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def tcp_check(server: str, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> Unreachable | None:
    """One TCP connect to the server's host and port, no retries: refused/DNS at once, a drop in the
    connect timeout."""
    parts = urllib.parse.urlsplit(server)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=connect_timeout_s):
            return None
    except OSError as exc:
        found = classify(exc, server, connect_timeout_s)
        return Unreachable(found.kind, found.seen, round(time.monotonic() - started, 2))


def check(
    api: Any, server: str, proxy: str | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> Unreachable | None:
    """None when `GET /version` answers; else why not. `api` is a kubernetes ApiClient."""
    from kubernetes import client

    started = time.monotonic()
    if not proxy:  # through a proxy only the proxy is reached by TCP: let the HTTP request tell
        found = tcp_check(server, connect_timeout_s)
        if found is not None:
            return found
    try:
        client.VersionApi(api).get_code(_request_timeout=(connect_timeout_s, READ_TIMEOUT_S))
    except Exception as exc:
        found = classify(exc, server, connect_timeout_s)
        return Unreachable(found.kind, found.seen, round(time.monotonic() - started, 2))
    return None
