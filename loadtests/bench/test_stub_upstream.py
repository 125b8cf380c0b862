"""The bench's measuring instrument answers like a vLLM OpenAI server, and fast.

Run: .venv/bin/pytest loadtests/bench  (starts the real stub on a free port, once per server:
"raw" with this Python, "aiohttp" with the bench venv's, which `make setup` creates).
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from pathlib import Path

import pytest
from stubproc import STUB, running_stub

CACHE = Path(os.environ.get("CITADEL_CACHE", STUB.parent.parent / ".cache"))
BENCH_PY = CACHE / "bench-venv/bin/python"
INTERVAL_MS = 20.0
CHUNKS = 6


@pytest.fixture(scope="module", params=["raw", "aiohttp"])
def stub(request):
    python = sys.executable
    if request.param == "aiohttp":
        python = str(BENCH_PY)
        if not BENCH_PY.exists():
            pytest.fail(f"{BENCH_PY} missing: run loadtests/bench/venv.sh (make setup does)")
    extra = ("--chunks", str(CHUNKS), "--chunk-interval-ms", str(INTERVAL_MS))
    with running_stub(python, request.param, ["m1", "m2"], *extra) as port:
        yield port


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers or {})
    return conn, conn.getresponse()


def test_health_and_models(stub):
    _, r = request(stub, "GET", "/health")
    assert r.status == 200
    _, r = request(stub, "GET", "/v1/models")
    assert r.status == 200
    assert [m["id"] for m in json.loads(r.read())["data"]] == ["m1", "m2"]


def test_chat_completion_has_usage_and_echoes_model(stub):
    _, r = request(
        stub, "POST", "/v1/chat/completions", {"model": "m2", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status == 200
    body = json.loads(r.read())
    assert body["model"] == "m2"
    assert body["choices"][0]["message"]["content"]
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0


def test_unknown_model_404_and_bad_json_400(stub):
    _, r = request(stub, "POST", "/v1/chat/completions", {"model": "nope"})
    assert r.status == 404
    conn = http.client.HTTPConnection("127.0.0.1", stub, timeout=5)
    conn.request("POST", "/v1/chat/completions", body=b"{not json")
    assert conn.getresponse().status == 400


def test_keep_alive_and_chunked_request_body(stub):
    conn = http.client.HTTPConnection("127.0.0.1", stub, timeout=5)
    for _ in range(3):  # same connection each time
        conn.request("POST", "/v1/completions", body=iter([b'{"model": ', b'"m1"}']), encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 200
        assert json.loads(r.read())["object"] == "text_completion"


def test_stream_is_spaced_and_ends_with_done(stub):
    conn, r = request(
        stub,
        "POST",
        "/v1/chat/completions",
        {"model": "m1", "stream": True, "stream_options": {"include_usage": True}},
    )
    assert r.status == 200
    assert r.getheader("content-type") == "text/event-stream"
    arrivals, events, buf = [], [], b""
    while True:
        data = r.read1(65536)
        if not data:
            break
        now = time.perf_counter()
        buf += data
        *done, buf = buf.split(b"\n\n")
        for ev in done:
            events.append(ev)
            arrivals.append(now)
    assert events[-1] == b"data: [DONE]"
    payloads = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    content = [p for p in payloads if p["choices"]]
    assert len(content) == CHUNKS
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-1]["usage"]["completion_tokens"] == CHUNKS - 1
    gaps = sorted((b - a) * 1000 for a, b in zip(arrivals[: CHUNKS - 1], arrivals[1:CHUNKS], strict=True))
    # Spaced as configured (timer slack on a busy 2-core machine: generous upper bound).
    assert INTERVAL_MS * 0.9 <= gaps[len(gaps) // 2] <= INTERVAL_MS * 2


def test_fast_enough_to_be_an_instrument(stub):
    # 500 keep-alive requests: the stub must not be what a proxy benchmark measures.
    conn = http.client.HTTPConnection("127.0.0.1", stub, timeout=5)
    body = json.dumps({"model": "m1", "messages": []})
    t0 = time.perf_counter()
    for _ in range(500):
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    per_req_ms = (time.perf_counter() - t0) / 500 * 1000
    assert per_req_ms < 5, f"{per_req_ms:.2f} ms per request"
