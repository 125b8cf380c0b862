"""The OpenAI surface through a real gateway process and real (stub) upstream processes."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest
from conftest import KEYS, wait_ready


def err(body: bytes) -> dict:
    e = json.loads(body)["error"]
    assert set(e) >= {"message", "type", "code"}
    return e


def test_chat_completions_and_embeddings(cl):
    g, a, b, e = cl
    s, h, body = g.chat()
    assert s == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == "Paris."
    assert h["x-request-id"]
    s, _, body = g.request("POST", "/v1/completions", {"model": "chat-a", "prompt": "hi", "max_tokens": 2})
    assert s == 200
    assert json.loads(body)["choices"][0]["text"]
    s, _, body = g.request("POST", "/v1/embeddings", {"model": "embed-a", "input": ["a", "b"]})
    assert s == 200
    assert len(json.loads(body)["data"]) == 2
    # both replicas served (least outstanding with random ties)
    for _ in range(20):
        g.chat()
    assert a.stats()["posts"] > 0
    assert b.stats()["posts"] > 0


def test_what_the_gateway_passes_on_keeps_the_clients_numbers_exact(cl):
    """Bodies are read with orjson, which reads integers past 64 bits as floats: the body passed on
    is the client's own bytes, or (alias, a stream the gateway asks usage for) re-encoded exactly."""
    g, a, b, _ = cl
    big = b"123456789012345678901234"
    bodies = {
        "as sent": b'{"model":"chat-a","messages":[],"seed":%s,"temperature":0.10}' % big,
        "alias": b'{"model":"chatty","messages":[],"seed":%s}' % big,
        "stream": b'{"model":"chat-a","messages":[],"stream":true,"seed":%s}' % big,
    }
    for what, body in bodies.items():
        a.reset()
        b.reset()
        s, _, data = g.request("POST", "/v1/chat/completions", body)
        assert s == 200, (what, data)
        (sent,) = a.stats()["bodies"] + b.stats()["bodies"]
        if what == "as sent":
            assert sent == body.decode()
        else:
            got = json.loads(sent)
            assert got["seed"] == int(big), (what, sent)
            assert got["model"] == "chat-a", (what, sent)
    assert got["stream_options"] == {"include_usage": True}


def test_alias_is_rewritten_and_the_clients_request_id_echoed_not_sent_upstream(cl):
    g, a, b, _ = cl
    s, h, body = g.request(
        "POST", "/v1/chat/completions", {"model": "chatty", "messages": []}, headers={"X-Request-Id": "req-abc.123"}
    )
    assert s == 200, body
    assert h["x-request-id"] == "req-abc.123"
    assert json.loads(body)["model"] == "chat-a"
    sent = a.stats()["request_ids"] + b.stats()["request_ids"]
    assert len(sent) == 1
    assert sent[0] != "req-abc.123", "vLLM gets an id of the gateway's making, never the client's"


def test_models_list(cl):
    g, *_ = cl
    s, _, body = g.request("GET", "/v1/models")
    d = json.loads(body)
    assert s == 200
    assert d["object"] == "list"
    assert {m["id"] for m in d["data"]} == {"chat-a", "chatty", "embed-a"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/chat/completions", {"model": "gpt-9", "messages": []}, 404, "model_not_found"),
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", {"messages": []}, 400, "invalid_model"),
        ("POST", "/v1/chat/completions", {"model": 42}, 400, "invalid_model"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_request"),
        ("POST", "/v1/embeddings", b"\xff\xfe", 400, "invalid_json"),
        # JSON that Python's parser would take but the model servers' may not: refused, not passed on
        ("POST", "/v1/chat/completions", b'{"model": "chat-a", "temperature": NaN}', 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"model": "chat-a", "user": "\\ud800"}', 400, "invalid_json"),
        ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("PUT", "/v1/embeddings", b"{}", 405, "method_not_allowed"),
        ("DELETE", "/v1/models", None, 405, "method_not_allowed"),
        ("GET", "/v2/nothing", None, 404, "not_found"),
    ],
)
def test_client_mistakes_get_openai_errors(cl, method, path, body, status, code):
    g, *_ = cl
    s, h, data = g.request(method, path, body)
    assert s == status, data
    assert err(data)["code"] == code
    if status == 405 and path.startswith("/v1/chat"):
        assert h["allow"] == "POST"


def test_body_over_limit_is_413(stubs, gateway):
    from conftest import base_config, wait_ready

    a = stubs(["chat-a"])
    g = gateway(base_config([a.url], [a.url], server={"max_body_bytes": 1000}))
    wait_ready(g, want=503)  # embed-a is not served by this stub: fine for this test
    big = {"model": "chat-a", "messages": [{"role": "user", "content": "x" * 5000}]}
    s, _, data = g.request("POST", "/v1/chat/completions", big)
    assert s == 413
    assert err(data)["code"] == "body_too_large"
    # chunked body (no content-length) over the limit
    sock = socket.create_connection(("127.0.0.1", g.port))
    payload = json.dumps(big).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
        "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    ).encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(payload[i : i + 500]), payload[i : i + 500]) for i in range(0, len(payload), 500)
    )
    sock.sendall(head + chunks + b"0\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 413")
    sock.close()


def test_upstream_4xx_passed_through(cl):
    g, a, b, _ = cl
    for s_ in (a, b):
        s_.control(status=422)
    s, _, body = g.chat()
    assert s == 422
    assert json.loads(body)["error"]["message"] == "stub says 422"


