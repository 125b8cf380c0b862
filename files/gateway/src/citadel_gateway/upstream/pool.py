"""The keep-alive pool per (host, port, TLS context): connect, send once, the deadline ticker; and Cancel."""

from __future__ import annotations

import asyncio
import time

from .conn import _Conn
from .errors import ConnectError, Refused, UpstreamError
from .response import Response

_now = time.monotonic


class Pool:
    """One keep-alive connection set per process, keyed by (host, port, TLS context or None).

    ``idle_ttl_s``: an idle connection older than this is closed instead of reused; keep it
    below the upstream's keep-alive timeout (uvicorn, hence vLLM: 5 s)."""

    def __init__(self, connect_timeout: float = 10.0, max_idle_per_host: int = 256, idle_ttl_s: float = 4.0) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle_per_host
        self.idle_ttl = idle_ttl_s
        self._idle: dict[tuple, list[_Conn]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._active: set[_Conn] = set()
        self._ticker: asyncio.TimerHandle | None = None

    def _watch(self, conn: _Conn) -> None:
        self._active.add(conn)
        if self._ticker is None:
            self._ticker = conn.loop.call_later(0.05, self._tick, conn.loop)

    def _tick(self, loop) -> None:
        self._ticker = None
        if not self._active:
            return
        now = loop.time()
        for c in [c for c in self._active if c.deadline <= now]:
            c._expire()
        if self._active:
            self._ticker = loop.call_later(0.05, self._tick, loop)

    def _forget(self, conn: _Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _release(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.closed = True
            conn.transport.close()
        else:
            conn.idle_since = _now()
            idle.append(conn)

    def _pop_idle(self, key: tuple) -> _Conn | None:
        """The most recently used idle connection, unless it sat idle longer than the TTL."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if _now() - conn.idle_since <= self.idle_ttl:
                return conn
            # released in order: every other one is older still
            idle.append(conn)
            for c in idle:
                c.closed = True
                c.transport.close()
            idle.clear()
        return None

    async def _connect(self, key: tuple, deadline: float) -> _Conn:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        timeout = min(self.connect_timeout, max(0.0, deadline - loop.time()))
        try:
            async with asyncio.timeout(timeout):
                tls = {"ssl": key[2], "server_hostname": key[0]} if key[2] else {}
                _, conn = await loop.create_connection(lambda: _Conn(self, key, loop), key[0], key[1], **tls)
        except TimeoutError as e:
            raise ConnectError(f"connect to {key[0]}:{key[1]} timed out") from e
        except ConnectionRefusedError as e:
            raise Refused(f"connect to {key[0]}:{key[1]} refused") from e
        except OSError as e:  # ssl.SSLError (a certificate not verified) included
            raise ConnectError(f"connect to {key[0]}:{key[1]} failed: {e.strerror or e}") from e
        return conn

    async def request(self, key: tuple, head: bytes, body: bytes, deadline: float, cancel=None) -> Response:
        """Send one request, once; returns once the final response head arrived (deadline is
        loop.time() based). ``key``: (host, port, TLS context or None), a Replica's ``key``.
        ``head`` is the full request head (request line + headers + CRLFCRLF).

        Raises ConnectError (nothing was sent: safe to retry), UpstreamTimeout, or UpstreamError
        (the request may have reached the upstream). A failure is never retried here, not even
        on a reused socket the upstream had closed: each call is one attempt for the caller."""
        if cancel is not None and cancel.fired:
            raise UpstreamError("cancelled: the client went away")
        idle = self._idle.get(key)
        if idle and not (conn := idle[-1]).closed and _now() - conn.idle_since <= self.idle_ttl:
            idle.pop()  # the fast path: the most recently used idle connection is fresh
        else:
            conn = self._pop_idle(key) or await self._connect(key, deadline)
        if cancel is not None and cancel.fired:  # went away while we connected
            self._release(conn)
            raise UpstreamError("cancelled: the client went away")
        resp = conn.start(head + body if len(body) < 65536 else head, deadline)
        if cancel is not None:
            cancel.conn = resp  # cancel.conn.abort() aborts this request, and only this one
        if len(body) >= 65536:
            conn.transport.write(body)
        try:
            await conn.head_waiter
        except asyncio.CancelledError:
            conn.abort()
            conn.finish(resp)
            raise
        except BaseException:
            conn.finish(resp)
            raise
        return resp

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for idle in self._idle.values():
            for c in idle:
                c.closed = True
                c.transport.close()
        self._idle.clear()


class Cancel:
    """Handle to abort the in-flight upstream request when the client goes away."""

    __slots__ = ("conn", "fired")

    def __init__(self) -> None:
        self.conn: Response | None = None  # set by Pool.request: the request in flight
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        if self.conn is not None:
            self.conn.abort()
