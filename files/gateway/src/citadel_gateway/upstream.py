"""A small keep-alive pooled HTTP/1.1 client on asyncio protocols + httptools' parser.

Why not aiohttp/httpx: LAB.md measured a FastAPI+aiohttp proxy at ~430 µs CPU per request
(the whole budget is 250 µs) and httpx collapsing under concurrency; see README.md for
this client's numbers. It does exactly what a reverse proxy needs: POST/GET with a
ready body, response head as soon as it arrives, body chunks as the upstream sends
them (no buffering, with back-pressure), hard deadlines without extra tasks, and
errors classified for retry decisions (``ConnectError`` is safe to retry: the
request never reached the upstream).
"""

from __future__ import annotations

import asyncio
import collections

import httptools


class UpstreamError(Exception):
    """Upstream failed (the request may or may not have reached it)."""


class ConnectError(UpstreamError):
    """The request did not reach the upstream (refused, connect timeout, stale pooled socket)."""


class Refused(ConnectError):
    """Connection refused: nothing listens there (the breaker opens at once)."""


class UpstreamTimeout(UpstreamError):
    """The per-request deadline passed."""


_HIGH_WATER = 256 * 1024  # pause reading the upstream when this much is unread by the client


class Response:
    __slots__ = ("status", "headers", "_conn", "_chunks", "_waiter", "_done", "_exc", "_buffered", "content_type")

    def __init__(self, conn: _Conn) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_type = b""
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._done = False
        self._exc: BaseException | None = None
        self._buffered = 0

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next_chunk(self) -> bytes | None:
        """Next body chunk as the upstream sent it, or None at the end."""
        while True:
            if self._chunks:
                c = self._chunks.popleft()
                self._buffered -= len(c)
                if self._buffered < _HIGH_WATER:
                    self._conn.resume()
                return c
            if self._exc is not None:
                raise self._exc
            if self._done:
                return None
            self._waiter = self._conn.loop.create_future()
            await self._waiter
            self._waiter = None

    async def read(self) -> bytes:
        parts = []
        while (c := await self.next_chunk()) is not None:
            parts.append(c)
        return b"".join(parts)

    def close(self) -> None:
        """Give the connection back if the response was fully read, otherwise drop it."""
        self._conn.finish(self)


class _Conn(asyncio.Protocol):
    __slots__ = (
        "pool",
        "key",
        "loop",
        "transport",
        "parser",
        "resp",
        "head_waiter",
        "deadline",
        "closed",
        "got_bytes",
        "paused",
        "reused",
        "complete",
        "keep",
    )

    def __init__(self, pool: Pool, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = None
        self.resp: Response | None = None
        self.head_waiter: asyncio.Future | None = None
        self.deadline = 0.0
        self.closed = False
        self.got_bytes = False
        self.paused = False
        self.reused = False
        self.complete = False
        self.keep = False

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.resp is None:  # bytes while idle: the server is misbehaving; drop the socket
            self._fail(ConnectError("unsolicited data on idle connection"))
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"bad HTTP from upstream: {e}"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.resp is not None and not self.complete:
            if self.got_bytes:
                err: UpstreamError = UpstreamError("upstream closed the connection mid-response")
            else:
                # Nothing came back: on a reused socket the server closed it while idle.
                err = ConnectError("upstream closed the connection before responding")
            self._fail(err, close=False)

    def pause_writing(self) -> None:  # request bodies are small; nothing to do
        pass

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.resp.headers.append((name, value))
        if len(name) == 12 and name.lower() == b"content-type":
            self.resp.content_type = value

    def on_headers_complete(self) -> None:
        self.resp.status = self.parser.get_status_code()
        w = self.head_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def on_body(self, body: bytes) -> None:
        r = self.resp
        r._chunks.append(body)
        r._buffered += len(body)
        if r._buffered > _HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        r._wake()

    def on_message_complete(self) -> None:
        # read it here: httptools resets it once the callback returns
        self.keep = self.parser.should_keep_alive()
        self.complete = True
        self.pool._active.discard(self)
        r = self.resp
        r._done = True
        r._wake()

    # -- internals
    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def _fail(self, exc: BaseException, close: bool = True) -> None:
        self.pool._active.discard(self)
        w = self.head_waiter
        if w is not None and not w.done():
            w.set_exception(exc)
        r = self.resp
        if r is not None and r._exc is None and not r._done:
            r._exc = exc
            r._wake()
        if close and not self.closed:
            self.closed = True
            self.transport.abort()

    def _expire(self) -> None:
        self._fail(UpstreamTimeout("upstream deadline exceeded"))

    def start(self, data: bytes, deadline: float) -> Response:
        self.resp = r = Response(self)
        self.complete = False
        self.got_bytes = False
        if self.parser is None:  # one parser per connection: llhttp resets after each complete response
            self.parser = httptools.HttpResponseParser(self)
        self.head_waiter = self.loop.create_future()
        # Deadlines are checked by the pool's ticker (every 50 ms): a timer per request cost more.
        self.deadline = deadline
        self.pool._watch(self)
        self.transport.write(data)
        return r

    def finish(self, resp: Response) -> None:
        if self.resp is not resp:
            return
        self.pool._active.discard(self)
        self.resp = None
        self.head_waiter = None
        if self.closed:
            return
        if self.complete and self.keep and not resp._chunks and not self.paused:
            self.reused = True
            self.pool._release(self)
        else:
            self.closed = True
            self.transport.abort()

    def abort(self) -> None:
        """Cancel the in-flight request (client went away): the socket is dropped."""
        self._fail(UpstreamError("cancelled"))


class Pool:
    """One keep-alive connection set per process, keyed by (host, port)."""

    def __init__(self, connect_timeout: float = 10.0, max_idle_per_host: int = 256) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connects = 0
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
            idle.append(conn)

    async def _connect(self, key: tuple[str, int], deadline: float) -> _Conn:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        timeout = min(self.connect_timeout, max(0.0, deadline - loop.time()))
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Conn(self, key, loop), key[0], key[1])
        except TimeoutError as e:
            raise ConnectError(f"connect to {key[0]}:{key[1]} timed out") from e
        except ConnectionRefusedError as e:
            raise Refused(f"connect to {key[0]}:{key[1]} refused") from e
        except OSError as e:
            raise ConnectError(f"connect to {key[0]}:{key[1]} failed: {e.strerror or e}") from e
        self.connects += 1
        return conn

    async def request(self, host: str, port: int, head: bytes, body: bytes, deadline: float, cancel=None) -> Response:
        """Send one request; returns once the response head arrived (deadline is loop.time() based).

        ``head`` is the full request head (request line + headers + CRLFCRLF).
        """
        key = (host, port)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                return await self._send(conn, head, body, deadline, cancel)
            except ConnectError:
                continue  # stale keep-alive socket: the request never arrived, try another/new one
        conn = await self._connect(key, deadline)
        return await self._send(conn, head, body, deadline, cancel)

    async def _send(self, conn: _Conn, head: bytes, body: bytes, deadline: float, cancel=None) -> Response:
        if cancel is not None:
            if cancel.fired:
                self._release(conn)
                raise UpstreamError("cancelled: the client went away")
            cancel.conn = conn  # cancel.fire() aborts this request
        resp = conn.start(head + body if len(body) < 65536 else head, deadline)
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
        self.conn: _Conn | None = None
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        if self.conn is not None:
            self.conn.abort()
