"""The HTTP/1.1 edges of our server protocol (server.py): plain hot-path requests skip ASGI, the
odd ones take uvicorn's ASGI path; both must answer like any HTTP/1.1 server, on raw sockets."""

from __future__ import annotations

import json
import re
import socket
import time

from conftest import KEYS

BODY = json.dumps({"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]}).encode()


def post(path: str = "/v1/chat/completions", version: str = "1.1", extra: str = "", body: bytes = BODY) -> bytes:
    return (
        f"POST {path} HTTP/{version}\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def read_responses(sock: socket.socket, n: int, timeout: float = 5.0) -> list[tuple[int, dict, bytes]]:
    """Read n complete content-length responses (ours never chunk a non-streamed answer)."""
    sock.settimeout(timeout)
    buf = b""
    out = []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])}
            size = int(headers.get("content-length", "0"))
            if status == 100:
                out.append((100, headers, b""))
                buf = buf[end + 4 :]
                continue
            if len(buf) >= end + 4 + size:
                out.append((status, headers, buf[end + 4 : end + 4 + size]))
                buf = buf[end + 4 + size :]
                continue
        data = sock.recv(65536)
        assert data, f"connection closed after {len(out)} responses: {buf[-200:]!r}"
        buf += data
    return out


def test_keep_alive_and_pipelining_answer_in_order(cl):
    g = cl[0]
    with socket.create_connection(("127.0.0.1", g.port)) as sock:
        sock.sendall(post(extra="X-Request-Id: first\r\n"))
        [(s1, h1, _)] = read_responses(sock, 1)
        # two requests in one write: the second waits for the first (pipelining), answers in order
        sock.sendall(post(extra="X-Request-Id: second\r\n") + post(extra="X-Request-Id: third\r\n"))
        (s2, h2, b2), (s3, h3, _) = read_responses(sock, 2)
    assert (s1, s2, s3) == (200, 200, 200)
    assert [h["x-request-id"] for h in (h1, h2, h3)] == ["first", "second", "third"]
    assert json.loads(b2)["object"] == "chat.completion"


def test_http_1_0_gets_an_answer_and_a_close(cl):
    g = cl[0]
    with socket.create_connection(("127.0.0.1", g.port)) as sock:
        sock.sendall(post(version="1.0"))
        [(status, headers, body)] = read_responses(sock, 1)
        assert status == 200
        assert json.loads(body)["model"] == "chat-a"
        sock.settimeout(5)
        assert sock.recv(100) == b"", "HTTP/1.0 without keep-alive: the server closes"


def test_connection_close_is_honoured(cl):
    g = cl[0]
    with socket.create_connection(("127.0.0.1", g.port)) as sock:
        sock.sendall(post(extra="Connection: close\r\n"))
        [(status, headers, _)] = read_responses(sock, 1)
        assert status == 200
        assert headers.get("connection") == "close"
        sock.settimeout(5)
        assert sock.recv(100) == b""


def test_expect_100_continue(cl):
    g = cl[0]
    with socket.create_connection(("127.0.0.1", g.port)) as sock:
        head, body = post(extra="Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
        sock.sendall(head + b"\r\n\r\n")
        [(status, _, _)] = read_responses(sock, 1)
        assert status == 100
        sock.sendall(body)
        [(status, _, data)] = read_responses(sock, 1)
        assert status == 200
        assert json.loads(data)["object"] == "chat.completion"


def test_query_string_and_other_methods_take_the_asgi_path(cl):
    g = cl[0]
    with socket.create_connection(("127.0.0.1", g.port)) as sock:
        sock.sendall(post(path="/v1/chat/completions?trace=1"))
        [(status, _, _)] = read_responses(sock, 1)
        assert status == 200
        sock.sendall(b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        [(status, headers, data)] = read_responses(sock, 1)
        assert status == 405
        assert headers["allow"] == "POST"
        assert json.loads(data)["error"]["code"] == "method_not_allowed"


def test_idle_keep_alive_connection_is_closed(cl):
    """uvicorn's keep-alive timeout (5 s) holds on the idle sweeper (checked once a second)."""
    g = cl[0]
    with socket.create_connection(("127.0.0.1", g.port)) as sock:
        sock.sendall(post())
        read_responses(sock, 1)
        t0 = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(100) == b""
        waited = time.monotonic() - t0
    assert 4.5 < waited < 7.5, waited


def test_request_split_across_writes(cl):
    """Headers and body in pieces, as a slow client sends them: the hot path waits for all of it."""
    g = cl[0]
    raw = post()
    with socket.create_connection(("127.0.0.1", g.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(raw), 17):
            sock.sendall(raw[i : i + 17])
            time.sleep(0.002)
        [(status, headers, data)] = read_responses(sock, 1)
    assert status == 200
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", headers["x-request-id"])
    assert json.loads(data)["object"] == "chat.completion"


def test_body_over_limit_is_answered_before_it_ends(cl):
    """413 as soon as the body passes server.max_body_bytes, not after the client sent all of it;
    the rest is still read, so the connection stays usable."""
    g = cl[0]
    limit = 4 * 1024 * 1024  # the shared cluster's default server.max_body_bytes
    with socket.create_connection(("127.0.0.1", g.port)) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {2 * limit}\r\n\r\n"
        ).encode()
        sock.sendall(head + b" " * (limit + 65536))
        [(status, _, data)] = read_responses(sock, 1, timeout=10)
        assert status == 413
        assert json.loads(data)["error"]["code"] == "body_too_large"
        sock.sendall(b" " * (limit - 65536))  # the rest of the declared body
        sock.sendall(post())
        [(status, _, _)] = read_responses(sock, 1, timeout=10)
        assert status == 200
