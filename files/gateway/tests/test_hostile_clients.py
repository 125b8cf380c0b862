"""Hostile clients against a real gateway process on raw sockets (issue 11: nothing for free
before authentication; uvicorn's limits). The server package does the work, ``Gateway.check_head`` the
verdicts. Outcomes and counts are asserted; time only as generous upper bounds."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import time
from pathlib import Path

import pytest
from citadel_gateway import server as S
from conftest import Stub, base_config, wait_ready
from rawhttp import AUTH, BODY, post, read_responses

MiB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------------
def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_answers(sock: socket.socket, n: int, timeout: float = 10.0) -> list[tuple[int, dict, bytes]]:
    return read_responses(sock, n, timeout, exact=True)


def read_answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """The one response to what was sent (a 100 Continue counts as one)."""
    return read_answers(sock, 1, timeout)[0]


def ended(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True when the server closes the connection (EOF or reset) within timeout; data is dropped."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def is_closed_now(sock: socket.socket) -> bool:
    """Non-blocking: has the server closed this (otherwise silent) connection?"""
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return False
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def wait_closed(socks: list[socket.socket], want: int, timeout: float) -> set[socket.socket]:
    """Poll until at least ``want`` of ``socks`` were closed by the server (or timeout)."""
    closed: set[socket.socket] = set()
    end = time.monotonic() + timeout
    while len(closed) < want and time.monotonic() < end:
        open_ = [s for s in socks if s not in closed]
        r, _, _ = select.select(open_, [], [], 0.2)
        closed.update(s for s in r if is_closed_now(s))
    return closed


def vm_rss_kib(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1))


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def assert_error(status: int, headers: dict, body: bytes, want: int, code: str | None = None) -> dict:
    assert status == want, (status, body)
    assert headers.get("connection") == "close"
    e = json.loads(body)["error"]
    assert set(e) >= {"message", "type", "code"}
    if code is not None:
        assert e["code"] == code
    return e


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstreams():
    made = [Stub(["chat-a"]), Stub(["embed-a"])]
    try:
        yield made
    finally:
        for s in made:
            s.kill()


@pytest.fixture
def gw(upstreams, gateway):
    """A gateway of its own with the given server.* settings, in front of the module's stubs."""

    def make(auth=None, **server):
        chat, embed = upstreams
        cfg = base_config([chat.url], [embed.url], server=dict(server))
        cfg["auth"].update(auth or {})
        g = gateway(cfg)
        wait_ready(g)
        return g

    return make


# -- slow clients -------------------------------------------------------------------------------
def test_slowloris_heads_are_closed_while_real_clients_are_served(gw):
    g = gw(head_timeout_s=1)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 10".encode()
    slow = [connect(g.port) for _ in range(100)]
    silent = [connect(g.port) for _ in range(10)]  # connect and never send a byte
    closed: set[socket.socket] = set()
    sent = 0
    served = []
    end = time.monotonic() + 30
    while len(closed) < len(slow) + len(silent) and time.monotonic() < end:
        for s in slow:
            if s in closed:
                continue
            try:
                s.send(head[sent : sent + 1])  # a byte every 0.5 s, half a head at most
            except OSError:
                closed.add(s)
        sent += 1
        assert sent < len(head), "the heads were never cut off"
        if sent in (1, 3):  # while every slow connection is open: a real client is served
            served.append(g.chat()[0])
        closed |= wait_closed([s for s in slow + silent if s not in closed], len(slow) + len(silent), 0.5)
    assert served == [200, 200]
    assert len(closed & set(slow)) == 100
    assert len(closed & set(silent)) == 10
    assert g.chat()[0] == 200
    for s in slow + silent:
        s.close()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat/completions?trace=1"])
