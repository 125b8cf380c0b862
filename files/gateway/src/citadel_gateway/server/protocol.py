"""GatewayHttpProtocol: uvicorn's protocol with the hot path and the limits (package docstring)."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import config as C
from ..context import HOT
from .cycle import HotCycle, _CoalescingTransport
from .refusal import RefusalMixin, _error
from .sweeper import _BODY, _CLOSED, _DEFAULT_SERVER, _DONE, _HEAD, _LINGER, _Sweeper

log = logging.getLogger("citadel_gateway")

_HOT_URLS = {p.encode(): p for p in HOT}  # the parser gives the URL as bytes
# Python 3.12+ can start a task eagerly: the request runs up to its upstream write inside this
# callback instead of one loop pass later (~10 us less per request at concurrency 1).
_EAGER = getattr(asyncio, "eager_task_factory", None)


class _Stop(Exception):
    """Raised from a parser callback to stop parsing: ``proto.refusal`` holds the answer."""


class GatewayHttpProtocol(RefusalMixin, HttpToolsProtocol):
    """uvicorn's httptools protocol plus the hot path and the hostile-client limits (package
    docstring; refusals and timeout answers in RefusalMixin). Also tells the gateway at once when a
    client disconnects, so the upstream request is aborted without a watcher task."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
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
        self.metrics_listener = False
        self.closing = False  # graceful shutdown under way: every answer closes the connection
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
        mp = srv.metrics_port  # which listener accepted this connection (uvicorn's self.server)
        self.metrics_listener = mp is not None and self.server is not None and self.server[1] == mp
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

    def shutdown(self) -> None:
        """uvicorn stops accepting: answer what is under way or arrives within a grace (_Sweeper)."""
        self.sweeper.shutdown(self)

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
                self.metrics_listener,
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
                keep_alive = parser.should_keep_alive() and not self.closing
                self.cycle = HotCycle(self, path, self.headers, keep_alive, gw.state.cfg.server.max_body_bytes, verdict)
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
        if self.closing and self.cycle is not None:
            self.cycle.keep_alive = False

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

    # -- output (refusals and timeouts: RefusalMixin) ---------------------------------------
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
        coro = self._serve_hot(cycle)
        task = _EAGER(self.loop, coro) if _EAGER is not None else self.loop.create_task(coro)
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
