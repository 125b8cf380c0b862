"""A small keep-alive pooled HTTP/1.1 client on asyncio protocols + httptools' parser.

Why not aiohttp/httpx: on this project's 2-core machines a FastAPI+aiohttp proxy measured at ~430 µs CPU per request
(the whole budget is 250 µs) and httpx collapsing under concurrency; see README.md for
this client's numbers. It does exactly what a reverse proxy needs: POST/GET with a
ready body, response head as soon as it arrives, body chunks as the upstream sends
them (no buffering, with back-pressure), hard deadlines without extra tasks, and
errors classified for retry decisions (``ConnectError`` is safe to retry: the
request never reached the upstream).

Framing rules (RFC 9110/9112), because a connection reused with a wrong idea of where the
last response ended hands one client's answer to the next:

* 1xx interim responses (100 Continue, 103 Early Hints, ...) are skipped: their headers are
  dropped and the final response is awaited on the same connection. 101 is a protocol error
  (we never ask for an upgrade): the request fails and the connection is closed.
* A connection is reused only after a clean keep-alive response read to its end. It is closed
  on a parse error, bytes after a complete response, a body delimited by the close, a response
  not read to its end, a cancelled request, a request whose head was not answered, and
  ``Connection: close``.
* ``Pool.request`` sends exactly once: a failure on a reused socket is the caller's attempt to
  count, never retried here. Idle sockets older than ``idle_ttl_s`` (below the upstream's own
  keep-alive timeout, uvicorn's 5 s for vLLM) are not reused, so that race stays rare.
"""

from __future__ import annotations

import asyncio
import collections
import time

import httptools

_now = time.monotonic


class UpstreamError(Exception):
    """Upstream failed (the request may or may not have reached it)."""


class ConnectError(UpstreamError):
    """The request did not reach the upstream (refused, connect failed or timed out)."""


class Refused(ConnectError):
    """Connection refused: nothing listens there (the breaker opens at once)."""


class UpstreamTimeout(UpstreamError):
    """The per-request deadline passed."""


class ResponseTooLarge(UpstreamError):
    """The body is larger than the caller's limit (the connection was dropped).

    ``received``: body bytes read before giving up (0 when the declared Content-Length already
    said so); ``declared``: the Content-Length, or None when the upstream did not give one."""

    def __init__(self, limit: int, received: int, declared: int | None) -> None:
        said = f"declared {declared} bytes" if declared is not None else f"{received} bytes received already"
        super().__init__(f"upstream answer over the {limit} byte limit ({said})")
        self.limit = limit
        self.received = received
        self.declared = declared


_HIGH_WATER = 256 * 1024  # pause reading the upstream when this much is unread by the client
DEFAULT_READ_LIMIT = 64 * 1024 * 1024  # Response.read() without a limit (config default of upstream.max_response_bytes)


class Response:
    __slots__ = (
        "status",
        "headers",
        "content_type",
        "content_length",
        "_conn",
        "_chunks",
        "_waiter",
        "_done",
        "_exc",
        "_buffered",
    )

    def __init__(self, conn: _Conn) -> None:
        self.status = 0  # 0 until the final (non-1xx) head arrived
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_type = b""
        self.content_length: int | None = None  # from the head; None: chunked or until close
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

    async def read(self, limit: int = DEFAULT_READ_LIMIT) -> bytes | bytearray:
        """The whole body, at most ``limit`` bytes: ResponseTooLarge (and the connection dropped)
        as soon as more arrived, or at once when the Content-Length says so. Held once: the
        single chunk itself when the body came in one, else one bytearray grown in place."""
        n = self.content_length
        if n is not None and n > limit:
            raise self._too_large(limit, 0)
        c = await self.next_chunk()
        if c is None:
            return b""
        if len(c) > limit:
            raise self._too_large(limit, len(c))
        if self._done and not self._chunks:
            return c  # the common case: the whole body in one piece, no copy
        buf = bytearray(c)
        del c
        while (c := await self.next_chunk()) is not None:
            if len(buf) + len(c) > limit:
                raise self._too_large(limit, len(buf) + len(c))
            buf += c
        return buf

    def read_now(self, limit: int = DEFAULT_READ_LIMIT) -> bytes | None:
        """What ``read(limit)`` would return when the whole body is here already in one piece
        and within the limit (the common case for a small answer), without a coroutine; else
        None (then await ``read``)."""
        chunks = self._chunks
        if not self._done or len(chunks) != 1:
            return None
        c = chunks[0]
        n = self.content_length
        if len(c) > limit or (n is not None and n > limit):
            return None
        chunks.popleft()
        self._buffered -= len(c)
        if self._buffered < _HIGH_WATER:
            self._conn.resume()
        return c

    def _too_large(self, limit: int, received: int) -> ResponseTooLarge:
        e = ResponseTooLarge(limit, received, self.content_length)
        self._chunks.clear()
        self._buffered = 0
        if self._conn.resp is self:
            self._conn._fail(e)  # the rest of the body is not wanted: drop the connection
        return e

    def abort(self) -> None:
        """Cancel this request (the client went away): its socket is dropped. No effect once the
        response was closed (the connection may serve another request by then)."""
        if self._conn.resp is self:
            self._conn.abort()

    def set_deadline(self, when: float) -> None:
        """Move this request's deadline (loop.time() based), e.g. per stream chunk."""
        if self._conn.resp is self:
            self._conn.deadline = when

    def close(self) -> None:
        """Give the connection back if the response was fully read, otherwise drop it."""
        self._conn.finish(self)


