"""Failover, breaker, retries, all-down behaviour, streams never retried."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import base_config, wait_ready
from test_streams import raw_stream


def test_killing_a_replica_under_load_loses_no_request(stubs, gateway):
    a, b, e = stubs(["chat-a"]), stubs(["chat-a"]), stubs(["embed-a"])
    g = gateway(base_config([a.url, b.url], [e.url]))
    wait_ready(g)
    a.control(delay=0.005)
    b.control(delay=0.005)
    results: list[int] = []
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            results.append(g.chat()[0])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    a.kill()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert len(results) > 50
    assert set(results) == {200}, {s: results.count(s) for s in set(results)}
    text = g.request("GET", "/metrics", key=None)[2].decode()
    assert f'llm_upstream_health{{model="chat-a",replica="127.0.0.1:{a.port}"}} 0.0' in text


def test_all_replicas_down_is_a_fast_503_with_retry_after(stubs, gateway):
    a, b, e = stubs(["chat-a"]), stubs(["chat-a"]), stubs(["embed-a"])
    g = gateway(base_config([a.url, b.url], [e.url], health={"interval_s": 60, "timeout_s": 1}))
    wait_ready(g)
    a.kill()
    b.kill()
    # the first request discovers it (connection refused opens the breakers), then every one is fast
    s, h, body = g.chat()
    assert s == 503, body
    assert "retry-after" in h
    for _ in range(5):
        t = time.perf_counter()
        s, h, body = g.chat()
        dt = time.perf_counter() - t
        assert s == 503
        assert int(h["retry-after"]) >= 1
        assert json.loads(body)["error"]["code"] == "no_replica"
        assert dt < 0.05, f"{dt * 1000:.1f} ms"


def test_breaker_opens_and_recovers_through_a_half_open_probe(stubs, gateway):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    cfg = base_config([a.url], [e.url], health={"interval_s": 60, "timeout_s": 1}, retry={"attempts": 1})
    g = gateway(cfg)
    wait_ready(g)
    a.control(status=500)
    base = a.stats()["posts"]  # the readiness probe's 1-token request counts too
    for _ in range(3):
        assert g.chat()[0] == 500
    assert a.stats()["posts"] == base + 3
    metric = f'llm_circuit_state{{model="chat-a",replica="127.0.0.1:{a.port}"}}'
    assert f"{metric} 2.0" in g.request("GET", "/metrics", key=None)[2].decode()
    s, h, _ = g.chat()
    assert s == 503
    assert "retry-after" in h
    assert a.stats()["posts"] == base + 3, "an open breaker sends nothing upstream"
    a.control(status=None)
    time.sleep(0.6)  # cooldown 0.5 s → half-open: one probe goes through and closes it
    assert g.chat()[0] == 200
    assert a.stats()["posts"] == base + 4
    assert f"{metric} 0.0" in g.request("GET", "/metrics", key=None)[2].decode()
    assert g.chat()[0] == 200


# 500: what vLLM answers when its engine dies under a request (a replica being stopped).
@pytest.mark.parametrize("status", [500, 503])
def test_5xx_and_refused_are_retried_on_another_replica(stubs, gateway, status):
    a, b, e = stubs(["chat-a"]), stubs(["chat-a"]), stubs(["embed-a"])
    g = gateway(base_config([a.url, b.url], [e.url], health={"interval_s": 60, "timeout_s": 1}))
    wait_ready(g)
    a.control(status=status)
    for _ in range(10):
        s, _, body = g.chat()
        assert s == 200, body
    served_503 = a.stats()["posts"] - 1  # minus the readiness probe
    assert served_503 >= 1
    text = g.request("GET", "/metrics", key=None)[2].decode()
    assert f'llm_retries_total{{model="chat-a"}} {float(served_503)}' in text
    b.kill()  # now b refuses connections and a still answers 5xx: retries run out → 5xx, never a hang
    s, _, body = g.chat()
    assert s in (status, 502, 503), body


def test_a_started_stream_is_never_retried(cl):
    g, a, b, _ = cl
    for s_ in (a, b):
        s_.control(chunks=5, break_after=2)
    status, events, clean = raw_stream(g.port, {"model": "chat-a", "messages": [], "stream": True})
    assert status == 200
    assert not clean, "a broken stream never ends like a complete one"
    assert len(events) == 3
    assert json.loads(events[-1])["error"]["code"] == "stream_broken"
    assert a.stats()["posts"] + b.stats()["posts"] == 1, "the upstream got the request exactly once"


def test_upstream_timeout_is_504(cl):
    g, a, b, _ = cl
    for s_ in (a, b):
        s_.control(delay=8)  # > upstream.total_timeout_s = 5
    t = time.monotonic()
    s, _, body = g.chat()
    assert s == 504
    assert json.loads(body)["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - t < 7
    for s_ in (a, b):
        s_.control(delay=0)


def test_fallback_model_when_primary_is_down(stubs, gateway):
    a, e, f = stubs(["chat-a"]), stubs(["embed-a"]), stubs(["chat-b"])
    cfg = base_config([a.url], [e.url])
    cfg["models"][0]["fallbacks"] = ["chat-b"]
    cfg["models"].append({"name": "chat-b", "capabilities": ["chat"], "replicas": [f.url]})
    g = gateway(cfg)
    wait_ready(g)
    a.kill()
    time.sleep(0.5)
    s, h, body = g.chat()
    assert s == 200, body
    assert h["x-citadel-model"] == "chat-b"
    assert 'llm_fallbacks_total{fallback="chat-b",model="chat-a"}' in g.request("GET", "/metrics", key=None)[2].decode()
