"""Usage through the lab gateway, from the real vLLM servers: every request's access-log line and
its one row in PostgreSQL carry the tokens vLLM reported, a streamed client that did not ask for
usage gets none, and no row is lost while PostgreSQL is away under load."""

import contextlib
import json
import time
import uuid

import lab_inventory
import lab_ops
import openai
from lab_ops import API_KEY, CACHE
from probe import Probe

# the plain-HTTP gateway (the HTTPS one's clients are test_gateway_tls.py's)
GATEWAY = next(n for n in lab_inventory.names("llm_gateway") if lab_inventory.gateway_tls(n) is None)
LIMITED_KEY = (CACHE / "lab-gateway-limited-key").read_text().strip()  # may use all-minilm-l6-v2 only
PROMPT = [{"role": "user", "content": "Name three colours."}]


def _client(key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lab_inventory.gateway_url(GATEWAY)}/v1", api_key=key, timeout=120, max_retries=0)


RUN = f"usage-{uuid.uuid4().hex[:8]}"  # this run's request ids: RUN-<n>


def _rid() -> dict:
    return {"X-Request-Id": f"{RUN}-{uuid.uuid4().hex[:12]}"}


def _log_lines(rids: set[str], timeout: float = 15) -> dict[str, dict]:
    """The gateway's access-log lines (journald) of these request ids."""
    on = lab_ops.host(GATEWAY)
    deadline = time.monotonic() + timeout
    while True:
        out = on.run("journalctl -u citadel-gateway.service -o cat --no-pager -n 5000 --grep usage-").stdout
        found = {}
        for ln in out.splitlines():
            if ln.startswith('{"ts"') and (rec := json.loads(ln))["request_id"] in rids:
                found[rec["request_id"]] = rec
        if len(found) == len(rids) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_every_request_logs_the_tokens_vllm_reported():
    """Two keys, two models, streamed and not: each request's line has the usage the client saw
    (a stream without include_usage: the same as the identical stream that asked for it)."""
    lab, limited = _client(API_KEY), _client(LIMITED_KEY)
    want: dict[str, tuple[str, str, int, int]] = {}  # rid -> (key, model, prompt, completion)

    h = _rid()
    r = lab.chat.completions.create(model="smollm2", messages=PROMPT, max_tokens=12, temperature=0, extra_headers=h)
    want[h["X-Request-Id"]] = ("lab", "smollm2-135m", r.usage.prompt_tokens, r.usage.completion_tokens)
    for client, name in ((lab, "lab"), (limited, "lab-limited")):
        h = _rid()
        e = client.embeddings.create(model="all-minilm-l6-v2", input=["one", "two"], extra_headers=h)
        want[h["X-Request-Id"]] = (name, "all-minilm-l6-v2", e.usage.prompt_tokens, 0)

    asked, plain = _rid(), _rid()
    chunks = list(
        lab.chat.completions.create(
            model="smollm2-135m",
            messages=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=asked,
        )
    )
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1, "a client that asked for usage gets it once"
    u = usages[0]
    want[asked["X-Request-Id"]] = ("lab", "smollm2-135m", u.prompt_tokens, u.completion_tokens)
    t0 = time.perf_counter()
    stream = lab.chat.completions.create(
        model="smollm2-135m", messages=PROMPT, max_tokens=12, temperature=0, stream=True, extra_headers=plain
    )
    chunks = [next(stream)]
    client_ttft_ms = (time.perf_counter() - t0) * 1000  # to the first chunk, as the client saw it
    chunks += list(stream)
    assert chunks, "the stream arrived"
    assert all(c.usage is None for c in chunks), "the client did not ask for usage: it gets no usage chunk"
    assert all(c.choices for c in chunks), "no chunk without choices (the usage event) reached the client"
    want[plain["X-Request-Id"]] = ("lab", "smollm2-135m", u.prompt_tokens, u.completion_tokens)

    lines = _log_lines(set(want))
    assert set(lines) == set(want), f"lines for {sorted(lines)} of {sorted(want)}"
    got = {
        rid: (rec["key"], rec["model"], rec.get("prompt_tokens"), rec.get("completion_tokens"))
        for rid, rec in lines.items()
    }
    assert got == want
    assert all(lines[r]["ttft_ms"] > 0 for r in (asked["X-Request-Id"], plain["X-Request-Id"]))
    assert {rec["status"] for rec in lines.values()} == {200}

    rows = lab_ops.usage_rows(RUN, len(want))
    assert len(rows) == len(want), f"one row per request: {len(rows)} rows for {len(want)} requests"
    stored = {
        r["request_id"]: (r["key_name"], r["model"], int(r["prompt_tokens"]), int(r["completion_tokens"])) for r in rows
    }
    assert stored == want, "each row holds the tokens vLLM reported"
    assert {(r["status"], r["cut"]) for r in rows} == {("200", "f")}
    rc, ttft = lab_ops.psql(f"SELECT ttft_ms FROM citadel.usage_events WHERE request_id = '{plain['X-Request-Id']}'")
    assert rc == 0, ttft
    # the gateway's time to the first byte it relayed: within the client's, a little earlier (the
    # margin is the client's own work and scheduling on a busy 2-core machine, not the gateway's)
    assert client_ttft_ms - 250 <= float(ttft) <= client_ttft_ms, (ttft, client_ttft_ms)


def test_postgresql_away_60s_under_load_fails_no_request_and_loses_no_row():
    """PostgreSQL stopped for 60 s while every gateway serves a probe load: no request fails,
    the rows wait in each gateway's journal, and once the database is back every request is
    exactly one row."""
    (db,) = lab_inventory.names("database")
    on = lab_ops.host(db)
    with contextlib.ExitStack() as stack:
        probes = [
            stack.enter_context(
                Probe(API_KEY, port=lab_inventory.published_port(n, 8000), workers=2, tls=lab_inventory.gateway_tls(n))
            )
            for n in lab_inventory.names("llm_gateway")
        ]
        time.sleep(3)
        assert on.run("systemctl stop postgresql").rc == 0
        try:
            time.sleep(60)
        finally:
            assert on.run("systemctl start postgresql").rc == 0
        time.sleep(3)
    for p in probes:
        assert p.report.clean(), str(p.report)
    ids = [i for p in probes for i in p.report.ids]
    # the writers retry with a backoff that reached 30 s while the database was away
    got = [r["request_id"] for p in probes for r in lab_ops.usage_rows(p.prefix, len(p.report.ids), timeout=60)]
    assert sorted(got) == sorted(ids), f"{len(got)} rows for {len(ids)} requests"
