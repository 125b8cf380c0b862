"""Our uvicorn protocol: the three hot POST endpoints are served without ASGI.

uvicorn's httptools protocol builds an ASGI scope, a RequestResponseCycle with an
asyncio.Event, message dicts and a wrapper coroutine for every request; on this path that
was ~40 % of the gateway's CPU. For a plain ``POST`` to a hot path (HTTP/1.1, not
pipelined, no ``Expect: 100-continue``) this protocol collects the headers and body itself and
runs ``Gateway.serve`` with a ``HotCycle`` that writes the answer straight to the socket;
everything else (other routes, the odd cases above) goes through uvicorn and ASGI as usual.
Keep-alive, graceful shutdown, flow control and pipelining stay uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .gateway import HOT, TOO_LARGE

__all__ = ["GatewayHttpProtocol", "HotCycle"]

log = logging.getLogger("citadel_gateway")
_HOT_URLS = {p.encode(): p for p in HOT}


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
    )

    def __init__(self, proto: GatewayHttpProtocol, path: str, headers: list, keep_alive: bool, limit: int) -> None:
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

    def _complete(self) -> None:
        self.response_complete = True
        if not self.keep_alive:
            self.transport.close()
        self.proto.on_response_complete()


class _IdleSweeper:
    """Keep-alive timeouts for every connection of one server, checked once a second.

    uvicorn arms a timer after every response and cancels it on the next request's bytes; at
    thousands of requests per second that was ~5 µs per request. Here a response only stamps
    the time; the sweep closes connections idle for longer than the timeout (so up to 1 s late).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: set[GatewayHttpProtocol] = set()
        self.handle: asyncio.TimerHandle | None = None

    def add(self, proto: GatewayHttpProtocol) -> None:
        self.idle.add(proto)
        if self.handle is None:
            self.handle = self.loop.call_later(1.0, self.sweep)

    def sweep(self) -> None:
        self.handle = None
        now = self.loop.time()
        idle, self.idle = self.idle, set()
        for p in idle:
            if p.idle_since is None:
                continue  # busy again; back in the set after its next response
            if now - p.idle_since >= p.timeout_keep_alive:
                p.timeout_keep_alive_handler()
            else:
                self.idle.add(p)
        if self.idle:
            self.handle = self.loop.call_later(1.0, self.sweep)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the hot path (module docstring). Also tells the gateway
    at once when a client disconnects, so the upstream request is aborted without a watcher task."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # build_app's App carries the gateway; any other app (tests, wrappers) gets plain uvicorn.
        self.gateway = getattr(self.app, "gateway", None)
        self.raw_transport: asyncio.Transport | None = None
        self.idle_since: float | None = None
        sweeper = getattr(self.server_state, "citadel_idle_sweeper", None)
        if sweeper is None:  # one per server (uvicorn's ServerState lives as long as it)
            sweeper = self.server_state.citadel_idle_sweeper = _IdleSweeper(self.loop)
        self.sweeper = sweeper

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.raw_transport = transport
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

    def connection_lost(self, exc) -> None:
        self.idle_since = None
        self.sweeper.idle.discard(self)
        cycle = self.cycle
        if type(cycle) is HotCycle:
            self.cycle = None  # uvicorn's bookkeeping below is for its own cycles
            super().connection_lost(exc)
            if not cycle.response_complete:
                cycle.disconnected = True
                if cycle.on_disconnect is not None:
                    cycle.on_disconnect()
            return
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            cb = cycle.__dict__.get("citadel_on_disconnect")
            if cb is not None:
                cb()

    # keep-alive: the idle sweeper instead of a timer per response (see _IdleSweeper)
    def _unset_keepalive_if_required(self) -> None:
        self.idle_since = None

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_since = self.loop.time()
            self.sweeper.add(self)

    def on_message_begin(self) -> None:
        # uvicorn builds the ASGI scope here; we build it only for requests that take ASGI
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        parser = self.parser
        path = _HOT_URLS.get(self.url)
        if (
            path is not None
            and self.gateway is not None
            and parser.get_method() == b"POST"
            and not self.expect_100_continue
            and parser.get_http_version() == "1.1"
            and (self.cycle is None or self.cycle.response_complete)
            and not parser.should_upgrade()
        ):
            self.cycle = HotCycle(
                self, path, self.headers, parser.should_keep_alive(), self.gateway.state.cfg.server.max_body_bytes
            )
            return
        self.scope = {  # as uvicorn's on_message_begin
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is not HotCycle:
            super().on_body(body)
        elif cycle.add(body):
            self._start_hot(cycle)  # over server.max_body_bytes: answer now (auth errors first, then 413)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not HotCycle:
            super().on_message_complete()
        elif not cycle.started:
            self._start_hot(cycle)

    def _start_hot(self, cycle: HotCycle) -> None:
        cycle.started = True
        task = self.loop.create_task(self._serve_hot(cycle))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # uvicorn's shutdown waits for these: in-flight requests drain

    async def _serve_hot(self, cycle: HotCycle) -> None:
        try:
            await self.gateway.serve("POST", cycle.path, cycle.headers, cycle.body(), cycle)
        finally:
            if not cycle.response_complete and not cycle.disconnected:
                # serve() always answers unless cancelled (forced shutdown): never leave a client hanging
                log.error("hot path ended without a complete response; closing the connection")
                self.raw_transport.close()
