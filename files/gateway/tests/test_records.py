"""Usage records in a real PostgreSQL: one row per request with the upstream's tokens, nothing
lost while the database is away or the gateway restarts, the request path never waiting."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from citadel_gateway.records import Journal
from conftest import base_config, free_port, wait_ready
from pg_server import PASSWORD, PgServer
from test_streams import raw_stream


@pytest.fixture(scope="module")
def pg():
    server = PgServer(free_port())
    yield server
    server.close()


@pytest.fixture
def usage_cfg(pg, stubs, tmp_path):
    pg.psql("TRUNCATE citadel.usage_events")
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    secret = tmp_path / "usage-password"
    secret.write_text(PASSWORD + "\n")
    cfg = base_config([a.url], [e.url], health={"interval_s": 60, "timeout_s": 2})
    cfg["usage"] = {
        "database_url": pg.url,
        "password_file": str(secret),
        "gateway": "gw-test",
        "journal_dir": str(tmp_path / "journal"),
        "batch_size": 20,
        "flush_interval_s": 0.2,
        "connect_timeout_s": 1,
        "insert_timeout_s": 2,
    }
    return cfg, a


def _rid() -> dict:
    return {"X-Request-Id": f"t-{uuid.uuid4().hex[:16]}"}


def _metric(g, outcome: str) -> float:
    for ln in g.request("GET", "/metrics", key=None)[2].decode().splitlines():
        if ln.startswith("llm_usage_events_total{") and f'outcome="{outcome}"' in ln:
            return float(ln.rsplit(" ", 1)[1])
    return 0.0


def test_every_request_is_one_row_with_the_upstreams_tokens(pg, usage_cfg, gateway):
    cfg, stub = usage_cfg
    g = gateway(cfg)
    wait_ready(g)
    stub.control(chunks=4)
    want = {}
    for key in ("ops", "limited"):
        h = _rid()
        assert g.chat(key=key, headers=h)[0] == 200
        want[h["X-Request-Id"]] = (key, "chat-a", 200, 7, 3, False)
    h = _rid()
    assert (
        g.request("POST", "/v1/embeddings", {"model": "embed-a", "input": ["a"]}, key="embed-only", headers=h)[0] == 200
    )
    want[h["X-Request-Id"]] = ("embed-only", "embed-a", 200, 2, 0, False)
    h = _rid()
    status, _, _ = g.request("POST", "/v1/embeddings", {"model": "chat-a", "input": "a"}, key="embed-only", headers=h)
    assert status == 403  # a refusal of a valid key is a row too: who tried what
    want[h["X-Request-Id"]] = ("embed-only", "chat-a", 403, -1, -1, False)
    status, events, clean = raw_stream(g.port, {"model": "chat-a", "messages": [], "stream": True})
    assert (status, clean) == (200, True)
    assert not any(b'"usage"' in e for e in events)
    assert g.request("POST", "/v1/chat/completions", {"model": "chat-a"}, key="wrong-key")[0] == 401
    rows = pg.wait_rows(len(want) + 1)
    by_id = {r[0]: r[1:] for r in rows}
    assert len(rows) == len(want) + 1, "one row per request of a valid key; the 401 has none"
    for rid, row in want.items():
        assert by_id[rid] == row
    (stream,) = [r for rid, r in by_id.items() if rid not in want]
    assert stream == ("ops", "chat-a", 200, 7, 4, False)
    assert pg.psql("SELECT count(DISTINCT event_id), min(gateway), max(gateway) FROM citadel.usage_events") == (
        f"{len(rows)}|gw-test|gw-test"
    )
    # times travel as integer microseconds: back as timestamps and milliseconds
    times = (
        "SELECT bool_and(ts BETWEEN now() - interval '1 minute' AND now()), "
        "bool_and(latency_ms > 0 AND latency_ms < 10000), count(ttft_ms), "
        "bool_and(ttft_ms > 0 AND ttft_ms <= latency_ms) FROM citadel.usage_events"
    )
    assert pg.psql(times) == "t|t|1|t", "the stream alone has a time to first token, within its latency"


def _load(g, seconds: float, clients: int) -> tuple[list, list]:
    """``clients`` threads sending chats for ``seconds``, each answer's (request id, status)
    appended to the list returned with the threads (a refused connection counts as status 0)."""
    results: list = []

    def client() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            h = _rid()
            try:
                status = g.chat(headers=h, timeout=10)[0]
            except OSError:
                status = 0
            results.append((h["X-Request-Id"], status))

    workers = [threading.Thread(target=client) for _ in range(clients)]
    for w in workers:
        w.start()
    return results, workers


def test_the_database_away_under_load_loses_no_event_and_fails_no_request(pg, usage_cfg, gateway):
    cfg, _ = usage_cfg
    g = gateway(cfg)
    wait_ready(g)
    results, workers = _load(g, 8, 4)
    time.sleep(1)
    pg.stop()
    try:
        time.sleep(4)
        assert _metric(g, "journaled") > 0, "batches went to the journal while the database was away"
    finally:
        pg.start()
    for w in workers:
        w.join(30)
    assert results
    assert {s for _, s in results} == {200}, "no request failed while the database was away"
    rows = pg.wait_rows(len(results), timeout=40)
    assert sorted(r[0] for r in rows) == sorted(rid for rid, _ in results)
    assert _metric(g, "dropped") == 0
    assert _metric(g, "replayed") > 0


def test_a_gateway_restart_under_load_loses_no_event(pg, usage_cfg, gateway, tmp_path):
    cfg, _ = usage_cfg
    cfg["usage"]["flush_interval_s"] = 5  # most events are still queued when SIGTERM comes
    g = gateway(cfg)
    wait_ready(g)
    results, workers = _load(g, 3, 3)
    time.sleep(1.5)
    g.signal(signal.SIGTERM)
    for w in workers:
        w.join(30)
    g.proc.wait(20)
    served = [rid for rid, s in results if s == 200]
    assert served
    rows = pg.wait_rows(len(served))
    assert set(served) <= {r[0] for r in rows}, "every answered request was written at shutdown"


def test_a_reload_turns_recording_on_and_hands_the_writer_over_under_load(pg, usage_cfg, gateway):
    cfg, _ = usage_cfg
    usage = cfg.pop("usage")
    g = gateway(cfg)  # no usage section: nothing recorded
    wait_ready(g)
    assert g.chat(headers=_rid())[0] == 200
    cfg["usage"] = usage
    g.write(cfg)
    g.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "usage writer replaced: recording" not in g.logs():
        assert time.monotonic() < deadline, g.logs()
        time.sleep(0.05)
    results, workers = _load(g, 4, 3)
    time.sleep(1.5)
    cfg["usage"] = {**usage, "flush_interval_s": 5, "gateway": "gw-reloaded"}  # rows still queued at the swap
    g.write(cfg)
    g.signal(signal.SIGHUP)
    for w in workers:
        w.join(30)
    assert results
    assert {s for _, s in results} == {200}
    rows = pg.wait_rows(len(results), timeout=20)
    assert sorted(r[0] for r in rows) == sorted(rid for rid, _ in results), "every request after the first reload, once"
    names = pg.psql("SELECT string_agg(DISTINCT gateway, ',' ORDER BY gateway) FROM citadel.usage_events")
    assert names == "gw-reloaded,gw-test", "the second writer took over under its own settings"


def test_events_journaled_at_shutdown_are_written_by_the_next_start(pg, usage_cfg, gateway):
    cfg, _ = usage_cfg
    pg.stop()
    try:
        g = gateway(cfg, name="first")
        wait_ready(g)
        ids = []
        for _ in range(5):
            h = _rid()
            assert g.chat(headers=h)[0] == 200
            ids.append(h["X-Request-Id"])
        g.stop()
        assert Journal(cfg["usage"]["journal_dir"], 1 << 30).rows == 5
    finally:
        pg.start()
    g2 = gateway(cfg, name="second")
    wait_ready(g2)
    rows = pg.wait_rows(5)
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert not Journal(cfg["usage"]["journal_dir"], 1 << 30)


def test_a_client_string_with_nul_is_recorded(pg, usage_cfg, gateway):
    """PostgreSQL refuses NUL in text and jsonb: the client's model name is recorded with U+FFFD."""
    cfg, _ = usage_cfg
    g = gateway(cfg)
    wait_ready(g)
    h = _rid()
    assert g.request("POST", "/v1/chat/completions", {"model": "a\u0000b", "messages": []}, headers=h)[0] == 404
    rows = pg.wait_rows(1)
    assert [r[0] for r in rows] == [h["X-Request-Id"]]
    assert pg.psql("SELECT requested_model = 'a' || chr(65533) || 'b', status FROM citadel.usage_events") == "t|404"