class _Trailing(Exception):
    """Bytes after a complete response (raised from the parser callback to stop parsing)."""


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
        "chunked",
        "idle_since",
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
        self.chunked = False
        self.idle_since = 0.0

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.resp is None:  # bytes while idle: the server is misbehaving; drop the socket
            self._fail(UpstreamError("unsolicited data on idle connection"))
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            if self.complete:
                # the response is whole, but what came after it is not ours to guess: never reuse
                self.keep = False
                self._close()
                return
            ctx = e.__context__
            self._fail(ctx if isinstance(ctx, UpstreamError) else UpstreamError(f"bad HTTP from upstream: {e}"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool._forget(self)
        r = self.resp
        if r is not None and not self.complete:
            if exc is None and r.status and not self.keep and not self.chunked and r.content_length is None:
                # body delimited by the close (no Content-Length, not chunked): this is its end
                self._complete(r)
                return
            if self.got_bytes:
                err: UpstreamError = UpstreamError("upstream closed the connection mid-response")
            else:
                how = "a reused" if self.reused else "a new"
                err = UpstreamError(
                    f"upstream closed {how} connection without responding (the request may have reached it)"
                )
            self._fail(err, close=False)

    def pause_writing(self) -> None:  # request bodies are small; nothing to do
        pass

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            raise _Trailing  # a second response to one request: stop; data_received closes

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.resp
        r.headers.append((name, value))
        n = len(name)
        if n == 12:
            if name.lower() == b"content-type":
                r.content_type = value
        elif n == 14:
            if name.lower() == b"content-length":
                r.content_length = int(value)  # llhttp has validated it
        elif n == 17 and name.lower() == b"transfer-encoding":
            self.chunked = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        r = self.resp
        if status < 200:
            if status == 101:
                raise UpstreamError("upstream switched protocols (101) though no upgrade was asked for")
            # interim response (100 Continue, 103 Early Hints, ...): forget it, the final one follows
            r.headers.clear()
            r.content_type = b""
            r.content_length = None
            self.chunked = False
            return
        r.status = status
        # read it here, valid from now to the end of the message (httptools resets it after)
        self.keep = self.parser.should_keep_alive()
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
        r = self.resp
        if r.status:  # else the end of an interim 1xx response
            self.complete = True
            self.pool._active.discard(self)
            r._done = True
            r._wake()

    # -- internals
    def _complete(self, r: Response) -> None:
        self.complete = True
        self.pool._active.discard(self)
        r._done = True
        r._wake()

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def _fail(self, exc: BaseException, close: bool = True) -> None:
        self.pool._active.discard(self)
        w = self.head_waiter
        if w is not None and not w.done():
            w.set_exception(exc)
        r = self.resp
        if r is not None and r._exc is None and not r._done:
            r._exc = exc
            r._wake()
        if close:
            self._close()

    def _expire(self) -> None:
        self._fail(UpstreamTimeout("upstream deadline exceeded"))

    def start(self, data: bytes, deadline: float) -> Response:
        self.resp = r = Response(self)
        self.complete = False
        self.got_bytes = False
        self.chunked = False
        self.keep = False
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
            self._close()

    def abort(self) -> None:
        """Cancel the in-flight request (client went away): the socket is dropped."""
        self._fail(UpstreamError("cancelled"))


class Pool:
    """One keep-alive connection set per process, keyed by (host, port).

    ``idle_ttl_s``: an idle connection older than this is closed instead of reused; keep it
    below the upstream's keep-alive timeout (uvicorn, hence vLLM: 5 s)."""

    def __init__(self, connect_timeout: float = 10.0, max_idle_per_host: int = 256, idle_ttl_s: float = 4.0) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle_per_host
        self.idle_ttl = idle_ttl_s
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
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

    def _pop_idle(self, key: tuple[str, int]) -> _Conn | None:
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
        return conn

    async def request(self, host: str, port: int, head: bytes, body: bytes, deadline: float, cancel=None) -> Response:
        """Send one request, once; returns once the final response head arrived (deadline is
        loop.time() based). ``head`` is the full request head (request line + headers + CRLFCRLF).

        Raises ConnectError (nothing was sent: safe to retry), UpstreamTimeout, or UpstreamError
        (the request may have reached the upstream). A failure is never retried here, not even
        on a reused socket the upstream had closed: each call is one attempt for the caller."""
        if cancel is not None and cancel.fired:
            raise UpstreamError("cancelled: the client went away")
        key = (host, port)
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
