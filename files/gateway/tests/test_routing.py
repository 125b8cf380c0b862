"""Replica choice per model: least outstanding (the default) and prefix affinity with bounded
loads (routing.py) — the key a request gets, the replica it ranks first, the bound that moves
requests off a busy replica, and the same behaviour through a real gateway in front of stub
replicas, visible in llm_replica_picks_total."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time

import pytest
from citadel_gateway import config as C
from citadel_gateway import load, routing
from citadel_gateway.backends import Router
from conftest import base_config, wait_ready

URLS = [f"http://10.0.0.{i}:8000" for i in range(1, 5)]


def _model(policy="prefix_affinity", urls=URLS, **routing_over):
    cfg = {"models": [{"name": "m", "replicas": urls, "routing": {"policy": policy, **routing_over}}]}
    return Router(C.parse(cfg)).get("m")


def _chat(system: str, *turns: str) -> dict:
    msgs = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return {"model": "m", "messages": msgs}


def test_a_conversation_keeps_its_key_as_it_grows():
    first = _chat("You are terse.", "Name a colour.")
    later = _chat("You are terse.", "Name a colour.", "Blue.", "Another one?", "Red.", "And one more?")
    other = _chat("You are terse.", "Name a fruit.")
    key = routing.affinity_key(first, [], 512)
    assert routing.affinity_key(later, [], 512) == key  # later turns are not part of the key
    assert routing.affinity_key(other, [], 512) != key
    # Only the first prefix_chars characters count: prompts that differ after them share a key.
    a, b = _chat("Rules. " * 200, "a"), _chat("Rules. " * 200, "b")
    assert routing.affinity_key(a, [], 512) == routing.affinity_key(b, [], 512)
    assert routing.affinity_key(a, [], 5000) != routing.affinity_key(b, [], 5000)


def test_a_session_header_then_user_then_the_prompt_name_the_key():
    body = {**_chat("s", "q"), "user": "alice"}
    by_user = routing.affinity_key(body, [], 512)
    assert by_user == routing.affinity_key({**_chat("other", "prompt"), "user": "alice"}, [], 512)
    by_session = routing.affinity_key(body, [(b"x-session-id", b"conv-7")], 512)
    assert by_session != by_user
    assert by_session == routing.affinity_key(_chat("x", "y"), [(b"x-session-id", b"conv-7")], 512)
    # completions and embeddings: the prompt / input, a batch by its first prompt, token ids too
    assert routing.prompt_start({"prompt": "abcdef"}, 3) == "abc"
    assert routing.prompt_start({"prompt": ["abcdef", "zzz"]}, 4) == "abcd"
    assert routing.prompt_start({"input": [[1, 2, 3], [4]]}, 100) == "1 2 3 "
    assert routing.prompt_start({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, 50)
    assert routing.prompt_start({"messages": "not a list"}, 50) == ""


def test_every_gateway_process_computes_the_same_key_and_order():
    """Keys and rendezvous salts are not Python's per-process salted hash(): a second gateway
    (another process, another hash seed) sends a prompt to the same replica."""
    body = _chat("You are terse.", "Name a colour.")
    code = f"from citadel_gateway import routing as r;print(r.affinity_key({body!r}, [], 512), r.salt({URLS[0]!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345"})  # fmt: skip
    assert out.stdout.split() == [str(routing.affinity_key(body, [], 512)), str(routing.salt(URLS[0]))]


def test_a_key_goes_to_one_replica_and_keys_spread_over_all():
    m = _model()
    keys = [random.getrandbits(64) for _ in range(4000)]
    homes = [m.pick((), k) for k in keys]
    assert [m.pick((), k) for k in keys[:50]] == homes[:50]  # idle replicas: always the same one
    counts = {r.url: homes.count(r) for r in m.replicas}
    assert all(700 < n < 1300 for n in counts.values()), counts  # ~1000 each
    assert sum(r.picks[routing.PLACED] for r in m.replicas) == 4000  # each key's first request
    assert sum(r.picks[routing.AFFINITY] for r in m.replicas) == 50


def test_a_replica_that_leaves_moves_only_its_own_keys():
    m = _model()
    keys = [random.getrandbits(64) for _ in range(2000)]
    before = [m.pick((), k) for k in keys]
    gone = m.replicas[1]
    gone.healthy = False
    after = [m.pick((), k) for k in keys]
    for b, a in zip(before, after, strict=True):
        assert a is not gone
        if b is not gone:
            assert a is b
    gone.healthy = True
    assert [m.pick((), k) for k in keys] == before  # back: its keys come back to it


@pytest.mark.parametrize("factor", [1.0, 1.25, 2.0])
def test_one_hot_prefix_never_loads_a_replica_past_the_bound(factor):
    """Requests of one key pile up without finishing: each goes to the key's replica only while
    it then holds at most factor x the mean (rounded up); the rest go to the least loaded."""
    m = _model(load_factor=factor)
    key = 42
    for _ in range(60):
        loads = [x.outstanding for x in m.replicas]
        r = m.pick((), key)
        cap = math.ceil(factor * (sum(loads) + 1) / len(loads))
        assert r.outstanding + 1 <= cap or r.outstanding == min(loads)
        r.outstanding += 1
    home = max(m.replicas, key=lambda x: x.picks[routing.AFFINITY] + x.picks[routing.PLACED])
    assert home.picks[routing.AFFINITY] >= 14
    assert sum(x.picks[routing.OVERFLOW] for x in m.replicas) > 0
    assert max(x.outstanding for x in m.replicas) <= math.ceil(factor * 60 / 4)


def test_a_new_key_goes_to_the_least_loaded_and_stays_there():
    """A key's first request has no cache to win: it goes to the idlest replica (the key's
    rendezvous order only breaks ties), even when that order ranks a busy one first; from
    then on the key goes back there, also past an idle replica, within the bound."""
    m = _model(urls=URLS[:2])
    first = m.pick((), 1)
    first.outstanding = 1
    # a key whose rendezvous order puts `first` ahead: placed on the idle one all the same
    key = next(k for k in range(2, 1000) if max(m.replicas, key=lambda r: routing._mix(k ^ r.salt)) is first)
    other = m.pick((), key)
    assert other is not first
    assert other.picks[routing.PLACED] == 1
    assert m.pick((), 1) is first  # 2 in flight there, 0 on the other: within ceil(1.25 x 1)
    assert first.picks[routing.AFFINITY] == 1
    first.outstanding = 3
    assert m.pick((), 1) is other  # 4 would be over ceil(1.25 x 4 / 2) = 3
    assert other.picks[routing.OVERFLOW] == 1
    first.outstanding = 0
    assert m.pick((), 1) is first  # the key stayed with its replica


def test_affinity_skips_draining_excluded_unhealthy_and_open_replicas():
    m = _model(urls=URLS[:2])
    key = 7
    home = m.pick((), key)
    other = next(r for r in m.replicas if r is not home)
    assert m.pick((home,), key) is other  # a retry goes elsewhere
    home.draining = True
    assert m.pick((), key) is other
    home.draining = False
    for _ in range(5):
        home.breaker.failure(hard=True)
    assert m.pick((), key) is other
    other.healthy = False
    assert m.pick((), key) is None


def test_least_outstanding_stays_the_default_and_counts_its_picks():
    m = Router(C.parse({"models": [{"name": "m", "replicas": URLS[:2]}]})).get("m")
    assert m.policy == "least_outstanding"
    a, b = m.replicas
    a.outstanding = 2
    assert m.pick() is b
    assert b.picks[routing.LEAST] == 1


@pytest.mark.parametrize(
    ("routing_cfg", "message"),
    [
        (
            {"policy": "round_robin"},
            "routing.policy: 'round_robin' is not one of least_outstanding, prefix_affinity, load_aware",
        ),
        ({"policy": "prefix_affinity", "load_factor": 0.9}, "routing.load_factor"),
        ({"policy": "prefix_affinity", "prefix_chars": 0}, "routing.prefix_chars"),
        ({"policy": "prefix_affinity", "spread": 2}, "spread"),
    ],
)
def test_a_wrong_routing_setting_names_itself(routing_cfg, message):
    with pytest.raises(C.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        C.parse({"models": [{"name": "m", "replicas": URLS[:1], "routing": routing_cfg}]})


def test_through_the_gateway_each_conversation_stays_on_one_replica(stubs, gateway):
    """Three stub replicas behind a real gateway, prefix_affinity: twelve conversations, sent
    turn by turn with their growing history, each reach one replica all along, and they spread
    over the replicas; the picks show in /metrics."""
    replicas = [stubs(["chat-a"]) for _ in range(3)]
    cfg = base_config([r.url for r in replicas], [stubs(["embed-a"]).url])
    cfg["models"][0].update({"routing": {"policy": "prefix_affinity"}, "probe": "models"})
    g = gateway(cfg)
    wait_ready(g)
    seen: dict[int, set] = {}
    for turn in range(3):
        for conv in range(12):
            turns = [f"Conversation {conv}: what is {conv} squared?"]
            for t in range(turn):
                turns += [f"It is {conv * conv}.", f"And {conv} cubed, step {t}?"]
            before = [r.stats()["posts"] for r in replicas]
            status, _, _ = g.request("POST", "/v1/chat/completions", {**_chat("Be brief.", *turns), "model": "chat-a"})
            assert status == 200
            seen.setdefault(conv, set()).update(j for j, r in enumerate(replicas) if r.stats()["posts"] > before[j])
    assert all(len(s) == 1 for s in seen.values()), seen
    assert len(set().union(*seen.values())) >= 2, seen
    text = g.request("GET", "/metrics", key=None)[2].decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("llm_replica_picks_total{")]

    def picks(how: str) -> float:
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if f'how="{how}"' in ln and 'model="chat-a"' in ln)

    assert (picks("placed"), picks("affinity"), picks("overflow")) == (12, 24, 0), lines


def test_vllm_metrics_give_every_clients_load():
    body = (
        b"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        b'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        b'vllm:num_requests_running{engine="1",model_name="m"} 1.0\n'
        b'vllm:num_requests_waiting{engine="0",model_name="m"} 5.0\n'
        b'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0\n'
        b'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
    )
    assert load.parse(body) == (9.0, 0.25)  # both engines; a longer name sharing the prefix is not it
    assert load.parse(b'vllm:num_requests_running{engine="0"} 1.0\n') is None  # not all three: not vLLM


def test_load_aware_counts_the_other_clients_load_from_fresh_readings_only():
    m = _model("load_aware", URLS[:2])
    a, b = m.replicas
    a.outstanding, b.outstanding = 1, 2
    assert m.pick() is a  # no readings: its own count, as least_outstanding
    now = time.monotonic()
    # vLLM on a counts 6 (this gateway had 1 of them then): 5 from other clients
    a.load, b.load = (6.0, 1, 0.1, now), (2.0, 2, 0.1, now)
    assert m.pick() is b
    assert b.picks[routing.LOAD] == 1
    a.load = (6.0, 1, 0.1, now - 10)  # stale: not used
    assert m.pick() is a
    a.outstanding = b.outstanding = 0
    a.load, b.load = (0.0, 0, 0.9, now), (0.0, 0, 0.2, now)
    assert m.pick() is b  # level: the fuller KV cache loses


def test_through_the_gateway_load_aware_avoids_a_replica_busy_with_others(stubs, gateway):
    """Two stub replicas, load_aware: when one reports 20 requests waiting (other clients'), the
    gateway's requests go to the other within a poll or two, and come back when it clears."""
    a, b = stubs(["chat-a"]), stubs(["chat-a"])
    cfg = base_config([a.url, b.url], [stubs(["embed-a"]).url])
    cfg["models"][0].update({"routing": {"policy": "load_aware"}, "probe": "models"})
    g = gateway(cfg)
    wait_ready(g)

    def served(n: int) -> tuple[int, int]:
        before = a.stats()["posts"], b.stats()["posts"]
        for _ in range(n):
            assert g.chat()[0] == 200
        return a.stats()["posts"] - before[0], b.stats()["posts"] - before[1]

    for busy, idle, idle_index in ((a, b, 1), (b, a, 0)):
        busy.control(vllm_waiting=20)
        idle.control(vllm_waiting=0)
        polls = busy.stats()["gets"].get("/metrics", 0)
        deadline = time.monotonic() + 30  # a bound for a busy CI machine; ~2 s here
        while busy.stats()["gets"].get("/metrics", 0) < polls + 2:  # a whole poll round since the change
            assert time.monotonic() < deadline, "the gateway does not poll /metrics"
            time.sleep(0.1)
        assert served(10)[idle_index] == 10
    text = g.request("GET", "/metrics", key=None)[2].decode()
    assert 'how="load_aware"' in text