def test_a_batch_the_database_refuses_is_set_aside_and_the_rest_goes_on(pg, tmp_path):
    """A batch refused for its data (SQLSTATE class 22) is never retried: kept as .bad, counted as
    dropped; the writer goes on with the next batch."""
    from citadel_gateway.config.schema import Usage
    from citadel_gateway.records import UsageWriter

    pg.psql("TRUNCATE citadel.usage_events")
    good = json.dumps(
        {"ts": time.time(), "event_id": "e-1", "request_id": "r-1", "key": "k", "requested": "m", "model": "m",
         "endpoint": "chat", "status": 200, "duration_ms": 1.5, "replica": "h:1", "attempts": 1}
    )  # fmt: skip
    counts = dict.fromkeys(("queued", "written", "journaled", "replayed", "dropped"), 0)
    cfg = Usage(database_url=pg.url, password=PASSWORD, gateway="gw", journal_dir=str(tmp_path), batch_size=1)

    async def run() -> None:
        w = UsageWriter(cfg, counts)
        w.start()
        w.record(good.replace('"status": 200', '"status": "not a number"'))
        w.record(good)
        await w.stop(5)

    asyncio.run(run())
    assert {k: v for k, v in counts.items() if v} == {"queued": 2, "written": 1, "dropped": 1}
    assert pg.psql("SELECT request_id, status, latency_ms, gateway FROM citadel.usage_events") == "r-1|200|1.5|gw"
    (bad,) = tmp_path.glob("*.bad")
    assert "not a number" in bad.read_text()
    assert not list(tmp_path.glob("*.json")), "nothing left to replay"


