"""One response as the caller sees it: the head, then body chunks under back-pressure."""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING

from .errors import ResponseTooLarge

if TYPE_CHECKING:
    from .conn import _Conn

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
