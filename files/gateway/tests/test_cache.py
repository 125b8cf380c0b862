"""The response cache (cache.py): a deterministic request answered twice costs the upstream one
request, and the second answer is the first byte for byte (streams: chunk for chunk); anything
not deterministic, not whole or not allowed by Cache-Control goes upstream every time."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import KEYS, base_config, sha, wait_ready

GREEDY = {"temperature": 0, "max_tokens": 4}
# chat-a probed by its model list only: the stub's POST count is then the clients' requests alone
PROBE = {"probe": "models"}


def _cached(stubs, gateway, **cfg_over):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    cfg = base_config([a.url], [e.url], **cfg_over)
    cfg["models"][0].update(cache=True, **PROBE)
    # a second key that may use chat-a only: another scope, another cache entry
    cfg["auth"]["keys"].append({"name": "chat-only", "sha256": sha("chat-only-key-0123"), "models": ["chat-a"]})
    g = gateway(cfg)
    wait_ready(g)
    a.reset()
    return g, a


def _chat(g, key="ops", headers=None, **body):
    return g.chat(key=key, headers=headers, **{**GREEDY, **body})


def _metric(g, result: str) -> float:
    text = g.request("GET", "/metrics", key=None)[2].decode()
    for ln in text.splitlines():
        if ln.startswith("llm_cache_requests_total{") and f'result="{result}"' in ln and 'model="chat-a"' in ln:
            return float(ln.rsplit(" ", 1)[1])
    return 0.0


def test_a_greedy_request_is_answered_once_upstream_then_from_the_cache(stubs, gateway):
    g, a = _cached(stubs, gateway)
    s1, h1, b1 = _chat(g)
    s2, h2, b2 = _chat(g)
    assert (s1, s2) == (200, 200)
    assert b2 == b1  # the identical body
    assert h2["x-citadel-cache"] == "hit"
    assert "x-citadel-cache" not in h1
    assert a.stats()["posts"] == 1  # the upstream saw one request
    assert (_metric(g, "miss"), _metric(g, "hit")) == (1, 1)


def test_a_stream_is_replayed_chunk_for_chunk(stubs, gateway):
    g, a = _cached(stubs, gateway)
    a.control(chunks=5)
    first = _raw_stream(g)
    second = _raw_stream(g)
    assert a.stats()["posts"] == 1
    head1, body1 = first.split(b"\r\n\r\n", 1)
    head2, body2 = second.split(b"\r\n\r\n", 1)
    assert body2 == body1  # the same chunks, the same chunked framing
    assert body1.endswith(b"0\r\n\r\n")
    assert b"data: [DONE]" in body1
    assert b"x-citadel-cache: hit" in head2.lower()


def _raw_stream(g) -> bytes:
    """The whole HTTP answer to a greedy streamed chat, as bytes off the socket."""
    body = json.dumps({"model": "chat-a", "messages": [{"role": "user", "content": "hi"}], "stream": True, **GREEDY})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(head.encode() + body.encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "body",
    [
        {"temperature": 0.7},  # sampled: a new answer every time
        {"temperature": None},  # the server's default temperature: not greedy
        {"n": 2},
        {"stream": True, "stream_options": {"continuous_usage_stats": True}},
    ],
)
def test_what_is_not_deterministic_is_never_cached(stubs, gateway, body):
    g, a = _cached(stubs, gateway)
    for _ in range(2):
        assert _chat(g, **body)[0] == 200
    assert a.stats()["posts"] == 2


def test_cache_control_no_cache_and_no_store(stubs, gateway):
    g, a = _cached(stubs, gateway)
    assert _chat(g, headers={"Cache-Control": "no-store"})[0] == 200  # neither read nor kept
    assert _chat(g, headers={"Cache-Control": "no-cache"})[0] == 200  # not read, but kept
    assert _chat(g)[1]["x-citadel-cache"] == "hit"
    assert "x-citadel-cache" not in _chat(g, headers={"Cache-Control": "no-cache"})[1]
    assert a.stats()["posts"] == 3
    assert _metric(g, "bypass") == 3  # no-store once, no-cache twice


def test_errors_are_never_cached(stubs, gateway):
    g, a = _cached(stubs, gateway)
    a.control(status=400, count=1)  # the upstream refuses once (not retried)
    assert _chat(g)[0] == 400
    assert _chat(g)[0] == 200  # the refusal was not kept
    assert _chat(g)[1].get("x-citadel-cache") == "hit"
    assert a.stats()["posts"] == 2


def test_a_truncated_stream_is_never_cached(stubs, gateway):
    g, a = _cached(stubs, gateway)
    a.control(chunks=5, break_after=2)  # the upstream resets the stream after two events
    cut = _raw_stream(g)
    assert not cut.endswith(b"0\r\n\r\n")  # presented as broken ...
    a.control(break_after=None)
    whole = _raw_stream(g)
    assert whole.endswith(b"0\r\n\r\n")
    assert b"x-citadel-cache" not in whole.split(b"\r\n\r\n", 1)[0].lower()  # ... and not kept
    assert a.stats()["posts"] == 2


def test_keys_of_another_scope_do_not_share_entries(stubs, gateway):
    g, a = _cached(stubs, gateway)
    assert _chat(g)[0] == 200
    assert "x-citadel-cache" not in _chat(g, key="chat-only-key-0123")[1]  # may use chat-a only: its own entry
    assert _chat(g, key="chat-only-key-0123")[1]["x-citadel-cache"] == "hit"
    assert a.stats()["posts"] == 2


def test_an_answer_over_the_entry_bound_is_not_kept(stubs, gateway):
    g, a = _cached(stubs, gateway, cache={"max_entry_bytes": 64})
    for _ in range(2):
        assert "x-citadel-cache" not in _chat(g)[1]
    assert a.stats()["posts"] == 2


def test_off_unless_the_model_or_the_key_turns_it_on(stubs, gateway):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    cfg = base_config([a.url], [e.url])
    cfg["models"][0].update(PROBE)
    cfg["auth"]["keys"].append(
        {"name": "cached", "sha256": sha("cached-key-0123"), "models": ["*"], "cache": True},
    )
    g = gateway(cfg)
    wait_ready(g)
    a.reset()
    for _ in range(2):
        assert "x-citadel-cache" not in _chat(g)[1]  # ops: no cache on the key or the model
    assert _chat(g, key="cached-key-0123")[0] == 200
    assert _chat(g, key="cached-key-0123")[1]["x-citadel-cache"] == "hit"
    assert a.stats()["posts"] == 3


def test_two_gateways_share_the_cache_through_redis(stubs, gateway, redis_server):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    shared = {"backend": "redis", "redis_url": redis_server}
    gws = []
    for name in ("gw1", "gw2"):
        cfg = base_config([a.url], [e.url], rate_limit=shared)
        cfg["models"][0].update(cache=True, **PROBE)
        gws.append(gateway(cfg, name))
    for g in gws:
        wait_ready(g)
    a.reset()
    s1, _, b1 = _chat(gws[0])
    s2, h2, b2 = _chat(gws[1])
    assert (s1, s2, b2) == (200, 200, b1)
    assert h2["x-citadel-cache"] == "hit"
    assert a.stats()["posts"] == 1


def test_a_blackholed_redis_is_a_miss_not_a_failure(stubs, gateway, silent):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    # a Redis that accepts and never answers: the limiter's bounded waits apply to the cache too
    url = f"redis://127.0.0.1:{silent.port}/0"
    rl = {"backend": "redis", "redis_url": url, "connect_timeout_s": 0.2, "timeout_s": 0.2}
    cfg = base_config([a.url], [e.url], rate_limit=rl)
    cfg["models"][0].update(cache=True, **PROBE)
    g = gateway(cfg)
    wait_ready(g)
    a.reset()
    for _ in range(2):
        assert _chat(g)[0] == 200  # on_redis_error: allow, and the cache does not stop it
    assert a.stats()["posts"] == 2
    assert _metric(g, "error") >= 2