def test_the_journal_keeps_order_and_its_bound(tmp_path):
    j = Journal(str(tmp_path), 200)
    assert j.append('[{"a":1},{"b":2}]', 2)
    assert j.append('[{"c":3}]', 1)
    assert not j.append("[" + "x" * 300 + "]", 1), "over max_bytes: refused, nothing written"
    (tmp_path / "000000000009.tmp").write_text("[[")  # a write cut by a crash
    (tmp_path / "000000000003.json").write_text("not json")
    j = Journal(str(tmp_path), 200)
    assert not list(tmp_path.glob("*.tmp"))
    assert (j.rows, bool(j)) == (3, True)
    assert (tmp_path / "000000000003.bad").read_text() == "not json", "an unreadable batch is set aside, not replayed"
    assert j.oldest() == ('[{"a":1},{"b":2}]', 2)
    j.pop()
    assert j.oldest() == ('[{"c":3}]', 1)
    j.pop(bad=True)  # the database refused its data
    assert (j.oldest(), j.rows, j.bytes) == (None, 0, 0)
    j.set_aside('[{"d":4}]')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000000002.bad", "000000000003.bad", "000000000004.bad"]
    assert Journal(str(tmp_path), 200).append("[]", 0)
    assert (tmp_path / "000000000005.json").exists(), "a new name after every batch file, kept or set aside"


def test_the_report_prints_what_the_table_holds(pg, usage_cfg, gateway, tmp_path):
    cfg, stub = usage_cfg
    g = gateway(cfg)
    wait_ready(g)
    for _ in range(3):
        assert g.chat()[0] == 200
    stub.control(status=503, count=10)
    assert g.chat()[0] in (502, 503)  # every attempt answered 503
    rows = pg.wait_rows(4)
    assert len(rows) == 4
    if not pg.psql("SELECT 1 FROM pg_roles WHERE rolname = 'citadel_report'"):
        pg.psql("CREATE ROLE citadel_report LOGIN PASSWORD 'report-password-0123456789'")
    pg.psql("GRANT USAGE ON SCHEMA citadel TO citadel_report; GRANT SELECT ON citadel.usage_events TO citadel_report")
    secret = tmp_path / "report-password"
    secret.write_text("report-password-0123456789")
    url = pg.url.replace("citadel_gateway@", "citadel_report@")
    out = subprocess.run(
        [sys.executable, "-m", "citadel_gateway", "usage", "--database-url", url, "--password-file", str(secret),
         "--since", "1h", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(ln) for ln in out.stdout.splitlines()]
    assert (row["name"], row["requests"], row["prompt_tokens"], row["completion_tokens"]) == ("chat-a", 4, 21, 9)
    assert row["error_ratio"] == 0.25
    assert 0 < row["p50_ms"] <= row["p95_ms"]
    table = subprocess.run(
        [sys.executable, "-m", "citadel_gateway", "usage", "--database-url", url, "--password-file", str(secret),
         "--by", "key"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert table.splitlines()[0].split()[:3] == ["key", "requests", "errors"]
    assert table.splitlines()[1].split()[:3] == ["ops", "4", "25.0%"]

    def usage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "citadel_gateway", "usage", "--database-url", url, "--password-file", str(secret),
             *args], capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    first, last = pg.psql("SELECT min(ts), max(ts) FROM citadel.usage_events").split("|")
    iso = lambda t: t.replace(" ", "T") + ":00"  # noqa: E731 - psql's "2026-12-07 01:02:03.4+00"
    out = usage("--since", iso(first), "--until", iso(last), "--json")  # the last row is after the window
    assert [json.loads(ln)["requests"] for ln in out.stdout.splitlines()] == [3], out.stderr
    out = usage("--since", "2020-01-01T00:00:00Z", "--until", "2020-01-02T00:00:00Z")
    assert out.stdout.strip() == "no requests from 2020-01-01 00:00:00+0000 to 2020-01-02 00:00:00+0000"
    out = usage("--since", "yesterday")
    assert out.returncode == 2
    assert "expected an age (30m, 24h, 7d) or a time with its offset" in out.stderr