def test_body_not_complete_in_time_gets_408(gw, path):
    """Hot path and ASGI path (a query string takes ASGI): 10 of 1000 declared bytes, then silence."""
    g = gw(body_timeout_s=1)
    with connect(g.port) as s:
        s.sendall(post(path, body=b"x" * 1000)[:-990])
        t0 = time.monotonic()
        e = assert_error(*read_answer(s, timeout=15), 408, "body_timeout")
        assert e["type"] == "invalid_request_error"
        assert ended(s)
        assert time.monotonic() - t0 < 15
    assert g.chat()[0] == 200


# -- request heads over the limits (the shared cluster's defaults: 8192 / 100 / 32768) -----------
@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions"])
def test_long_url_gets_414(cl, path):
    g = cl[0]
    with connect(g.port) as s:
        s.sendall(f"GET {path}?q={'a' * 16384} HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode())
        e = assert_error(*read_answer(s), 414, "url_too_long")
        assert e["type"] == "invalid_request_error"
        assert ended(s)
    assert g.chat()[0] == 200


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ("".join(f"X-H{i}: {i}\r\n" for i in range(200)), "too_many_headers"),
        (f"X-Big: {'b' * 65536}\r\n", "head_too_large"),
    ],
    ids=["200-headers", "one-64KiB-header"],
)
def test_large_heads_get_431(cl, extra, code):
    g = cl[0]
    with connect(g.port) as s:
        s.sendall(post(extra=extra))
        e = assert_error(*read_answer(s), 431, code)
        assert e["type"] == "invalid_request_error"
        assert ended(s)
    assert g.chat()[0] == 200


def test_huge_header_costs_no_cpu(cl):
    """A 32 MiB header: cut off at the head limit (the parser is never fed more), so the gateway
    spends next to nothing on it (unbounded, httptools' concatenation took ~2 s of CPU)."""
    g = cl[0]
    before = cpu_s(g.proc.pid)
    with connect(g.port) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(32):
                s.sendall(b"b" * MiB)
        except OSError:
            pass  # the gateway answered 431 and closed; it stops reading after a short drain
        assert ended(s)
    assert g.chat()[0] == 200
    assert cpu_s(g.proc.pid) - before < 1.0


# -- connection caps ----------------------------------------------------------------------------
def test_connections_beyond_max_connections_are_closed_at_once(gw):
    g = gw(max_connections=20, head_timeout_s=60)
    socks = [connect(g.port) for _ in range(40)]
    closed = wait_closed(socks, 20, timeout=10)
    assert len(closed) >= 20, len(closed)
    kept = [s for s in socks if s not in closed]
    assert 19 <= len(kept) <= 20  # (the fixture's readiness connection may still count for a moment)
    assert not wait_closed(kept, 1, timeout=1)  # the accepted ones stay
    kept[0].sendall(post())
    assert read_answer(kept[0])[0] == 200  # and are served
    for s in socks:
        s.close()
    end = time.monotonic() + 10
    while True:  # once the server has seen those closes, new connections are served again
        try:
            status = g.chat()[0]
            break
        except OSError:
            assert time.monotonic() < end
            time.sleep(0.1)
    assert status == 200


def test_idle_connections_per_client_are_capped(gw):
    """20 keep-alive connections from 127.0.0.1, each answered once, then kept busy enough that
    the keep-alive timeout never closes them: the cap closes the oldest idle ones, 5 stay."""
    g = gw(max_idle_per_client=5)
    ping = f"GET /health HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n".encode()
    socks = [connect(g.port) for _ in range(20)]
    for s in socks:
        s.sendall(ping)
        assert read_answer(s)[0] == 200
    alive = list(socks)
    closed = 0
    end = time.monotonic() + 30
    while len(alive) > 5 and time.monotonic() < end:
        for s in list(alive):  # a round takes well under the 5 s keep-alive timeout
            try:
                if is_closed_now(s):
                    raise ConnectionResetError
                s.sendall(ping)
                assert read_answer(s, timeout=10)[0] == 200
            except (OSError, AssertionError):
                alive.remove(s)
                closed += 1
            time.sleep(0.02)
    assert len(alive) <= 5, len(alive)
    assert closed >= 15
    for s in socks:
        s.close()


