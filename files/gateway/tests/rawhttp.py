"""HTTP/1.1 on raw sockets for the protocol tests: requests written byte by byte, answers read
without a client library's forgiveness."""

from __future__ import annotations

import json
import socket

from conftest import KEYS

BODY = json.dumps({"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]}).encode()
AUTH = f"Authorization: Bearer {KEYS['ops']}\r\n"


def post(
    path: str = "/v1/chat/completions", version: str = "1.1", extra: str = "", body: bytes = BODY, auth: str = AUTH
) -> bytes:
    return (
        f"POST {path} HTTP/{version}\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def read_responses(sock: socket.socket, n: int, timeout: float = 10.0, exact: bool = False) -> list:
    """n complete content-length answers as (status, headers, body); a ``100 Continue`` counts as
    one. Fails if the server closes first, and with ``exact`` if more than n arrived."""
    sock.settimeout(timeout)
    buf = b""
    out: list[tuple[int, dict, bytes]] = []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            lines = buf[:end].decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            size = int(headers.get("content-length", "0"))
            if len(buf) >= end + 4 + size:
                out.append((status, headers, buf[end + 4 : end + 4 + size]))
                buf = buf[end + 4 + size :]
                continue
        data = sock.recv(65536)
        assert data, f"closed after {len(out)} complete answers: {buf[:300]!r}"
        buf += data
    assert not (exact and buf), f"more than {n} answers: {buf[:300]!r}"
    return out
