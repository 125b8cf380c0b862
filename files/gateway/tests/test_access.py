"""API keys, per-key model lists, token buckets (memory and a real Redis), admission queue."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import KEYS, base_config, free_port, wait_ready


def test_401_missing_or_unknown_key(cl):
    g, *_ = cl
    s, _, body = g.chat(key=None)
    assert s == 401
    assert json.loads(body)["error"]["type"] == "authentication_error"
    assert g.chat(key="not-a-real-key")[0] == 401
    assert g.request("GET", "/v1/models", key=None)[0] == 401
    # X-API-Key works as well as Authorization: Bearer
    s, _, _ = g.request(
        "POST", "/v1/embeddings", {"model": "embed-a", "input": "x"}, key=None, headers={"X-API-Key": KEYS["ops"]}
    )
    assert s == 200


def test_403_model_not_allowed_for_key(cl):
    g, *_ = cl
    s, _, body = g.chat(key="embed-only")
    assert s == 403
    assert json.loads(body)["error"]["code"] == "model_not_allowed"
    assert g.request("POST", "/v1/embeddings", {"model": "embed-a", "input": "x"}, key="embed-only")[0] == 200
    ids = {m["id"] for m in json.loads(g.request("GET", "/v1/models", key="embed-only")[2])["data"]}
    assert ids == {"embed-a"}


def test_429_with_retry_after_over_burst(cl):
    g, *_ = cl
    # key "limited": rpm 60, burst 3
    codes = [g.chat(key="limited") for _ in range(5)]
    assert [c[0] for c in codes[:3]] == [200, 200, 200]
    s, h, body = codes[3]
    assert s == 429
    assert int(h["retry-after"]) >= 1
    assert json.loads(body)["error"]["code"] == "rate_limited"
    text = g.request("GET", "/metrics", key=None)[2].decode()
    assert 'llm_rejections_total{model="chat-a",reason="rate_limited"}' in text


def test_redis_limits_are_shared_by_two_gateways(stubs, gateway, redis_server):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    cfg = base_config([a.url], [e.url], rate_limit={"backend": "redis", "redis_url": redis_server})
    g1 = gateway(cfg, "gw1")
    g2 = gateway(base_config([a.url], [e.url], rate_limit={"backend": "redis", "redis_url": redis_server}), "gw2")
    wait_ready(g1)
    wait_ready(g2)
    # burst 3 in total across both gateways
    results = [g.chat(key="limited")[0] for g in (g1, g2, g1, g2, g1, g2)]
    assert results.count(200) == 3, results
    assert results.count(429) == 3, results
    # the other key has its own bucket
    assert g2.chat(key="ops")[0] == 200


def test_admission_queue_full_and_timeout(stubs, gateway):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    cfg = base_config([a.url], [e.url], queue={"max_inflight": 1, "max_waiting": 1, "wait_timeout_s": 0.3})
    g = gateway(cfg)
    wait_ready(g)
    a.control(delay=1.0)
    out: list[int] = []

    def one():
        out.append(g.chat()[0])

    first = threading.Thread(target=one)
    first.start()
    time.sleep(0.15)
    second = threading.Thread(target=one)  # waits in the queue, then times out (503)
    second.start()
    time.sleep(0.1)
    s, h, body = g.chat()  # queue full → 429 immediately
    assert s == 429
    assert json.loads(body)["error"]["code"] == "queue_full"
    assert "retry-after" in h
    second.join()
    first.join()
    assert sorted(out) == [200, 503]
    text = g.request("GET", "/metrics", key=None)[2].decode()
    assert 'reason="queue_full"' in text
    assert 'reason="queue_timeout"' in text


@pytest.mark.parametrize("policy", ["allow", "reject"])
def test_redis_unreachable_follows_on_redis_error(stubs, gateway, policy):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    nothing = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    rl = {"backend": "redis", "redis_url": nothing, "on_redis_error": policy}
    g = gateway(base_config([a.url], [e.url], rate_limit=rl))
    wait_ready(g)
    status, headers, body = g.chat(key="limited")
    metrics = g.request("GET", "/metrics", key=None)[2].decode()
    assert "llm_rate_limiter_errors_total 1.0" in metrics
    if policy == "allow":
        assert status == 200
        assert "rate limiter unavailable, allowing request" in g.logs()
    else:
        assert status == 503
        assert headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "rate_limiter_unavailable"
        assert 'llm_rejections_total{model="chat-a",reason="limiter_unavailable"} 1.0' in metrics
