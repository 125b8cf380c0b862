"""The connection phases, the once-a-second sweep that enforces every time limit, and the grace a
connection gets at shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .. import config as C

if TYPE_CHECKING:
    from .protocol import GatewayHttpProtocol

log = logging.getLogger("citadel_gateway")

# Connection phases, as the request parser sees them. The sweep's clock for HEAD and BODY starts
# when it first sees the phase (``since`` None until then): up to a second of slack, no clock
# read per request.
_HEAD = 0  # waiting for / reading a request head (the first one: since the connection opened)
_BODY = 1  # head complete, body not yet
_DONE = 2  # request complete: being answered, or idle keep-alive (idle_since set)
_LINGER = 3  # refused: answer written (or queued behind earlier answers), input read and dropped
_CLOSED = 4  # closing: input ignored

_DEFAULT_SERVER = C.Server()  # limits for apps that are not the gateway

# Graceful shutdown: how long a connection with no request under way may still send one. A client
# sends its request right after connecting; one accepted just before the shutdown (or an idle
# keep-alive one) would get a reset where it expects an answer if it were closed at once.
_SHUTDOWN_GRACE_S = 1.0


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
        self.waiting: set[GatewayHttpProtocol] = set()  # shutdown: idle connections in their grace

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

    def shutdown(self, p: GatewayHttpProtocol) -> None:
        """uvicorn's graceful shutdown of one connection (it has stopped accepting). uvicorn would
        close every connection not being answered, also one whose request is on its way or half
        read; here a request under way or arriving within the grace is answered with
        ``Connection: close``, and only a connection still idle after the grace is closed."""
        p.closing = True  # the protocol answers every request from now on with Connection: close
        if p.phase >= _LINGER:
            return
        cycle = p.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
        elif _idle(p):
            self.waiting.add(p)
            if len(self.waiting) == 1:
                self.loop.call_later(_SHUTDOWN_GRACE_S, self._end_grace)

    def _end_grace(self) -> None:
        for p in self.waiting:
            if p.phase < _LINGER and _idle(p):
                p.timeout_keep_alive_handler()
        self.waiting.clear()

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


def _idle(p: GatewayHttpProtocol) -> bool:
    """No request under way: not a byte of a head yet (a fresh connection, or the next request of
    a keep-alive one), nothing being answered."""
    if p.pipeline or (p.cycle is not None and not p.cycle.response_complete):
        return False
    return p.phase == _DONE or (p.phase == _HEAD and p.head_left == p.max_head)
