"""The response cache on the lab: the `lab-cached` key's greedy chats are kept in Redis by one
gateway and answered by either without a request to the model (the model server's own counters
do not move), byte for byte; a sampled request always reaches the model.

The model is smollm2-gguf (llama.cpp): the gateways probe it by its model list only, so its
counters move for client requests alone (vLLM's also count the gateways' 1-token probes)."""

from __future__ import annotations

import http.client
import json
import statistics
import time
import urllib.request
import uuid

import lab_inventory
import lab_ops

KEY = (lab_ops.CACHE / "lab-gateway-cached-key").read_text().strip()
MODEL = "smollm2-gguf"
METRICS = next(m["metrics_url"] for m in lab_inventory.models() if m["name"] == MODEL)


def generated() -> float:
    """Tokens the llama.cpp server generated, by its own /metrics (which want the model's key)."""
    req = urllib.request.Request(METRICS, headers={"Authorization": f"Bearer {lab_inventory.model_api_key(MODEL)}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        for ln in r.read().decode().splitlines():
            if ln.startswith("llamacpp:tokens_predicted_total"):
                return float(ln.rsplit(" ", 1)[1])
    raise AssertionError("llamacpp:tokens_predicted_total not in the server's /metrics")


def chat(port: int, body: dict, tls=None) -> tuple[int, dict, bytes]:
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=120, context=tls)
        if tls
        else http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    )
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({"model": MODEL, "max_tokens": 8, **body}),
            {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _messages() -> list[dict]:
    return [{"role": "user", "content": f"Name a colour. ({uuid.uuid4().hex[:8]})"}]  # a prompt no run has kept


def test_a_greedy_chat_is_answered_from_the_cache_by_either_gateway():
    body = {"messages": _messages(), "temperature": 0}
    before = generated()
    s1, h1, b1 = chat(8000, body)
    assert s1 == 200, b1
    assert "x-citadel-cache" not in h1
    after_first = generated()
    assert after_first > before
    gw2 = lab_inventory.gateway_tls("citadel-gateway-02")
    s2, h2, b2 = chat(lab_inventory.published_port("citadel-gateway-02", 8000), body, gw2)
    assert (s2, h2.get("x-citadel-cache"), b2) == (200, "hit", b1)  # the other gateway: shared through Redis
    samples = []
    for _ in range(30):
        t0 = time.perf_counter()
        s, h, b = chat(8000, body)
        samples.append((time.perf_counter() - t0) * 1000)
        assert (s, h.get("x-citadel-cache"), b) == (200, "hit", b1)
    assert generated() == after_first  # 31 answers, nothing generated
    print(f"cache hits through the gateway, whole request: median {statistics.median(samples):.2f} ms, "
          f"max {max(samples):.2f} ms")  # fmt: skip


def test_a_cached_stream_replays_the_same_events():
    body = {"messages": _messages(), "temperature": 0, "stream": True}
    s1, h1, b1 = chat(8000, body)
    before = generated()
    s2, h2, b2 = chat(8000, body)
    assert (s1, s2) == (200, 200)
    assert b1.rstrip().endswith(b"data: [DONE]")
    assert (h2.get("x-citadel-cache"), b2) == ("hit", b1)
    assert generated() == before


def test_a_sampled_chat_always_reaches_the_model():
    body = {"messages": _messages(), "temperature": 0.8}
    for _ in range(2):
        before = generated()
        status, headers, _ = chat(8000, body)
        assert status == 200
        assert "x-citadel-cache" not in headers
        assert generated() > before
