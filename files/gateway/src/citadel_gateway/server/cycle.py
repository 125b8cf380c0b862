"""The response writers: HotCycle answers a hot-path request straight to the socket; the
coalescing transport joins head and body of responses written through uvicorn's ASGI ``send``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from ..context import TOO_LARGE

if TYPE_CHECKING:
    from .protocol import GatewayHttpProtocol


class _CoalescingTransport:
    """For responses written through uvicorn's ASGI ``send``: hold the head until the body write
    in the same loop tick (two send() syscalls cost ~30 µs more than one here)."""

    __slots__ = ("_t", "_pending", "_loop")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._pending: bytes | None = None
        self._loop = loop

    def write(self, data: bytes) -> None:
        p = self._pending
        if p is not None:
            self._pending = None
            if len(data) < 16384:
                self._t.write(p + data)
            else:
                self._t.writelines((p, data))
            return
        if data[:9] == b"HTTP/1.1 " and data[9:12] != b"100":
            self._pending = data
            self._loop.call_soon(self._flush)
            return
        self._t.write(data)

    def _flush(self) -> None:
        p = self._pending
        if p is not None:
            self._pending = None
            if not self._t.is_closing():
                self._t.write(p)

    def close(self) -> None:
        self._flush()
        self._t.close()

    def __getattr__(self, name):
        return getattr(self._t, name)


class HotCycle:
    """One hot-path request and its answer, written straight to the transport.

    uvicorn's protocol code reads ``response_complete``, ``disconnected`` and ``keep_alive`` on
    ``self.cycle`` (shutdown, pipelining); the gateway calls ``whole`` or ``start``/``chunk``/``end``.
    """

    __slots__ = (
        "proto",
        "transport",
        "path",
        "headers",
        "parts",
        "size",
        "limit",
        "keep_alive",
        "response_started",
        "response_complete",
        "disconnected",
        "on_disconnect",
        "started",
        "req",
    )

    def __init__(
        self, proto: GatewayHttpProtocol, path: str, headers: list, keep_alive: bool, limit: int, req=None
    ) -> None:
        self.proto = proto
        self.transport = proto.raw_transport
        self.path = path
        self.headers = headers
        self.parts: list[bytes] | None = []
        self.size = 0
        self.limit = limit
        self.keep_alive = keep_alive
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self.on_disconnect = None
        self.started = False
        self.req = req  # check_head's go-on value for this head (gateway.Request), handed to serve

    def add(self, data: bytes) -> bool:
        """Collect a body part; True when the body just went over the limit (answer now)."""
        if self.parts is None:
            return False
        self.size += len(data)
        if self.size > self.limit:
            self.parts = None  # the rest is read and dropped (closing with unread bytes would reset the 413)
            return True
        self.parts.append(data)
        return False

    def body(self):
        p = self.parts
        if p is None:
            return TOO_LARGE
        return p[0] if len(p) == 1 else b"".join(p)

    def hook_disconnect(self, callback) -> bool:
        self.on_disconnect = callback
        return True

    def _head(self, status: int, headers: list) -> list:
        parts = [STATUS_LINE[status]]
        for n, v in self.proto.server_state.default_headers:
            parts += (n, b": ", v, b"\r\n")
        for n, v in headers:
            parts += (n, b": ", v, b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        return parts

    async def whole(self, status: int, headers: list, body: bytes) -> None:
        if self.response_started or self.disconnected:
            return
        parts = self._head(status, headers)
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        self.response_started = True
        self.transport.write(b"".join(parts))
        self._complete()

    async def start(self, status: int, headers: list) -> None:
        if self.response_started or self.disconnected:
            return
        parts = self._head(status, headers)
        parts.append(b"transfer-encoding: chunked\r\n\r\n")
        self.response_started = True
        self.transport.write(b"".join(parts))

    async def chunk(self, data: bytes) -> None:
        if self.disconnected or not data:
            return
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        flow = self.proto.flow
        if flow.write_paused:
            await flow.drain()

    async def end(self) -> None:
        if self.disconnected or self.response_complete:
            return
        self.transport.write(b"0\r\n\r\n")
        self._complete()

    async def abort(self) -> None:
        """A stream broke after its first byte: drop the connection without the chunked
        terminator, so the client sees a truncated body, never a complete one."""
        if self.response_complete or self.disconnected:
            return
        self.keep_alive = False
        self.disconnected = True  # nothing more is written; not a "hot path ended without a response"
        self.transport.close()

    def _complete(self) -> None:
        self.response_complete = True
        if not self.keep_alive:
            self.transport.close()
        self.proto.on_response_complete()
