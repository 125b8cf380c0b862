"""Usage: the tokens of every answer (streamed or not) in the access log and the counters, and a
streamed client sees exactly the stream it asked for (the usage event only when it asked)."""

from __future__ import annotations

import json
import time

import openai
import pytest
from citadel_gateway.usage import StreamUsage, ask_for_usage
from conftest import KEYS, base_config, wait_ready
from test_streams import raw_stream

USAGE = b'data: {"id":"s","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n'
TOKEN = b'data: {"id":"s","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


def test_the_usage_event_the_gateway_asked_for_is_left_out_and_read():
    u = StreamUsage(hide=True)
    assert u.feed(TOKEN) is TOKEN  # the common chunk passes untouched
    assert u.feed(TOKEN + USAGE + DONE) == TOKEN + DONE
    assert u.flush() == b""
    assert u.tokens == (7, 3)


def test_the_usage_event_the_client_asked_for_is_passed_on_and_read():
    u = StreamUsage(hide=False)
    assert u.feed(USAGE) == USAGE
    assert u.tokens == (7, 3)


def test_an_event_split_across_chunks_is_held_until_its_end():
    u = StreamUsage(hide=True)
    whole = TOKEN + USAGE + DONE
    cut1, cut2 = len(TOKEN) + 20, len(TOKEN) + len(USAGE) + 3
    out = u.feed(whole[:cut1]) + u.feed(whole[cut1:cut2]) + u.feed(whole[cut2:]) + u.flush()
    assert out == TOKEN + DONE
    assert u.tokens == (7, 3)


def test_crlf_events_and_an_unfinished_last_event():
    u = StreamUsage(hide=True)
    crlf = USAGE.replace(b"\n", b"\r\n")
    assert u.feed(TOKEN + crlf + b"data: [DO") == TOKEN
    assert u.flush() == b"data: [DO"  # the end of the stream gives back what was held
    assert u.tokens == (7, 3)


def test_an_event_that_mentions_usage_in_its_content_is_not_taken_for_the_usage_event():
    u = StreamUsage(hide=True)
    content = b'data: {"choices":[{"index":0,"delta":{"content":"\\"usage\\": none"}}]}\n\n'
    assert u.feed(content) == content
    assert u.tokens is None


def test_ask_for_usage_keeps_the_clients_stream_options():
    obj = {"stream": True}
    assert ask_for_usage(obj)
    assert obj["stream_options"] == {"include_usage": True}
    obj = {"stream": True, "stream_options": {"continuous_usage_stats": False, "include_usage": False}}
    assert ask_for_usage(obj)
    assert obj["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    obj = {"stream": True, "stream_options": {"include_usage": True}}
    assert not ask_for_usage(obj)
    obj = {"stream": True, "stream_options": "yes"}  # not ours to fix: the upstream answers 400
    assert not ask_for_usage(obj)
    assert obj["stream_options"] == "yes"


@pytest.fixture
def usage_gw(stubs, gateway):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    g = gateway(base_config([a.url], [e.url], health={"interval_s": 60, "timeout_s": 2}))
    wait_ready(g)
    return g, a


def _lines(g, n: int) -> list[dict]:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        recs = [json.loads(x) for x in g.logs().splitlines() if x.startswith('{"ts"')]
        if len(recs) >= n:
            return recs
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} access log lines")


def _counter(g, name: str, **labels) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for ln in g.request("GET", "/metrics", key=None)[2].decode().splitlines():
        if ln.startswith(name + "{") and all(w in ln for w in want):
            return float(ln.rsplit(" ", 1)[1])
    return 0.0


