"""Our uvicorn protocol: the three hot POST endpoints are served without ASGI, and nothing is
given away to a client before its request head has been judged.

uvicorn's httptools protocol builds an ASGI scope, a RequestResponseCycle with an
asyncio.Event, message dicts and a wrapper coroutine for every request; on this path that
was ~40 % of the gateway's CPU. For a plain ``POST`` to a hot path (HTTP/1.1, not
pipelined, no ``Expect: 100-continue``) this protocol collects the headers and body itself and
runs ``Gateway.serve`` with a ``HotCycle`` that writes the answer straight to the socket;
everything else (other routes, the odd cases above) goes through uvicorn and ASGI as usual.
Keep-alive, graceful shutdown, flow control and pipelining stay uvicorn's.

Hostile clients (``server.*`` in the config), on every route:

- the request line and headers are limited as they arrive: URL over ``max_url_bytes`` → 414,
  more than ``max_header_count`` headers or a head over ``max_head_bytes`` → 431 (the parser is
  never fed more than the head budget, so no header is ever buffered past the limit);
- when a head is complete, ``Gateway.check_head`` gives its verdict before a body byte is read
  (auth, failed-auth throttle, declared size); a refusal is answered with ``Connection: close``,
  never a ``100 Continue``, and the connection is closed after a short lingering drain;
- one sweep a second (no timer per request) closes heads not complete within
  ``head_timeout_s``, answers 408 to bodies not complete within ``body_timeout_s``, closes
  keep-alive connections idle past uvicorn's keep-alive timeout and a client's oldest idle
  connections beyond ``max_idle_per_client``; connections beyond ``max_connections`` are closed
  at accept.

Everything here that touches uvicorn internals is checked at start-up by ``check_uvicorn``
(cli.main), against the exact uvicorn version pinned in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from . import config as C
from . import gateway as _gw  # the module, not its names: gateway.py may import this module first
from .errors import JSON_CT, error_body

__all__ = ["GatewayHttpProtocol", "HotCycle", "UVICORN_PIN", "check_uvicorn", "hook_asgi_disconnect"]

log = logging.getLogger("citadel_gateway")

UVICORN_PIN = "0.54.0"  # pyproject.toml pins exactly this; check_uvicorn refuses anything else

# Filled from gateway.py on the first connection (see _bind_gateway).
_HOT_URLS: dict[bytes, str] = {}
TOO_LARGE: object = None

# Connection phases, as the request parser sees them. The sweep's clock for HEAD and BODY starts
# when it first sees the phase (``since`` None until then): up to a second of slack, no clock
# read per request.
_HEAD = 0  # waiting for / reading a request head (the first one: since the connection opened)
_BODY = 1  # head complete, body not yet
_DONE = 2  # request complete: being answered, or idle keep-alive (idle_since set)
_LINGER = 3  # refused: answer written (or queued behind earlier answers), input read and dropped
_CLOSED = 4  # closing: input ignored

_LINGER_S = 2.0  # a refused connection drains what the client still sends for at most this long
_LINGER_BYTES = 1 << 20  # ... or this many bytes, whichever comes first
_DEFAULT_SERVER = C.Server()  # limits for apps that are not the gateway


def _bind_gateway() -> None:
    global TOO_LARGE
    TOO_LARGE = _gw.TOO_LARGE
    _HOT_URLS.update({p.encode(): p for p in _gw.HOT})


def _error(status: int, message: str, code: str) -> tuple[int, list, bytes]:
    return status, [JSON_CT], error_body(status, message, code)


class _Stop(Exception):
    """Raised from a parser callback to stop parsing: ``proto.refusal`` holds the answer."""


def hook_asgi_disconnect(receive, callback) -> bool:
    """Have ``callback()`` called as soon as the client of this ASGI request disconnects.

    ``receive`` is the ASGI receive callable. True when it belongs to a uvicorn request cycle on
    GatewayHttpProtocol (whose ``connection_lost`` calls the callback, once, if the response was
    not complete); False elsewhere (another server or protocol): the caller then has to watch
    ``receive`` for ``http.disconnect`` itself.
    """
    cycle = getattr(receive, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return False
    # on_response is the protocol's bound on_response_complete while the app runs
    if not isinstance(getattr(cycle.on_response, "__self__", None), GatewayHttpProtocol):
        return False
    cycle.citadel_on_disconnect = callback
    return True


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


class _Sweeper:
    """Every time limit of one server's connections, checked once a second (no timer per request).

    uvicorn arms a keep-alive timer after every response and cancels it on the next request's
    bytes; at thousands of requests per second that was ~5 µs per request. Here the protocol only
    records its phase (and stamps the time when a response completes); the sweep closes what is
    over its limit, up to a second or two late: heads (``head_timeout_s``), bodies
    (``body_timeout_s``, 408), idle keep-alive connections (uvicorn's ``timeout_keep_alive``, and a
    client's oldest idle ones beyond ``max_idle_per_client``) and lingering refused connections.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, gateway) -> None:
        self.loop = loop
        self.gateway = gateway
        self.conns: set[GatewayHttpProtocol] = set()
        self.handle: asyncio.TimerHandle | None = None
        self.rejected = 0  # connections closed at accept (max_connections) since the last report
        self.reported = 0.0

    def add(self, proto: GatewayHttpProtocol) -> None:
        self.conns.add(proto)
        if self.handle is None:
            self.handle = self.loop.call_later(1.0, self.sweep)

    def sweep(self) -> None:
        self.handle = None
        now = self.loop.time()
        gw = self.gateway
        srv = gw.state.cfg.server if gw is not None else _DEFAULT_SERVER
        head_t, body_t = srv.head_timeout_s, srv.body_timeout_s
        idle = []
        for p in tuple(self.conns):
            ph = p.phase
            if ph == _DONE:
                t = p.idle_since
                if t is None:
                    continue  # being answered
                if now - t >= p.timeout_keep_alive:
                    p.timeout_keep_alive_handler()
                else:
                    idle.append(p)
            elif ph < _DONE:
                if p.flow.read_paused:  # we stopped reading (pipelining, backpressure): not its fault
                    p.since = None
                    continue
                t = p.since
                if t is None:
                    p.since = now
                elif ph == _HEAD:
                    if now - t >= head_t:
                        p.head_timeout()
                elif now - t >= body_t:
                    p.body_timeout(body_t)
            elif ph == _LINGER:
                t = p.since
                if t is not None and now >= t:
                    p.raw_transport.close()
        if len(idle) > srv.max_idle_per_client:
            self._close_idle_beyond(idle, srv.max_idle_per_client)
        if self.rejected and now - self.reported >= 10:
            log.warning("closed %d connections at accept: over server.max_connections", self.rejected)
            self.rejected = 0
            self.reported = now
        if self.conns:
            self.handle = self.loop.call_later(1.0, self.sweep)

    @staticmethod
    def _close_idle_beyond(idle: list, keep: int) -> None:
        by_client: dict = {}
        for p in idle:
            by_client.setdefault(p.client_host, []).append(p)
        for ps in by_client.values():
            if len(ps) > keep:
                ps.sort(key=lambda p: p.idle_since)
                for p in ps[: len(ps) - keep]:  # the oldest idle ones
                    p.timeout_keep_alive_handler()


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the hot path and the hostile-client limits (module
    docstring). Also tells the gateway at once when a client disconnects, so the upstream request
    is aborted without a watcher task."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not _HOT_URLS:
            _bind_gateway()
        # build_app's App carries the gateway; any other app (tests, wrappers) gets plain uvicorn
        # plus the default limits.
        self.gateway = getattr(self.app, "gateway", None)
        self.raw_transport: asyncio.Transport | None = None
        self.idle_since: float | None = None
        self.phase = _HEAD
        self.since: float | None = None
        self.head_left: int | None = None  # head bytes the parser may still be fed (None: not in a head)
        self.content_length: bytes | None = None
        self.refusal: bytes | None = None
        self.linger_left = 0
        self.client_host: str | None = None
        sweeper = getattr(self.server_state, "citadel_sweeper", None)
        if sweeper is None:  # one per server (uvicorn's ServerState lives as long as it)
            sweeper = self.server_state.citadel_sweeper = _Sweeper(self.loop, self.gateway)
        self.sweeper = sweeper

    def _limits(self) -> C.Server:
        gw = self.gateway
        return gw.state.cfg.server if gw is not None else _DEFAULT_SERVER

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        srv = self._limits()
        if len(self.connections) >= srv.max_connections:
            self.phase = _CLOSED  # never registered anywhere: connection_lost has nothing to undo
            self.sweeper.rejected += 1
            transport.close()
            return
        super().connection_made(transport)
        self.raw_transport = transport
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self.client_host = self.client[0] if self.client else None
        self.max_url = srv.max_url_bytes
        self.max_headers = srv.max_header_count
        self.max_head = self.head_left = srv.max_head_bytes
        self.since = self.loop.time()  # the first head's clock starts now, not at its first byte
        self.sweeper.add(self)

    def connection_lost(self, exc) -> None:
        if self.raw_transport is None:
            return  # closed at accept (max_connections)
        self.phase = _CLOSED
        self.idle_since = None
        self.sweeper.conns.discard(self)
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

    def handle_websocket_upgrade(self) -> None:
        self.phase = _CLOSED  # the websocket protocol owns the transport from here on
        self.sweeper.conns.discard(self)
        super().handle_websocket_upgrade()

    # -- input -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.phase >= _LINGER:
            self._discard(len(data))
            return
        self.idle_since = None
        left = self.head_left
        if left is not None:  # in a head: never feed the parser more than its budget
            n = len(data)
            if n > left:
                self._feed_capped(data, left)
                return
            self.head_left = left - n
        self._feed(data)

    def _feed(self, data) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # also a callback's exception (_Stop: a refusal)
            if self.refusal is not None:
                self._refuse()
            else:
                self.phase = _CLOSED
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _feed_capped(self, data: bytes, left: int) -> None:
        """``data`` is more than the head in progress may still take: feed what it may take; the
        rest only if that completed the head."""
        self.head_left = 0
        self._feed(data[:left])
        rest = data[left:]
        if self.phase >= _LINGER:
            self._discard(len(rest))
        elif self.head_left == 0:  # the same head, still not complete: over max_head_bytes
            self.refusal = self._answer(*_error(431, f"request head over {self.max_head} bytes", "head_too_large"))
            self._refuse()
            self._discard(len(rest))
        else:
            self.data_received(rest)

    def _discard(self, n: int) -> None:
        if self.phase == _LINGER and self.since is not None:
            self.linger_left -= n
            if self.linger_left <= 0:
                self.raw_transport.close()

    # -- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        # uvicorn builds the ASGI scope here; we build it only for requests that take ASGI
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.content_length = None
        if self.phase != _HEAD:
            self.phase = _HEAD
            self.since = None  # the sweep starts this head's clock

    def on_url(self, url: bytes) -> None:
        u = self.url = self.url + url
        if len(u) > self.max_url:
            self._stop(414, f"request URL over {self.max_url} bytes", "url_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.content_length = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        h = self.headers
        h.append((name, value))
        if len(h) > self.max_headers:
            self._stop(431, f"more than {self.max_headers} request headers", "too_many_headers")

    def _stop(self, status: int, message: str, code: str) -> None:
        self.refusal = self._answer(*_error(status, message, code))
        raise _Stop

    def on_headers_complete(self) -> None:
        self.head_left = None
        self.phase = _BODY
        self.since = None
        parser = self.parser
        path = _HOT_URLS.get(self.url)
        gw = self.gateway
        if gw is not None:
            # The verdict on the head alone (auth, throttle, declared size): before any body
            # byte is read and before uvicorn could send "100 Continue".
            cl = self.content_length
            if cl is not None:
                try:
                    cl = int(cl)
                except ValueError:
                    cl = None
            verdict = gw.check_head(
                path if path is not None else self._path(),
                self.headers,
                self.client_host,
                cl,
                self.expect_100_continue,
            )
            if type(verdict) is tuple:
                self.refusal = self._answer(*verdict)
                raise _Stop
            if (
                path is not None
                and parser.get_method() == b"POST"
                and not self.expect_100_continue
                and parser.get_http_version() == "1.1"
                and (self.cycle is None or self.cycle.response_complete)
                and not parser.should_upgrade()
            ):
                self.cycle = HotCycle(
                    self, path, self.headers, parser.should_keep_alive(), gw.state.cfg.server.max_body_bytes, verdict
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

    def _path(self) -> str:
        """The request path as uvicorn puts it in the ASGI scope (without root_path)."""
        path = httptools.parse_url(self.url).path.decode("ascii")
        return urllib.parse.unquote(path) if "%" in path else path

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is not HotCycle:
            super().on_body(body)
        elif cycle.add(body):
            self._start_hot(cycle)  # over server.max_body_bytes: answer now (auth errors first, then 413)

    def on_message_complete(self) -> None:
        self.phase = _DONE
        self.head_left = self.max_head  # the next request's head
        cycle = self.cycle
        if type(cycle) is not HotCycle:
            super().on_message_complete()
        elif not cycle.started:
            self._start_hot(cycle)
        if cycle is not None and cycle.response_complete and not self.pipeline:
            self.idle_since = self.loop.time()  # answered before its body ended (early 413): idle now

    # -- output ----------------------------------------------------------------------------
    def _answer(self, status: int, headers, body: bytes) -> bytes:
        """A complete response that closes the connection."""
        parts = [STATUS_LINE[status]]
        for n, v in self.server_state.default_headers:
            parts += (n, b": ", v, b"\r\n")
        for n, v in headers:
            if n.lower() not in (b"content-length", b"connection", b"transfer-encoding"):
                parts += (n, b": ", v, b"\r\n")
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body)
        return b"".join(parts)

    def _refuse(self) -> None:
        """Answer ``self.refusal`` and close; the request's body is never read. Behind answers
        still being written (pipelining), it waits its turn in uvicorn's pipeline queue."""
        self.phase = _LINGER
        self.since = None
        self.head_left = None
        cycle = self.cycle
        if (cycle is not None and not cycle.response_complete) or self.pipeline:
            self.flow.pause_reading()
            self.pipeline.appendleft((None, self.refusal))  # on_response_complete writes it
            return
        self._write_refusal(self.refusal)

    def _write_refusal(self, data: bytes) -> None:
        """Write a final answer, shut down our side, then drain and drop what the client still
        sends for a short bounded time, so that it reads the answer instead of a reset."""
        self.phase = _LINGER
        t = self.raw_transport
        if t.is_closing():
            return
        self.transport._flush()  # a response head still held by the coalescer goes first
        t.write(data)
        self.linger_left = _LINGER_BYTES
        self.since = self.loop.time() + _LINGER_S
        self.flow.resume_reading()
        try:
            t.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            t.close()

    def head_timeout(self) -> None:
        self.phase = _CLOSED
        self.transport.close()

    def body_timeout(self, limit: float) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_started or self.pipeline:
            self.phase = _CLOSED
            self.transport.close()
            return
        # The app must not answer after us; an ASGI app waiting in receive() wakes to a disconnect.
        cycle.disconnected = True
        event = getattr(cycle, "message_event", None)
        if event is not None:
            event.set()
        self._write_refusal(self._answer(*_error(408, f"request body not received within {limit:g} s", "body_timeout")))

    # keep-alive: the sweeper instead of a timer per response (see _Sweeper)
    def _unset_keepalive_if_required(self) -> None:
        self.idle_since = None

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.raw_transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            if cycle is None:
                self._write_refusal(app)  # a refused request behind the one just answered
            else:
                self._start_asgi_task(cycle, app)
        elif self.phase == _DONE:
            self.idle_since = self.loop.time()

    def _start_hot(self, cycle: HotCycle) -> None:
        cycle.started = True
        task = self.loop.create_task(self._serve_hot(cycle))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # uvicorn's shutdown waits for these: in-flight requests drain

    async def _serve_hot(self, cycle: HotCycle) -> None:
        try:
            await self.gateway.serve("POST", cycle.path, cycle.headers, cycle.body(), cycle, cycle.req)
        finally:
            if not cycle.response_complete and not cycle.disconnected:
                # serve() always answers unless cancelled (forced shutdown): never leave a client hanging
                log.error("hot path ended without a complete response; closing the connection")
                self.raw_transport.close()


# -- start-up check of the uvicorn internals used above ---------------------------------------
# HttpToolsProtocol methods called or overridden here, and attributes its __init__ must set.
_PROTOCOL_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "eof_received",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "send_400_response",
    "handle_websocket_upgrade",
    "_should_upgrade",
    "_unsupported_upgrade_warning",
    "_unset_keepalive_if_required",
    "_start_asgi_task",
    "timeout_keep_alive_handler",
    "shutdown",
)
_PROTOCOL_ATTRS = (
    "app",
    "loop",
    "logger",
    "parser",
    "server_state",
    "connections",
    "tasks",
    "pipeline",
    "cycle",
    "headers",
    "scope",
    "expect_100_continue",
    "timeout_keep_alive",
    "flow",
    "transport",
    "server",
    "client",
    "scheme",
    "root_path",
    "asgi_version",
    "app_state",
)
_CYCLE_ATTRS = (
    "disconnected",
    "keep_alive",
    "response_started",
    "response_complete",
    "message_event",
    "on_response",
    "body",
    "more_body",
    "waiting_for_100_continue",
)
_CYCLE_METHODS = ("receive", "send", "run_asgi")
_FLOW_METHODS = ("drain", "pause_reading", "resume_reading")
_STATE_ATTRS = ("connections", "tasks", "default_headers", "total_requests")


def check_uvicorn() -> None:
    """Fail (RuntimeError naming what is missing) unless the installed uvicorn is the pinned
    version and has every internal this module relies on. Called by cli.main before serving."""
    import importlib.metadata

    import uvicorn
    from uvicorn.protocols.http import flow_control
    from uvicorn.server import ServerState

    missing: list[str] = []
    try:
        version = importlib.metadata.version("uvicorn")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(uvicorn, "__version__", "unknown")
    if version != UVICORN_PIN:
        missing.append(f"uvicorn {UVICORN_PIN} (installed: {version})")
    for name in _PROTOCOL_METHODS:
        if not callable(getattr(HttpToolsProtocol, name, None)):
            missing.append(f"HttpToolsProtocol.{name}()")
    for name in _CYCLE_METHODS:
        if not callable(getattr(RequestResponseCycle, name, None)):
            missing.append(f"RequestResponseCycle.{name}()")
    if not isinstance(STATUS_LINE, dict) or any(s not in STATUS_LINE for s in range(100, 600)):
        missing.append("httptools_impl.STATUS_LINE (status 100-599)")
    for name in _FLOW_METHODS:
        if not callable(getattr(flow_control.FlowControl, name, None)):
            missing.append(f"FlowControl.{name}()")

    # instance attributes: build the objects the way uvicorn does (nothing is started)
    async def _probe_app(scope, receive, send):  # pragma: no cover - never called
        pass

    try:
        cfg = uvicorn.Config(_probe_app, log_config=None, lifespan="off", http="httptools", loop="none")
        state = ServerState()
        missing += [f"ServerState.{n}" for n in _STATE_ATTRS if not hasattr(state, n)]
        proto = HttpToolsProtocol(cfg, state, {}, _loop=asyncio.new_event_loop())
        proto.loop.close()
        missing += [f"HttpToolsProtocol.{n}" for n in _PROTOCOL_ATTRS if not hasattr(proto, n)]

        class _T:
            def pause_reading(self):
                pass

            def resume_reading(self):
                pass

        flow = flow_control.FlowControl(_T())
        missing += [f"FlowControl.{n}" for n in ("read_paused", "write_paused") if not hasattr(flow, n)]
        cycle = RequestResponseCycle(
            scope={},
            transport=None,
            flow=flow,
            logger=log,
            access_logger=log,
            access_log=False,
            default_headers=[],
            message_event=None,
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )
        missing += [f"RequestResponseCycle.{n}" for n in _CYCLE_ATTRS if not hasattr(cycle, n)]
    except Exception as e:  # noqa: BLE001 - a changed signature is exactly what this reports
        missing.append(f"uvicorn's protocol/cycle constructors as in {UVICORN_PIN} ({type(e).__name__}: {e})")
    if missing:
        raise RuntimeError(
            "citadel_gateway.server relies on uvicorn internals that this installation lacks: "
            + "; ".join(missing)
            + f". Install uvicorn=={UVICORN_PIN} (pinned in pyproject.toml) or port server.py."
        )
