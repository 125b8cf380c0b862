"""A key's model list holds on every path: auto, its re-selection, fallbacks, the registry."""

from __future__ import annotations

import json
import threading

from conftest import request, sha, wait_ready
from test_ops import _auto_cluster

SMALL_ONLY, BIG_ONLY, ADMIN = "small-only-key-1", "big-only-key-22", "admin-key-333333"


def _keys(cfg) -> None:
    cfg["auth"]["keys"] += [
        {"name": "small-only", "sha256": sha(SMALL_ONLY), "models": ["small"], "rpm": 10000, "burst": 1000},
        {"name": "big-only", "sha256": sha(BIG_ONLY), "models": ["big"], "rpm": 10000, "burst": 1000},
        {"name": "admin", "sha256": sha(ADMIN), "models": ["*"], "admin": True},
    ]


def _auto(g, key, priority="quality"):
    body = {"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    return g.request("POST", "/v1/chat/completions", body, key=key, headers={"x-priority": priority})


def test_auto_and_its_reselection_choose_only_the_keys_models(stubs, gateway):
    g, small, big, _ = _auto_cluster(stubs, gateway, _keys)
    s, h, _ = _auto(g, SMALL_ONLY)  # quality prefers big, which this key may not use
    assert s == 200
    assert h["x-citadel-model"] == "small"
    s, h, _ = _auto(g, BIG_ONLY, priority="speed")  # speed prefers small
    assert s == 200
    assert h["x-citadel-model"] == "big"
    big.kill()  # the choice fails on send: auto chooses again, but never outside the key's models
    s, h, body = _auto(g, BIG_ONLY)
    assert s == 503, body
    assert "x-citadel-model" not in h
    assert small.stats()["by_path"].get("/v1/chat/completions", 0) == 1 + 1, "probe + the small-only request"


def _fallback_cluster(stubs, gateway, fb_limits=None):
    a, e, f = stubs(["chat-a"]), stubs(["embed-a"]), stubs(["chat-b"])
    from conftest import base_config

    cfg = base_config([a.url], [e.url], health={"interval_s": 60, "timeout_s": 2})
    cfg["models"][0]["fallbacks"] = ["chat-b"]
    cfg["models"].append({"name": "chat-b", "capabilities": ["chat"], "replicas": [f.url], **(fb_limits or {})})
    cfg["auth"]["keys"].append(
        {"name": "a-only", "sha256": sha(SMALL_ONLY), "models": ["chat-a"], "rpm": 10000, "burst": 1000}
    )
    g = gateway(cfg)
    wait_ready(g)
    return g, a, f


def test_a_fallback_the_key_may_not_use_is_not_taken(stubs, gateway):
    g, a, f = _fallback_cluster(stubs, gateway)
    a.kill()
    s, _, body = g.chat(key=SMALL_ONLY)
    assert s == 503, body
    assert f.stats()["by_path"].get("/v1/chat/completions", 0) == 1, "only the readiness probe"
    s, h, _ = g.chat()  # a key that may use both gets the fallback
    assert s == 200
    assert h["x-citadel-model"] == "chat-b"


def test_a_fallback_is_admitted_under_its_own_models_queue(stubs, gateway):
    g, a, f = _fallback_cluster(stubs, gateway, {"max_inflight": 1, "max_waiting": 0})
    f.control(delay=2)
    busy = []
    t = threading.Thread(target=lambda: busy.append(g.chat(model="chat-b")[0]))
    t.start()
    try:
        end = 50
        while f.stats()["posts"] < 2 and end:  # the probe + the busy request reached chat-b
            threading.Event().wait(0.05)
            end -= 1
        a.kill()
        s, _, body = g.chat()  # chat-a is down; its fallback chat-b is full
        assert s == 429, body
        assert json.loads(body)["error"]["code"] == "queue_full"
        assert "chat-b" in json.loads(body)["error"]["message"]
    finally:
        t.join()
    assert busy == [200]


def test_registry_shows_only_the_keys_models_and_details_only_to_admins(stubs, gateway):
    g, *_ = _auto_cluster(stubs, gateway, _keys)
    s, _, data = g.request("GET", "/v1/models/registry?priority=quality", key=SMALL_ONLY)
    assert s == 200
    d = json.loads(data)
    assert [m["name"] for m in d["models"]] == ["small"]
    assert d["recommendation"]["model"] == "small"
    rep = d["models"][0]["replicas"][0]
    assert "url" not in rep
    assert "reason" not in rep
    d = json.loads(g.request("GET", "/v1/models/registry", key=ADMIN)[2])
    assert {m["name"] for m in d["models"]} == {"small", "big", "emb"}
    assert d["models"][0]["replicas"][0]["url"].startswith("http://127.0.0.1:")


def test_a_non_ascii_key_works_on_every_route(stubs, gateway):
    key = "schlüssel-ключ-鍵-0001"

    def extra(cfg):
        cfg["auth"]["keys"].append({"name": "unicode", "sha256": sha(key), "models": ["*"]})

    g, *_ = _auto_cluster(stubs, gateway, extra)
    h = {"Authorization": b"Bearer " + key.encode()}
    body = {"model": "small", "messages": [{"role": "user", "content": "x"}]}
    assert request(g.port, "POST", "/v1/chat/completions", body, h)[0] == 200
    s, _, data = request(g.port, "GET", "/v1/models", None, h)
    assert s == 200, data
    assert request(g.port, "GET", "/v1/models/registry", None, h)[0] == 200
    bad = {"Authorization": b"Bearer " + key.encode()[:-1]}
    assert request(g.port, "GET", "/v1/models", None, bad)[0] == 401
