"""One upstream connection: the asyncio protocol and its httptools response parser. It keeps
the framing rules of the package docstring (the send-once rule is the pool's)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from .errors import UpstreamError, UpstreamTimeout
from .response import _HIGH_WATER, Response

if TYPE_CHECKING:
    from .pool import Pool


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
