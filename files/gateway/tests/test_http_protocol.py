"""The HTTP/1.1 edges of our server protocol (server/): plain hot-path requests skip ASGI, the
odd ones take uvicorn's ASGI path; both must answer like any HTTP/1.1 server, on raw sockets."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from conftest import KEYS
from rawhttp import post, read_responses


@pytest.fixture
def sock(cl):
    """A raw connection to the shared cluster's gateway."""
    with socket.create_connection(("127.0.0.1", cl[0].port)) as s:
        yield s


def ask(sock: socket.socket, raw: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send raw bytes, read one response."""
    sock.sendall(raw)
    [answer] = read_responses(sock, 1, timeout)
    return answer


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    return sock.recv(100) == b""


def test_keep_alive_and_pipelining_answer_in_order(sock):
    s1, h1, _ = ask(sock, post(extra="X-Request-Id: first\r\n"))
    # two requests in one write: the second waits for the first (pipelining), answers in order
    sock.sendall(post(extra="X-Request-Id: second\r\n") + post(extra="X-Request-Id: third\r\n"))
    (s2, h2, b2), (s3, h3, _) = read_responses(sock, 2)
    assert (s1, s2, s3) == (200, 200, 200)
    assert [h["x-request-id"] for h in (h1, h2, h3)] == ["first", "second", "third"]
    assert json.loads(b2)["object"] == "chat.completion"


def test_http_1_0_gets_an_answer_and_a_close(sock):
    status, _, body = ask(sock, post(version="1.0"))
    assert status == 200
    assert json.loads(body)["model"] == "chat-a"
    assert closed_by_server(sock), "HTTP/1.0 without keep-alive: the server closes"


def test_connection_close_is_honoured(sock):
    status, headers, _ = ask(sock, post(extra="Connection: close\r\n"))
    assert status == 200
    assert headers.get("connection") == "close"
    assert closed_by_server(sock)


def test_expect_100_continue(sock):
    head, body = post(extra="Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
    assert ask(sock, head + b"\r\n\r\n")[0] == 100
    status, _, data = ask(sock, body)
    assert status == 200
    assert json.loads(data)["object"] == "chat.completion"


def test_query_string_and_other_methods_take_the_asgi_path(sock):
    assert ask(sock, post(path="/v1/chat/completions?trace=1"))[0] == 200
    # with the key: the key is judged first (check_head), the method after it
    get = f"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n\r\n"
    status, headers, data = ask(sock, get.encode())
    assert status == 405
    assert headers["allow"] == "POST"
    assert json.loads(data)["error"]["code"] == "method_not_allowed"


def test_idle_keep_alive_connection_is_closed(sock):
    """uvicorn's keep-alive timeout (5 s) holds on the idle sweeper (checked once a second)."""
    ask(sock, post())
    t0 = time.monotonic()
    assert closed_by_server(sock, timeout=10)
    waited = time.monotonic() - t0
    assert 4.5 < waited < 7.5, waited


def test_request_split_across_writes(sock):
    """Headers and body in pieces, as a slow client sends them: the hot path waits for all of it."""
    raw = post()
    pieces = [raw[i : i + 17] for i in range(0, len(raw), 17)]
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in pieces[:-1]:
        sock.sendall(piece)
        time.sleep(0.002)
    status, headers, data = ask(sock, pieces[-1])
    assert status == 200
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", headers["x-request-id"])
    assert json.loads(data)["object"] == "chat.completion"


def test_declared_body_over_limit_is_refused_from_the_head(sock):
    """A Content-Length over server.max_body_bytes: 413 from the head alone, before a body byte
    is sent; the body is never read, so the connection is closed."""
    limit = 4 * 1024 * 1024  # the shared cluster's default server.max_body_bytes
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {2 * limit}\r\n\r\n"
    ).encode()
    status, headers, data = ask(sock, head, timeout=10)
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(data)["error"]["code"] == "body_too_large"
    assert closed_by_server(sock)


def test_chunked_body_over_limit_is_answered_before_it_ends(sock):
    """Without a Content-Length the size shows only as the body arrives: 413 as soon as it passes
    server.max_body_bytes, not after the client sent all of it; the rest is still read, so the
    connection stays usable."""
    limit = 4 * 1024 * 1024
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"%x\r\n%b\r\n" % (65536, b" " * 65536)
    status, _, data = ask(sock, head + piece * (limit // 65536 + 1), timeout=10)
    assert status == 413
    assert json.loads(data)["error"]["code"] == "body_too_large"
    sock.sendall(piece * 8 + b"0\r\n\r\n")  # the rest of the body
    assert ask(sock, post(), timeout=10)[0] == 200
