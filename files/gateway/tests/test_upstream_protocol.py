"""upstream.Pool against a scripted upstream on loopback (fault_upstream.py): 1xx responses, when a
connection may be reused, one send per request() call, the body cap, the idle TTL.

Each test runs on the default asyncio loop and on uvloop (what the gateway runs on). Assertions
are on counts the server keeps (connections accepted, requests read, who closed what) and on
outcomes; time only appears as generous upper bounds (and as sleeps that must exceed a TTL).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import tracemalloc

import pytest
import uvloop
from citadel_gateway.upstream import (
    Cancel,
    ConnectError,
    Pool,
    Refused,
    ResponseTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from conftest import free_port
from fault_upstream import FaultUpstream, Request, response

WAIT = 10.0  # upper bound for anything that should happen at once


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    factory = None if request.param == "asyncio" else uvloop.new_event_loop

    def go(fn, *args):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(fn(*args), 60))

    return go


@pytest.fixture
def upstream():
    made: list[FaultUpstream] = []

    def make(handler, **kw) -> FaultUpstream:
        s = FaultUpstream(handler, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def head(rid: str) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: up\r\nX-Request-Id: {rid}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    ).encode()


def answer(req: Request, headers: str = "") -> bytes:
    """The answer to this request and no other: it names the request id."""
    return response(json.dumps({"rid": req.header("x-request-id")}).encode(), headers=headers)


def echo(req: Request) -> None:
    req.conn.send(answer(req))


async def send(pool: Pool, port: int, rid: str, cancel=None, timeout: float = WAIT):
    loop = asyncio.get_running_loop()
    return await pool.request(("127.0.0.1", port, None), head(rid), b"{}", loop.time() + timeout, cancel)


async def ask(pool: Pool, port: int, rid: str, limit: int = 1 << 20):
    """One request read to its end: (response, body as bytes)."""
    r = await send(pool, port, rid)
    try:
        data = await r.read(limit)
    finally:
        r.close()
    return r, bytes(data)


def rid_of(body: bytes) -> str:
    return json.loads(body)["rid"]


# -- 1xx ---------------------------------------------------------------------------------------


def test_early_hints_are_skipped_and_the_connection_stays_in_step(run, upstream):
    def handler(req: Request) -> None:
        req.conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        req.conn.send(answer(req))  # a separate write: the client must wait for it

    srv = upstream(handler)

    async def main():
        pool = Pool()
        r1, b1 = await ask(pool, srv.port, "first")
        r2, b2 = await ask(pool, srv.port, "second")
        pool.close()
        return r1, b1, r2, b2

    r1, b1, r2, b2 = run(main)
    assert (r1.status, rid_of(b1)) == (200, "first")
    assert all(k.lower() != b"link" for k, _ in r1.headers), "the 103's headers are not the answer's"
    assert r1.content_length == len(b1)
    assert (r2.status, rid_of(b2)) == (200, "second"), "the second request got its own answer"
    assert srv.accepted == 1, "a clean keep-alive answer after a 1xx is still reused"


@pytest.mark.parametrize("writes", [1, 2])
def test_unsolicited_100_continue_is_skipped(run, upstream, writes):
    def handler(req: Request) -> None:
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        if writes == 1:  # both responses in one buffer: parsed in one go
            req.conn.send(interim + answer(req))
        else:
            req.conn.send(interim)
            req.conn.send(answer(req))

    srv = upstream(handler)

    async def main():
        pool = Pool()
        got = [await ask(pool, srv.port, rid) for rid in ("a", "b", "c")]
        pool.close()
        return got

    got = run(main)
    assert [(r.status, rid_of(b)) for r, b in got] == [(200, "a"), (200, "b"), (200, "c")]
    assert srv.accepted == 1


def test_101_fails_the_request_and_closes_the_connection(run, upstream):
    def handler(req: Request) -> None:
        if req.conn.index == 0:
            req.conn.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        else:
            echo(req)

    srv = upstream(handler)

    async def main():
        pool = Pool()
        with pytest.raises(UpstreamError, match="101") as e:
            await send(pool, srv.port, "up")
        after = await ask(pool, srv.port, "next")
        pool.close()
        return e.value, after

    err, (r, body) = run(main)
    assert not isinstance(err, ConnectError), "the request did reach the upstream"
    assert srv.conns[0].peer_closed.wait(WAIT), "the client closed the upgraded connection"
    assert (r.status, rid_of(body)) == (200, "next")
    assert srv.accepted == 2


# -- when a connection is not reused -------------------------------------------------------------


def test_body_delimited_by_close_is_read_to_the_close_and_not_reused(run, upstream):
    body = b'{"until":"close"}' * 1000

    def handler(req: Request) -> None:
        if req.conn.index == 0:
            req.conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)
            req.conn.close()
        else:
            echo(req)

    srv = upstream(handler)

    async def main():
        pool = Pool()
        first = await ask(pool, srv.port, "eof")
        second = await ask(pool, srv.port, "next")
        pool.close()
        return first, second

    (r1, b1), (r2, b2) = run(main)
    assert (r1.status, r1.content_length, b1) == (200, None, body), "the close ends the body: not an error"
    assert rid_of(b2) == "next"
    assert srv.accepted == 2


def test_bytes_after_a_complete_response_mean_the_connection_is_dropped(run, upstream):
    def handler(req: Request) -> None:
        if req.conn.index == 0:  # one write: the answer and a stray second answer behind it
            req.conn.send(answer(req) + response(b'{"rid":"stolen"}'))
        else:
            echo(req)

    srv = upstream(handler)

    async def main():
        pool = Pool()
        got = [await ask(pool, srv.port, rid) for rid in ("first", "second")]
        pool.close()
        return got

    (r1, b1), (r2, b2) = run(main)
    assert rid_of(b1) == "first"
    assert rid_of(b2) == "second", "the stray bytes were never taken as the next answer"
    assert srv.conns[0].peer_closed.wait(WAIT), "the client closed the connection in doubt"
    assert srv.accepted == 2


def test_connection_close_is_honoured(run, upstream):
    def handler(req: Request) -> None:  # says close, but leaves the socket open: the client must close it
        req.conn.send(answer(req, "Connection: close\r\n"))

    srv = upstream(handler)

    async def main():
        pool = Pool()
        got = [await ask(pool, srv.port, rid) for rid in ("a", "b")]
        pool.close()
        return got

    got = run(main)
    assert [rid_of(b) for _, b in got] == ["a", "b"]
    assert srv.conns[0].peer_closed.wait(WAIT)
    assert srv.accepted == 2


def test_response_not_read_to_its_end_is_not_reused(run, upstream):
    def handler(req: Request) -> None:
        if req.conn.index == 0:
            req.conn.send(response(b"x" * (4 << 20)))
        else:
            echo(req)

    srv = upstream(handler)

    async def main():
        pool = Pool()
        r = await send(pool, srv.port, "big")
        r.close()  # head only: the body is not wanted
        second = await ask(pool, srv.port, "next")
        pool.close()
        return second

    _, body = run(main)
    assert rid_of(body) == "next"
    assert srv.conns[0].peer_closed.wait(WAIT)
    assert srv.accepted == 2


def _never_answer(req: Request) -> None:
    pass  # read the request, say nothing, keep the connection open


def test_unanswered_request_times_out_and_its_connection_is_closed(run, upstream):
    srv = upstream(_never_answer)

    async def main():
        pool = Pool()
        with pytest.raises(UpstreamTimeout):
            await send(pool, srv.port, "slow", timeout=0.2)
        pool.close()

    run(main)
    assert srv.conns[0].peer_closed.wait(WAIT)
    assert srv.requests == 1


def test_cancel_aborts_the_request_in_flight_and_closes_its_connection(run, upstream):
    srv = upstream(_never_answer)

    async def main():
        pool = Pool()
        cancel = Cancel()
        task = asyncio.create_task(send(pool, srv.port, "gone", cancel))
        for _ in range(int(WAIT / 0.01)):
            if srv.requests:
                break
            await asyncio.sleep(0.01)
        cancel.fire()
        with pytest.raises(UpstreamError, match="cancelled"):
            await task
        pool.close()

    run(main)
    assert srv.conns[0].peer_closed.wait(WAIT)


def test_a_late_cancel_does_not_abort_the_next_request_on_the_connection(run, upstream):
    go = threading.Event()

    def handler(req: Request) -> None:
        if req.header("x-request-id") == "second":
            go.wait(WAIT)  # stays in flight until the first request's cancel has fired
        echo(req)

    srv = upstream(handler)

    async def main():
        pool = Pool()
        first = Cancel()
        r = await send(pool, srv.port, "first", first)
        await r.read(1 << 20)
        r.close()  # the connection goes back to the pool
        task = asyncio.create_task(ask(pool, srv.port, "second"))
        for _ in range(int(WAIT / 0.01)):
            if srv.requests == 2:
                break
            await asyncio.sleep(0.01)
        first.fire()  # the first client leaves only now
        go.set()
        _, body = await task
        pool.close()
        return body

    assert rid_of(run(main)) == "second"
    assert srv.accepted == 1


# -- one send per request() call -----------------------------------------------------------------


def test_upstream_that_reads_and_closes_gets_exactly_one_send_per_call(run, upstream):
    mode = {"drop": False}

    def handler(req: Request) -> None:
        if mode["drop"]:
            req.conn.close()  # read the request, close without answering
        else:
            echo(req)

    srv = upstream(handler)

    async def main():
        pool = Pool()
        await asyncio.gather(*(ask(pool, srv.port, f"warm{i}") for i in range(4)))
        assert srv.accepted == 4, "four idle keep-alive connections in the pool"
        mode["drop"] = True
        errors, counts = [], []
        for rid in ("x", "y"):
            before = srv.requests
            with pytest.raises(UpstreamError) as e:
                await send(pool, srv.port, rid)
            counts.append(srv.requests - before)
            errors.append(e.value)
        fresh = Pool()  # and on a new connection
        before = srv.requests
        with pytest.raises(UpstreamError) as e:
            await send(fresh, srv.port, "z")
        counts.append(srv.requests - before)
        errors.append(e.value)
        pool.close()
        fresh.close()
        return errors, counts

    errors, counts = run(main)
    assert counts == [1, 1, 1], "each request() call sent the request once, reused socket or not"
    for e in errors:
        assert not isinstance(e, ConnectError), "it did reach the upstream: not 'safe, never sent'"
        assert "without responding" in str(e)
        assert "may have reached" in str(e)


def test_refused_is_a_connect_error(run):
    port = free_port()

    async def main():
        pool = Pool()
        with pytest.raises(Refused):
            await send(pool, port, "nobody")
        pool.close()

    run(main)


# -- the body cap ---------------------------------------------------------------------------------

MiB = 1 << 20
PIECE = b"x" * (64 * 1024)


def _chunked(total: int):
    def handler(req: Request) -> None:
        c = req.conn
        if not c.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"):
            return
        frame = b"%x\r\n%b\r\n" % (len(PIECE), PIECE)
        for _ in range(total // len(PIECE)):
            if not c.send(frame):
                return  # the client hung up: stop
        c.send(b"0\r\n\r\n")

    return handler


def _known_length(total: int):
    def handler(req: Request) -> None:
        c = req.conn
        if not c.send(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n".encode()):
            return
        for _ in range(total // len(PIECE)):
            if not c.send(PIECE):
                return

    return handler


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_16mib_body_with_1mib_limit_stops_early(run, upstream, framing):
    size, limit = 16 * MiB, 1 * MiB
    srv = upstream(_chunked(size) if framing == "chunked" else _known_length(size), sndbuf=64 * 1024)

    async def main():
        pool = Pool()
        r = await send(pool, srv.port, "big")
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLarge) as e:
                await r.read(limit)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            r.close()
        pool.close()
        return r, e.value, peak

    r, err, peak = run(main)
    assert srv.conns[0].peer_closed.wait(WAIT), "the connection was dropped, not drained"
    assert peak < limit + 3 * MiB, f"held {peak} bytes at most for a {size} byte body"
    if framing == "chunked":
        assert r.content_length is None
        assert limit < err.received <= limit + 512 * 1024, "gave up as soon as the limit was passed"
    else:
        assert r.content_length == size
        assert (err.received, err.declared) == (0, size), "known too large from the head: nothing read"


def test_read_limit_is_inclusive_and_a_multi_part_body_arrives_whole(run, upstream):
    size = 5 * len(PIECE)
    srv = upstream(_chunked(size))

    async def main():
        pool = Pool()
        _, whole = await ask(pool, srv.port, "a", limit=size)
        with pytest.raises(ResponseTooLarge):
            await ask(pool, srv.port, "b", limit=size - 1)
        pool.close()
        return whole

    assert run(main) == PIECE * 5
    assert srv.accepted == 1, "the body read to its end left the connection reusable"
    assert srv.conns[0].peer_closed.wait(WAIT), "the over-limit response dropped it"


# -- idle TTL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ttl", "connections"), [(0.05, 2), (60.0, 1)])
def test_idle_connection_older_than_ttl_is_not_reused(run, upstream, ttl, connections):
    srv = upstream(echo)

    async def main():
        pool = Pool(idle_ttl_s=ttl)
        await ask(pool, srv.port, "a")
        await asyncio.sleep(0.3)  # idle longer than 0.05 s (for sure), far shorter than 60 s
        _, body = await ask(pool, srv.port, "b")
        pool.close()
        return body

    assert rid_of(run(main)) == "b"
    assert srv.accepted == connections
    if connections == 2:
        assert srv.conns[0].peer_closed.wait(WAIT), "the stale idle connection was closed by the client"


def test_fault_upstream_counts_are_what_the_tests_rely_on(upstream):
    """The instrument itself: one plain client, two requests on one connection."""
    srv = upstream(echo)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT) as s:
        for rid in ("1", "2"):
            s.sendall(head(rid) + b"{}")
            data = b""
            while not data.endswith(b"}"):
                data += s.recv(65536)
            assert data.endswith(json.dumps({"rid": rid}).encode())
    assert srv.conns[0].peer_closed.wait(WAIT)
    assert (srv.accepted, srv.requests) == (1, 2)
