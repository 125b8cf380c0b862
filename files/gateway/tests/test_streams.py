"""Stream deadlines and abnormal ends: a stream that breaks is never presented as complete."""

from __future__ import annotations

import json
import socket
import time

import openai
import pytest
from conftest import KEYS, base_config, wait_ready


def raw_stream(port: int, body: dict, timeout: float = 20.0, key: str = "ops") -> tuple[int, list[bytes], bool]:
    """POST a streamed chat over a raw socket; (status, the SSE data payloads, whether the body
    ended with the chunked terminator) — read until the server closes or the terminator."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS.get(key, key)}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data
        )
        buf = b""
        while True:
            part = s.recv(65536)
            if not part:
                break
            buf += part
            if buf.endswith(b"\r\n0\r\n\r\n"):
                break
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    payload, clean = b"", False
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        n = int(size_line, 16)
        if n == 0:
            clean = True
            break
        payload += rest[:n]
        rest = rest[n + 2 :]
    events = [e[6:] for e in payload.split(b"\n\n") if e.startswith(b"data: ")]
    return status, events, clean


def _metric(g, status: int) -> float:
    for ln in g.request("GET", "/metrics", key=None)[2].decode().splitlines():
        if ln.startswith("llm_requests_total{") and 'model="chat-a"' in ln and f'status="{status}"' in ln:
            return float(ln.rsplit(" ", 1)[1])
    return 0.0


def _log(g, predicate) -> dict:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        for x in g.logs().splitlines():
            if x.startswith("{") and predicate(rec := json.loads(x)):
                return rec
        time.sleep(0.1)
    raise AssertionError("no such access log line")


@pytest.fixture
def streams(stubs, gateway):
    """One chat replica with tight stream deadlines and a 1 s total deadline for non-streamed requests."""
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    cfg = base_config([a.url], [e.url], health={"interval_s": 60, "timeout_s": 2}, retry={"attempts": 1})
    cfg["upstream"] = {
        "connect_timeout_s": 1,
        "total_timeout_s": 1,
        "first_byte_timeout_s": 1,
        "chunk_gap_timeout_s": 1,
    }
    g = gateway(cfg)
    wait_ready(g)
    return g, a, cfg


def _sdk(g) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{g.port}/v1", api_key=KEYS["ops"], max_retries=0, timeout=20)


def _consume(client) -> str:
    stream = client.chat.completions.create(model="chat-a", messages=[{"role": "user", "content": "hi"}], stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_a_stream_longer_than_the_total_deadline_completes(streams):
    g, a, _ = streams
    a.control(chunks=12, interval=0.25)  # 3 s of generation, 1 s total deadline, 0.25 s gaps
    assert _consume(_sdk(g)) == "".join(f"tok{i} " for i in range(12))
    status, events, clean = raw_stream(g.port, {"model": "chat-a", "messages": [], "stream": True})
    assert (status, events[-1], clean) == (200, b"[DONE]", True)


def test_a_stream_cut_by_the_gap_deadline_makes_the_sdk_raise(streams):
    g, a, _ = streams
    a.control(chunks=10, stall_after=3)
    before = _metric(g, 504)
    with pytest.raises(openai.APIError, match="no chunk for 1 s"):
        _consume(_sdk(g))
    status, events, clean = raw_stream(g.port, {"model": "chat-a", "messages": [], "stream": True})
    assert status == 200
    assert not clean, "a broken stream must not end with the chunked terminator"
    assert len(events) == 4
    assert b"[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "stream_timeout"
    assert _metric(g, 504) == before + 2
    assert _log(g, lambda r: r["status"] == 504 and "no chunk" in r.get("error", ""))["model"] == "chat-a"


def test_a_stream_reset_by_the_upstream_makes_the_sdk_raise(streams):
    g, a, _ = streams
    a.control(chunks=10, break_after=2)
    before = _metric(g, 502)
    with pytest.raises(openai.APIError, match="stream broke"):
        _consume(_sdk(g))
    status, events, clean = raw_stream(g.port, {"model": "chat-a", "messages": [], "stream": True})
    assert status == 200
    assert not clean
    assert json.loads(events[-1])["error"]["code"] == "stream_broken"
    assert _metric(g, 502) == before + 2
    assert a.stats()["posts"] == 3, "a started stream is never retried (1 probe + 2 streams)"


def test_no_first_byte_in_time_is_a_clean_504(streams):
    g, a, _ = streams
    a.control(first_delay=3)
    status, h, body = g.request("POST", "/v1/chat/completions", {"model": "chat-a", "messages": [], "stream": True})
    assert status == 504, body
    assert json.loads(body)["error"]["code"] == "first_byte_timeout"
    with pytest.raises(openai.InternalServerError):  # the SDK maps 5xx (here 504) to this
        _consume(_sdk(g))


def test_the_absolute_stream_cap(streams, gateway):
    g, a, cfg = streams
    cfg["models"][0]["stream_max_s"] = 1.5
    g2 = gateway(cfg, name="capped")
    wait_ready(g2)
    a.control(chunks=40, interval=0.1)  # 4 s of chunks 0.1 s apart: only the cap can end it
    status, events, clean = raw_stream(g2.port, {"model": "chat-a", "messages": [], "stream": True})
    assert status == 200
    assert not clean
    err = json.loads(events[-1])["error"]
    assert err["code"] == "stream_timeout"
    assert "cap" in err["message"]
    assert 2 <= len(events) < 40


def test_non_streamed_requests_keep_the_total_deadline(streams):
    g, a, _ = streams
    a.control(delay=3)
    status, _, body = g.chat()
    assert status == 504
    assert json.loads(body)["error"]["code"] == "upstream_timeout"
