"""API keys: one way to read and compare them on every route, and a throttle on failed attempts.

A key is presented as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` and compared as the
sha256 of its raw bytes (so a non-ASCII key works the same on the hot path and on FastAPI's
routes). A client address that keeps presenting bad keys is answered 429 without the key being
looked at, until its bucket refills (``auth.failed_rpm`` / ``auth.failed_burst``).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from . import config as C
from .errors import Denied
from .limits import retry_after

MISSING = Denied(401, "missing API key (Authorization: Bearer or X-API-Key)", "missing_api_key", "unauthorized")
INVALID = Denied(401, "invalid API key", "invalid_api_key", "unauthorized")


def presented(headers) -> bytes | None:
    """The key in a raw ASGI/uvicorn header list ((lower-case name, value) bytes pairs)."""
    bearer = xkey = None
    for k, v in headers:
        if k == b"authorization":
            bearer = v
        elif k == b"x-api-key":
            xkey = v
    return token_of(bearer, xkey)


def token_of(bearer: bytes | None, xkey: bytes | None) -> bytes | None:
    """The key from the last ``Authorization`` and ``X-API-Key`` values (a Bearer token first)."""
    if bearer is not None and bearer[:7].lower() == b"bearer ":
        token = bearer[7:].strip()
    elif xkey is not None:
        token = xkey.strip()
    else:
        return None
    return token or None


class KeyRing:
    """The configured keys, by the sha256 of their raw bytes; ``find`` a presented token's key.

    A token is hashed the first time it matches, then found by its bytes: OpenSSL's sha256, run
    cold between requests, was ~9 us of the latency a request gains through the gateway at
    concurrency 1. Only tokens that matched are remembered, so there are never more than there are
    keys (one preimage each); a wrong token is hashed every time. The dict's hash of the token is
    keyed per process, so how long a lookup takes tells a client nothing about the keys."""

    __slots__ = ("by_digest", "matched")

    def __init__(self, keys) -> None:
        self.by_digest: dict[str, C.ApiKey] = {k.sha256: k for k in keys}
        self.matched: dict[bytes, C.ApiKey] = {}

    def find(self, token: bytes) -> C.ApiKey | None:
        key = self.matched.get(token)
        if key is not None:
            return key
        digest = hashlib.sha256(token).hexdigest()
        key = self.by_digest.get(digest)
        if key is None or not hmac.compare_digest(key.sha256, digest):
            return None
        self.matched[token] = key
        return key


class FailedAuthThrottle:
    """Token bucket of failed authentications per client address (bounded memory)."""

    MAX_ADDRESSES = 65536

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._b: dict[str, list[float]] = {}

    def blocked(self, addr: str, rpm: int, burst: int) -> float:
        """Seconds until ``addr`` may try again (0: not blocked), without taking a token."""
        b = self._b.get(addr)
        if b is None:
            return 0.0
        tokens = min(float(burst), b[0] + (self.clock() - b[1]) * rpm / 60.0)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) * 60.0 / rpm

    def failed(self, addr: str, rpm: int, burst: int) -> None:
        now = self.clock()
        b = self._b.get(addr)
        if b is None:
            if len(self._b) >= self.MAX_ADDRESSES:
                self._b.pop(next(iter(self._b)))  # the oldest entry (dicts keep insertion order)
            self._b[addr] = [burst - 1.0, now]
            return
        b[0] = max(0.0, min(float(burst), b[0] + (now - b[1]) * rpm / 60.0) - 1.0)
        b[1] = now


def authenticate(cfg: C.Auth, keys: KeyRing, throttle: FailedAuthThrottle, headers, client: str | None):
    """The key (config.ApiKey), None when auth is off, or a Denied answer."""
    if not cfg.required:
        return None
    return authenticate_token(cfg, keys, throttle, presented(headers), client)


def authenticate_token(
    cfg: C.Auth, keys: KeyRing, throttle: FailedAuthThrottle, token: bytes | None, client: str | None
):
    """``authenticate`` for a token already read from the headers (auth required)."""
    addr = client or "-"
    wait = throttle.blocked(addr, cfg.failed_rpm, cfg.failed_burst)
    if wait > 0:
        return Denied(
            429,
            "too many failed authentications from this address",
            "auth_throttled",
            "auth_throttled",
            ((b"retry-after", retry_after(wait).encode()),),
        )
    key = keys.find(token) if token is not None else None
    if key is None:
        throttle.failed(addr, cfg.failed_rpm, cfg.failed_burst)
        return MISSING if token is None else INVALID
    return key