def test_stream_relayed_chunk_by_chunk(cl):
    g, a, b, _ = cl
    for s_ in (a, b):
        s_.control(chunks=6, interval=0.05)
    sock = socket.create_connection(("127.0.0.1", g.port))
    body = json.dumps({"model": "chat-a", "messages": [], "stream": True}).encode()
    sock.sendall(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    arrivals = []
    buf = b""
    sock.settimeout(5)
    while b"[DONE]" not in buf:
        d = sock.recv(65536)
        assert d, f"connection closed after {buf[-300:]!r}; gateway log tail:\n{g.logs()[-3000:]}"
        buf += d
        arrivals.append((time.monotonic(), d.count(b"data: ")))
    sock.close()
    events = [t for t, n in arrivals for _ in range(n)]
    assert len(events) == 7
    gaps = [b_ - a_ for a_, b_ in zip(events, events[1:6], strict=False)]
    # never buffered: each event arrives on its own, ~50 ms after the previous one
    assert all(0.03 < gap < 0.2 for gap in gaps), gaps
    assert b"text/event-stream" in buf


def test_client_disconnect_cancels_upstream_stream(cl):
    g, a, b, _ = cl
    for s_ in (a, b):
        s_.control(chunks=200, interval=0.02)
    sock = socket.create_connection(("127.0.0.1", g.port))
    body = json.dumps({"model": "chat-a", "messages": [], "stream": True}).encode()
    sock.sendall(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    got = b""
    sock.settimeout(5)
    while b"data:" not in got:
        got += sock.recv(4096)
    sock.close()
    # the gateway notices and drops its upstream socket; its metric goes back to 0 in-flight
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        m = g.request("GET", "/metrics", key=None)[2].decode()
        if 'llm_active_requests{model="chat-a"} 0.0' in m:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the stream was not cancelled")


def test_ops_endpoints_and_metric_names(cluster):
    g, a, b, e = cluster
    g.chat()
    assert g.request("GET", "/health", key=None)[0] == 200
    assert g.request("GET", "/ready", key=None)[0] == 200
    text = g.request("GET", "/metrics", key=None)[2].decode()
    for name in (
        'llm_requests_total{endpoint="chat",model="chat-a",status="200"}',
        'llm_request_duration_seconds_bucket{endpoint="chat",le="0.025",model="chat-a"}',
        "llm_active_requests{",
        'llm_model_health{model="chat-a"} 1.0',
        f'llm_upstream_health{{model="chat-a",replica="127.0.0.1:{a.port}"}} 1.0',
        f'llm_circuit_state{{model="chat-a",replica="127.0.0.1:{a.port}"}} 0.0',
        'llm_tokens_processed_total{model="chat-a",type="completion"}',
        "llm_gateway_overhead_seconds_bucket",
        "# TYPE llm_time_to_first_byte_seconds histogram",
        "# TYPE llm_retries_total counter",
        "# TYPE llm_fallbacks_total counter",
        "# TYPE llm_rejections_total counter",
    ):
        assert name in text, name
    e.kill()
    time.sleep(1.0)
    s, _, body = g.request("GET", "/ready", key=None)
    assert s == 503
    assert json.loads(body)["models_without_healthy_replica"] == ["embed-a"]
    assert json.loads(body)["config_version"] == hashlib.sha256(g.cfg_path.read_bytes()).hexdigest()


def test_access_log_is_one_json_line_per_request(cl):
    g, *_ = cl
    g.request("POST", "/v1/chat/completions", {"model": "chat-a", "messages": []}, headers={"X-Request-Id": "log-me-1"})
    time.sleep(0.4)
    lines = [json.loads(line) for line in g.logs().splitlines() if line.startswith("{")]
    rec = next(r for r in lines if r["request_id"] == "log-me-1")
    assert rec["key"] == "ops"
    assert rec["model"] == "chat-a"
    assert rec["endpoint"] == "chat"
    assert rec["status"] == 200
    assert rec["replica"].startswith("127.0.0.1:")
    assert rec["attempts"] == 1
    assert rec["upstream_request_id"] not in ("", "log-me-1")
    assert rec["duration_ms"] > 0


def test_client_disconnect_cancels_a_non_streamed_request(cl):
    g, a, b, _ = cl
    for s_ in (a, b):
        s_.control(delay=3)
    sock = socket.create_connection(("127.0.0.1", g.port))
    body = json.dumps({"model": "chat-a", "messages": []}).encode()
    sock.sendall(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
            f"X-Request-Id: gone-away-1\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    time.sleep(0.3)
    sock.close()
    t = time.monotonic()
    while time.monotonic() - t < 1.5:
        if 'llm_active_requests{model="chat-a"} 0.0' in g.request("GET", "/metrics", key=None)[2].decode():
            break
        time.sleep(0.05)
    else:
        pytest.fail("the upstream request outlived its client")
    time.sleep(0.4)
    rec = next(json.loads(x) for x in g.logs().splitlines() if '"gone-away-1"' in x)
    assert rec["status"] == 499
    assert rec["error"] == "client disconnected"
    for s_ in (a, b):
        s_.control(delay=0)
    wait_ready(g)  # probes that saw the delay may have marked replicas unhealthy meanwhile
    assert g.chat()[0] == 200