def test_a_stream_without_include_usage_gets_no_usage_event_but_is_counted(usage_gw):
    g, a = usage_gw
    a.control(chunks=4)
    status, events, clean = raw_stream(g.port, {"model": "chat-a", "messages": [], "stream": True})
    assert (status, clean) == (200, True)
    assert len(events) == 5
    assert events[-1] == b"[DONE]"
    assert not any(b'"usage"' in e for e in events), "the client did not ask for usage"
    assert a.stats()["include_usage"] == [True], "the gateway asked the upstream for it"
    rec = _lines(g, 1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (7, 4)
    assert rec["requested"] == rec["model"] == "chat-a"
    assert rec["ttft_ms"] > 0
    assert _counter(g, "llm_key_tokens_total", key="ops", model="chat-a", type="completion") == 4
    assert _counter(g, "llm_tokens_processed_total", model="chat-a", type="prompt") == 7


def test_a_stream_that_asks_for_usage_receives_it_once(usage_gw):
    g, a = usage_gw
    a.control(chunks=3)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{g.port}/v1", api_key=KEYS["ops"], max_retries=0)
    chunks = list(
        client.chat.completions.create(model="chatty", messages=[], stream=True, stream_options={"include_usage": True})
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (7, 3)
    rec = _lines(g, 1)[-1]
    assert (rec["requested"], rec["model"], rec["completion_tokens"]) == ("chatty", "chat-a", 3)


@pytest.mark.parametrize("split_done", [False, True])
def test_a_client_that_leaves_on_done_got_a_whole_answer_and_it_is_counted(usage_gw, split_done):
    """The openai SDK closes its connection as soon as it reads [DONE]; an upstream whose chunked
    terminator comes later must not turn that into a 499 without usage (nor a replica failure),
    also when [DONE] itself came in two chunks."""
    g, a = usage_gw
    a.control(chunks=3, end_delay=1.0, split_done=split_done)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{g.port}/v1", api_key=KEYS["ops"], max_retries=0)
    for asked in (True, False):
        extra = {"stream_options": {"include_usage": True}} if asked else {}
        chunks = list(client.chat.completions.create(model="chat-a", messages=[], stream=True, **extra))
        assert [c.usage is not None for c in chunks] == [False] * 3 + [True] * asked
    recs = _lines(g, 2)[-2:]
    assert [(r["status"], r["prompt_tokens"], r["completion_tokens"]) for r in recs] == [(200, 7, 3)] * 2
    assert not any(r.get("cut") for r in recs)
    assert _counter(g, "llm_key_requests_total", key="ops", model="chat-a", status="200") == 2
    assert _counter(g, "llm_key_requests_total", key="ops", model="chat-a", status="499") == 0
    assert _counter(g, "llm_key_tokens_total", key="ops", model="chat-a", type="completion") == 6


def test_whole_answers_and_embeddings_are_counted_per_key(usage_gw):
    g, _ = usage_gw
    for _ in range(2):
        assert g.chat()[0] == 200
    status, _, _ = g.request("POST", "/v1/embeddings", {"model": "embed-a", "input": ["a", "b"]}, key="embed-only")
    assert status == 200
    recs = _lines(g, 3)
    assert [(r["key"], r["prompt_tokens"], r["completion_tokens"]) for r in recs[-3:]] == [
        ("ops", 7, 3),
        ("ops", 7, 3),
        ("embed-only", 4, 0),
    ]
    assert _counter(g, "llm_key_requests_total", key="ops", model="chat-a", status="200") == 2
    assert _counter(g, "llm_key_tokens_total", key="ops", model="chat-a", type="prompt") == 14
    assert _counter(g, "llm_key_tokens_total", key="embed-only", model="embed-a", type="prompt") == 4
    assert _counter(g, "llm_key_requests_total", key="embed-only", model="embed-a", status="200") == 1


def test_a_cut_stream_is_marked_in_the_access_log(usage_gw):
    g, a = usage_gw
    a.control(chunks=10, break_after=2)
    status, _, clean = raw_stream(g.port, {"model": "chat-a", "messages": [], "stream": True})
    assert status == 200
    assert not clean
    rec = _lines(g, 1)[-1]
    assert rec["cut"] is True
    assert rec["status"] == 502
    assert "prompt_tokens" not in rec


def test_an_unknown_models_long_name_is_recorded_bounded(usage_gw):
    g, _ = usage_gw
    status, _, _ = g.request("POST", "/v1/chat/completions", {"model": "x" * 100_000, "messages": []})
    assert status == 404
    rec = _lines(g, 1)[-1]
    assert rec["requested"] == "x" * 256
    assert rec["model"] is None