# -- nothing read before the verdict ------------------------------------------------------------
def test_keyless_large_bodies_are_refused_unread(gw):
    """40 keyless connections declaring 4 MiB each: 401 from the head (before a body byte was
    sent), closed; the gateway's memory stays flat (it used to buffer every body first)."""
    g = gw(auth={"failed_burst": 1000})  # 401 each time, not the failed-auth throttle's 429
    pid = g.proc.pid
    for _ in range(3):
        assert g.chat()[0] == 200
        assert g.chat(key=None)[0] == 401
    rss0 = vm_rss_kib(pid)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {4 * MiB}\r\n\r\n"
    ).encode()
    socks = [connect(g.port) for _ in range(40)]
    for s in socks:
        s.sendall(head)
    for s in socks:
        assert_error(*read_answer(s), 401)
    for s in socks:
        try:
            s.settimeout(10)
            s.sendall(b" " * (4 * MiB))
        except OSError:
            pass  # drained for a moment, then closed
    assert sum(ended(s) for s in socks) == 40
    rss1 = vm_rss_kib(pid)
    assert rss1 - rss0 < 20 * 1024, (rss0, rss1)
    for s in socks:
        s.close()
    assert g.chat()[0] == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings?trace=1"])
@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
def test_declared_body_over_limit_gets_413_before_the_body(cl, path, expect):
    """Hot path and ASGI path; with Expect: 100-continue the answer is the 413, never a 100."""
    g = cl[0]
    extra = "Expect: 100-continue\r\n" if expect else ""
    with connect(g.port) as s:
        s.sendall(post(path, extra=extra, body=b"x" * (8 * MiB))[: -8 * MiB])  # the head only
        assert_error(*read_answer(s), 413, "body_too_large")
        assert ended(s)


def test_expect_100_without_key_gets_401_not_100(cl):
    g = cl[0]
    with connect(g.port) as s:
        s.sendall(post(auth="", extra="Expect: 100-continue\r\n")[: -len(BODY)])
        assert_error(*read_answer(s), 401)
        assert ended(s)


def test_pipelined_refusal_waits_for_the_answer_before_it(cl):
    """A refused request behind one being served: the first is answered whole, then the refusal."""
    g = cl[0]
    with connect(g.port) as s:
        s.sendall(post(extra="X-Request-Id: first\r\n") + post(auth=""))
        (status, headers, body), refused = read_answers(s, 2)
        assert (status, headers["x-request-id"]) == (200, "first")
        assert json.loads(body)["object"] == "chat.completion"
        assert_error(*refused, 401)
        assert ended(s)


# -- uvicorn internals ----------------------------------------------------------------------------
def test_uvicorn_is_pinned_and_checked():
    S.check_uvicorn()  # the installed uvicorn has everything the server package uses
    root = Path(__file__).resolve().parents[1]
    assert f'"uvicorn=={S.UVICORN_PIN}"' in (root / "pyproject.toml").read_text()
    assert f"\nuvicorn=={S.UVICORN_PIN}\n" in (root / "requirements.lock").read_text()


def test_uvicorn_check_names_what_is_missing(monkeypatch):
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    monkeypatch.setattr(S.compat, "UVICORN_PIN", "0.0.1")  # check_uvicorn reads it there
    monkeypatch.delattr(HttpToolsProtocol, "send_400_response")
    with pytest.raises(RuntimeError) as e:
        S.check_uvicorn()
    assert "uvicorn 0.0.1 (installed: " in str(e.value)
    assert "HttpToolsProtocol.send_400_response()" in str(e.value)


def test_hook_asgi_disconnect_only_on_our_protocol():
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    async def receive():  # pragma: no cover - never awaited
        return {}

    assert S.hook_asgi_disconnect(receive, lambda: None) is False
    cycle = RequestResponseCycle.__new__(RequestResponseCycle)
    cycle.on_response = lambda: None  # a cycle of some other protocol
    assert S.hook_asgi_disconnect(cycle.receive, lambda: None) is False
