"""The model servers' key: each model's replicas require one (vLLM's --api-key); the gateway sends
that key upstream on every attempt and health probe, never the client's, and never shows it."""

from __future__ import annotations

import signal

import pytest
from citadel_gateway import config as C
from conftest import KEYS, base_config, sha, wait_ready

CHAT_KEY = "up-chat-0123456789abcdef"
EMBED_KEY = "up-embed-fedcba9876543210"
ADMIN = "admin-key-9"


def _config(tmp_path, chat_urls, embed_urls, keys: dict[str, str | None]) -> dict:
    cfg = base_config(chat_urls, embed_urls)
    cfg["auth"]["keys"].append({"name": "admin", "sha256": sha(ADMIN), "models": [], "admin": True})
    for m in cfg["models"]:
        key = keys.get(m["name"])
        if key is not None:
            f = tmp_path / f"{m['name']}.upstream-key"
            f.write_text(key + "\n")
            m["upstream_api_key_file"] = str(f)
    return cfg


@pytest.fixture
def keyed(stubs, gateway, tmp_path):
    a, b = stubs(["chat-a"], api_key=CHAT_KEY), stubs(["chat-a"], api_key=CHAT_KEY)
    e = stubs(["embed-a"], api_key=EMBED_KEY)
    g = gateway(_config(tmp_path, [a.url, b.url], [e.url], {"chat-a": CHAT_KEY, "embed-a": EMBED_KEY}))
    wait_ready(g)  # the health probes got through: they carry the key
    return g, a, b, e


def test_every_request_and_probe_carries_the_models_key_never_the_clients(keyed):
    g, a, b, e = keyed
    for _ in range(6):
        assert g.chat()[0] == 200
    emb = {"model": "embed-a", "input": "hi"}
    assert g.request("POST", "/v1/embeddings", emb)[0] == 200
    for stub, key in ((a, CHAT_KEY), (b, CHAT_KEY), (e, EMBED_KEY)):
        seen = set(stub.stats()["authorizations"])
        assert seen == {f"Bearer {key}"}  # probes (GET /v1/models, the 1-token chat) and requests alike
    assert a.stats()["posts"] + b.stats()["posts"] >= 6


def test_without_the_key_the_replicas_are_unhealthy_and_the_clients_key_is_not_tried(stubs, gateway, tmp_path):
    a = stubs(["chat-a"], api_key=CHAT_KEY)
    e = stubs(["embed-a"], api_key=EMBED_KEY)
    g = gateway(_config(tmp_path, [a.url], [e.url], {"embed-a": EMBED_KEY}))  # chat-a's key left out
    wait_ready(g, want=503)
    status, _, body = g.chat()
    assert status == 503
    assert b"no healthy replica" in body
    assert f"Bearer {KEYS['ops']}" not in a.stats()["authorizations"]


def test_the_key_is_in_no_answer_and_no_log(keyed):
    g, *_ = keyed
    assert g.chat()[0] == 200
    for path in ("/v1/models", "/v1/models/registry", "/admin/replicas", "/metrics"):
        for key in ("ops", ADMIN):
            body = g.request("GET", path, key=key)[2]
            assert CHAT_KEY.encode() not in body
            assert EMBED_KEY.encode() not in body
    g.signal(signal.SIGHUP)
    assert g.chat()[0] == 200
    g.stop()
    assert CHAT_KEY not in g.log_path.read_text(errors="replace")


def test_a_reload_takes_a_new_key(keyed, stubs, tmp_path):
    g, a, b, e = keyed
    new = "up-chat-rotated-000111222"
    for s in (a, b):  # the model servers restart with the new key (what a rotation does)
        s.kill()
        s.api_key = new
        s.start()
    wait_ready(g, want=503)  # the probes, still with the old key, took chat-a's replicas out
    (tmp_path / "chat-a.upstream-key").write_text(new)
    g.signal(signal.SIGHUP)
    wait_ready(g)  # only a probe with the new key brings them back: the reload happened
    assert g.chat()[0] == 200
    assert f"Bearer {new}" in a.stats()["authorizations"] + b.stats()["authorizations"]


def test_a_replica_refusing_the_key_is_retried_elsewhere_and_never_shown_as_the_clients_401(stubs, gateway, tmp_path):
    # A rotation half done: one model server already restarted with the new key, the gateway
    # still holds the old one. Probes are far apart, so only the request path sees the 401s.
    a, b = stubs(["chat-a"], api_key=CHAT_KEY), stubs(["chat-a"], api_key=CHAT_KEY)
    e = stubs(["embed-a"], api_key=EMBED_KEY)
    cfg = _config(tmp_path, [a.url, b.url], [e.url], {"chat-a": CHAT_KEY, "embed-a": EMBED_KEY})
    cfg["health"] = {"interval_s": 600, "timeout_s": 2}
    g = gateway(cfg)
    wait_ready(g)
    b.kill()
    b.api_key = "up-chat-rotated-000111222"
    b.start()
    statuses = [g.chat()[0] for _ in range(20)]
    assert statuses == [200] * 20  # b's 401s were retried on a
    assert b.stats()["posts"] == 0
    assert f"Bearer {CHAT_KEY}" in b.stats()["authorizations"]  # asked, and refused
    a.kill()
    a.api_key = b.api_key
    a.start()
    status, _, body = g.chat()
    assert status == 502  # the gateway's key is wrong, not the client's: never a 401
    assert b"chat-a unavailable: refused the gateway's upstream key (401)" in body
    assert g.request("GET", "/v1/models")[0] == 200  # and the client's key still works


def test_an_unreadable_or_empty_key_file_is_a_config_error(tmp_path):
    cfg = base_config(["http://127.0.0.1:1"], ["http://127.0.0.1:2"])
    cfg["models"][0]["upstream_api_key_file"] = str(tmp_path / "missing")
    with pytest.raises(C.ConfigError, match=r"models\[0\]\.upstream_api_key_file: cannot read"):
        C.parse(cfg)
    (tmp_path / "empty").write_text("\n")
    cfg["models"][0]["upstream_api_key_file"] = str(tmp_path / "empty")
    with pytest.raises(C.ConfigError, match=r"models\[0\]\.upstream_api_key_file: .* is empty"):
        C.parse(cfg)
