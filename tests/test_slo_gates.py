"""SLO gates of the load tests (loadtests/slo.py, loadtests/catalog.py), without a lab.

The gate rules are checked on Locust's own stats objects; the catalog is read
from the real inventories with ansible-inventory; one short Locust run against
an in-test OpenAI-shaped server (a measuring instrument with known timings)
proves the locustfile's streaming measurements and its exit code.
"""

import csv
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

# Locust's stats objects without gevent patching this whole pytest process.
os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
from locust.stats import RequestStats  # noqa: E402

del os.environ["LOCUST_SKIP_MONKEY_PATCH"]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "loadtests"))

import catalog  # noqa: E402
import slo  # noqa: E402
from conftest import pinned_catalog  # noqa: E402

LOCUST = Path(sys.executable).parent / "locust"


# -- naming and overrides ---------------------------------------------------------------------------


def test_entry_names_round_trip():
    assert slo.entry_name("smollm2-135m", slo.CHAT_SHORT) == "smollm2-135m chat short"
    assert slo.parse_entry("smollm2-135m chat short") == ("smollm2-135m", "chat short", False)
    assert slo.parse_entry(slo.entry_name("m", slo.STREAM_TPS, direct=True)) == ("m", "stream tokens/s", True)


def test_overrides_parse_and_reject_mistakes():
    known = ["smollm2-135m", "all-minilm-l6-v2"]
    assert slo.parse_overrides(["smollm2-135m=1", "all-minilm-l6-v2=20,all=900"], known) == {
        "smollm2-135m": 1.0,
        "all-minilm-l6-v2": 20.0,
        "all": 900.0,
    }
    for bad, why in (
        ("smollm2-135m", "expected MODEL=NUMBER"),
        ("=3", "expected MODEL=NUMBER"),
        ("smollm2-135m=fast", "not a number"),
        ("smollm2-135m=-1", "negative"),
    ):
        with pytest.raises(ValueError, match=why):
            slo.parse_overrides([bad], known)
    with pytest.raises(ValueError, match="unknown model 'phi-3-mini'"):
        slo.parse_overrides(["phi-3-mini=100"], known)


def _model(name, avg, p95):
    return catalog.Model(name, ("chat",), "g", 1, avg, p95)


def test_targets_come_from_catalog_unless_overridden():
    models = [_model("a", 500, 750), _model("b", 2000, 3000)]
    goals = slo.targets(models, p95_ms={"a": 1}, avg_ms={"all": 100}, error_ratio=0.05)
    assert goals["a"] == slo.Target("a", avg_ms=100, p95_ms=1, error_ratio=0.05)
    assert goals["b"] == slo.Target("b", avg_ms=100, p95_ms=3000, error_ratio=0.05)
    assert slo.targets(models)["b"] == slo.Target("b", 2000, 3000, 0.01)


# -- gates on Locust's own stats --------------------------------------------------------------------


def _stats(requests):
    """A real Locust RequestStats fed with (name, method, response_time_ms, failed) tuples."""
    stats = RequestStats()
    for name, method, ms, failed in requests:
        stats.log_request(method, name, ms, 0)
        if failed:
            stats.log_error(method, name, "boom")
    return stats


def test_observe_gates_short_requests_and_counts_every_error():
    stats = _stats(
        [("m chat short", "POST", ms, False) for ms in range(100, 1100, 10)]  # 100 short requests
        + [("m chat medium", "POST", 9000, False)] * 20  # long: errors only, not latency
        + [("m stream", "POST", 9000, True)] * 2
        + [("m stream ttft", "TTFT", 5, False)] * 50  # derived rows: neither
        + [("m chat short @direct", "POST", 1, True)] * 50  # the comparison's direct half: neither
    )
    obs = slo.observe(stats.entries.values())["m"]
    assert obs.requests == 122
    assert obs.failures == 2
    assert obs.latency_requests == 100
    assert obs.avg_ms == pytest.approx(595)
    # Same p95 as Locust reports for that entry (its rounded histogram).
    assert obs.p95_ms == stats.entries[("m chat short", "POST")].get_response_time_percentile(0.95) == 1000


def test_p95_of_merged_entries_matches_locust_on_the_union():
    rows = [("m chat short", "POST", ms, False) for ms in (120, 130, 150, 2900)] + [
        ("m completion", "POST", ms, False) for ms in range(200, 4200, 40)
    ]
    merged = _stats([("all", "POST", ms, f) for _, _, ms, f in rows]).entries[("all", "POST")]
    obs = slo.observe(_stats(rows).entries.values())["m"]
    assert obs.p95_ms == merged.get_response_time_percentile(0.95)
    assert obs.avg_ms == pytest.approx(merged.avg_response_time)


def test_verdicts_pass_fail_and_name_the_failing_model():
    stats = _stats(
        [("fast chat short", "POST", 200, False)] * 99
        + [("fast chat short", "POST", 200, True)]  # exactly 1 %: allowed
        + [("slow chat short", "POST", 700, False)] * 10
        + [("slow embeddings", "POST", 800, False)] * 10
    )
    goals = slo.targets([_model("fast", 500, 750), _model("slow", 500, 750), _model("idle", 500, 750)])
    verdicts = slo.evaluate(goals, slo.observe(stats.entries.values()))
    by = {(v.model, v.metric): v for v in verdicts}
    assert by[("fast", "p95 ms")].passed
    assert by[("fast", "error ratio")].passed
    assert by[("fast", "error ratio")].measured == pytest.approx(0.01)
    assert by[("slow", "p95 ms")].measured == 800
    assert not by[("slow", "p95 ms")].passed
    assert not by[("slow", "avg ms")].passed  # 750 > 500
    assert not by[("idle", "requests")].passed  # a model that got no traffic cannot pass
    assert slo.failing_models(verdicts) == ["slow", "idle"]
    code, line = slo.summary(verdicts)
    assert code == 1
    assert line == "SLO gates FAILED for: slow, idle"
    table = slo.format_table(verdicts)
    assert table.splitlines()[0].split() == ["model", "metric", "target", "measured", "verdict"]
    assert ["slow", "p95", "ms", "750", "800", "FAIL"] in [line.split() for line in table.splitlines()]


def test_error_ratio_gate_fails_above_threshold():
    stats = _stats([("m chat short", "POST", 100, i < 2) for i in range(100)])
    verdicts = slo.evaluate(slo.targets([_model("m", 500, 750)]), slo.observe(stats.entries.values()))
    assert slo.summary(verdicts) == (1, "SLO gates FAILED for: m")
    relaxed = slo.evaluate(slo.targets([_model("m", 500, 750)], error_ratio=0.02), slo.observe(stats.entries.values()))
    assert slo.summary(relaxed) == (0, "SLO gates passed")


def test_comparison_pairs_gateway_with_direct():
    rows = slo.compare(
        {
            "m chat short": [100.0] * 19 + [110.0],
            "m chat short @direct": [100.0] * 20,
            "m embeddings": [10.0],  # no direct twin: not compared
        }
    )
    assert [(r.endpoint, r.gateway_p95_ms, r.direct_p95_ms) for r in rows] == [("m chat short", 100.0, 100.0)]
    assert rows[0].ratio == 1.0
    assert slo.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 0.95) == 19


# -- the catalog from the real inventories ----------------------------------------------------------


def test_lab_catalog_and_replicas_from_inventory():
    models = {m.name: m for m in catalog.load(REPO / "inventory/lab")}
    assert set(models) == {"smollm2-135m", "all-minilm-l6-v2", "smollm2-gguf"}
    chat = models["smollm2-135m"]
    # Whatever the lab catalog file says, read through ansible-inventory.
    lab = yaml.safe_load((REPO / "inventory/lab/group_vars/lab/models.yml").read_text())["citadel_models"]
    assert (chat.avg_ms, chat.p95_ms) == (lab[0]["latency_ms"]["avg"], lab[0]["latency_ms"]["p95"])
    # lab_publish: 11403 -> citadel-llm-01, 11413 -> citadel-llm-02's 11403.
    assert chat.replicas == ("http://127.0.0.1:11403", "http://127.0.0.1:11413")
    assert models["all-minilm-l6-v2"].replicas == ("http://127.0.0.1:11404",)
    assert models["all-minilm-l6-v2"].is_embedding
    # served at a base_url (llama.cpp): no replica of the inventory
    assert (models["smollm2-gguf"].replicas, models["smollm2-gguf"].port) == ((), None)


def test_production_catalog_targets_from_source_documents():
    pinned = json.dumps({"citadel_models": pinned_catalog(REPO / "group_vars/all/models.yml")})
    models = {m.name: m for m in catalog.load(REPO / "inventory/production", pinned)}
    assert (models["mixtral-8x7b"].avg_ms, models["mixtral-8x7b"].p95_ms) == (2000, 3000)
    assert (models["hermes-2"].avg_ms, models["hermes-2"].p95_ms) == (1500, 2500)
    assert (models["openchat-3.5"].avg_ms, models["openchat-3.5"].p95_ms) == (1000, 1500)
    assert (models["phi-3-mini"].avg_ms, models["phi-3-mini"].p95_ms) == (500, 750)
    assert models["mixtral-8x7b"].replicas == ("http://192.168.10.29:11400",)
    assert models["phi-3-mini"].replicas == ("http://192.168.10.28:11403",)


# -- the locustfile, end to end, against an instrument with known timings ---------------------------

FIRST_TOKEN_S = 0.10
TOKEN_GAP_S = 0.02


class _OpenAIShaped(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        self.server.seen_auth.add(auth)
        if auth not in ("Bearer test-key", None):  # None: a direct request to a replica
            return self._json(401, {"error": "bad key"})
        if self.path == "/v1/embeddings":
            time.sleep(0.01)
            return self._json(200, {"data": [{"embedding": [0.1] * 8}]})
        if self.path == "/v1/completions":
            time.sleep(0.05)
            return self._json(200, {"choices": [{"text": "x"}]})
        if not body.get("stream"):
            time.sleep(0.05)
            return self._json(200, {"choices": [{"message": {"content": "x"}}]})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        time.sleep(FIRST_TOKEN_S)
        n = body["max_tokens"]
        for i in range(n):
            if i:
                time.sleep(TOKEN_GAP_S)
            self._chunk(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n')
        self._chunk(b'data: {"choices":[],"usage":{"completion_tokens":%d}}\n\n' % n)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")


@pytest.fixture
def instrument():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIShaped)
    server.seen_auth = set()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()


def _locust(tmp_path, host, *args):
    env = {**os.environ, "CITADEL_API_KEY": "test-key", "PATH": f"{LOCUST.parent}:{os.environ['PATH']}"}
    run = subprocess.run(
        [str(LOCUST), "--config", "loadtests/locust.conf", "--host", host, "--csv", str(tmp_path / "r"),
         "--run-time", "6s", "-u", "4", "-r", "4", "--think-seconds", "0.1", "--medium-tokens", "10", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    rows = {}
    with open(tmp_path / "r_stats.csv") as f:
        for row in csv.DictReader(f):
            rows[row["Name"]] = row
    return run, rows


def test_locust_run_measures_streams_and_fails_named_model(tmp_path, instrument):
    run, rows = _locust(tmp_path, instrument.url, "--slo-p95-ms", "smollm2-135m=1")
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert instrument.seen_auth == {"Bearer test-key"}  # the key from CITADEL_API_KEY, on every request
    assert "SLO gates FAILED for: smollm2-135m\n" in out
    assert "all-minilm-l6-v2  error ratio" in out
    # One row per model/endpoint, all answered with the key.
    for name in (
        "smollm2-135m chat short",
        "smollm2-135m completion",
        "smollm2-135m stream",
        "all-minilm-l6-v2 embeddings",
    ):
        assert int(rows[name]["Request Count"]) > 0, name
        assert rows[name]["Failure Count"] == "0", name
    # Streams: time to first token is the instrument's 100 ms, not the whole stream (no buffering),
    # and the decode rate is at most one token per 20 ms.
    ttft = float(rows["smollm2-135m stream ttft"]["Median Response Time"])
    whole = float(rows["smollm2-135m stream"]["Median Response Time"])
    assert FIRST_TOKEN_S * 1000 * 0.9 <= ttft < whole - 9 * TOKEN_GAP_S * 1000 * 0.8
    tps = float(rows["smollm2-135m stream tokens/s"]["Average Response Time"])
    assert 15 <= tps <= 1.05 / TOKEN_GAP_S
    with open(tmp_path / "r_slo.csv") as f:
        gates = list(csv.DictReader(f))
    assert {(g["model"], g["metric"], g["passed"]) for g in gates} >= {
        ("smollm2-135m", "p95 ms", "False"),
        ("all-minilm-l6-v2", "p95 ms", "True"),
    }


def test_locust_compare_mode_reports_ratio(tmp_path, instrument):
    run, rows = _locust(
        tmp_path, instrument.url, "--compare-direct", "all-minilm-l6-v2", "--direct-url", instrument.url
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert instrument.seen_auth == {"Bearer test-key", None}  # the gateway key never goes to a replica
    assert int(rows["all-minilm-l6-v2 embeddings @direct"]["Request Count"]) > 0
    assert "Gateway vs direct" in out
    line = next(x for x in out.splitlines() if x.startswith("all-minilm-l6-v2 embeddings "))
    assert float(line.split()[5]) > 0  # the ratio column


# -- request mix and ramp ---------------------------------------------------------------------------


def _locustfile():
    import locustfile  # imports Locust: only after the no-monkey-patch import at the top

    return locustfile


def test_mix_follows_capabilities():
    lf = _locustfile()
    lab = catalog.load(REPO / "inventory/lab")
    plan = {(m.name, kind): w for m, kind, w in lf.build_plan(lab, lf._parse_mix(lf.DEFAULT_MIX))}
    assert plan == {
        ("smollm2-135m", "chat short"): 4,
        ("smollm2-135m", "chat medium"): 1,
        ("smollm2-135m", "stream"): 2,
        ("smollm2-135m", "completion"): 2,
        ("all-minilm-l6-v2", "embeddings"): 3,
        ("smollm2-gguf", "chat short"): 4,
        ("smollm2-gguf", "chat medium"): 1,
        ("smollm2-gguf", "stream"): 2,
        ("smollm2-gguf", "completion"): 2,
    }
    only_embeddings = lf.build_plan(lab, lf._parse_mix("embeddings=1,chat_short=0"))
    assert [(m.name, kind) for m, kind, _ in only_embeddings] == [("all-minilm-l6-v2", "embeddings")]
    with pytest.raises(ValueError, match="unknown kind"):
        lf._parse_mix("chat_long=1")


def test_staged_shape_steps_through_the_documents_plan(monkeypatch):
    from types import SimpleNamespace

    lf = _locustfile()
    opts = SimpleNamespace(
        staged=True, stages=lf.DEFAULT_STAGES, stage_seconds=60.0, run_time=0, num_users=3, spawn_rate=2
    )
    shape = lf.CitadelShape()
    shape.runner = SimpleNamespace(environment=SimpleNamespace(parsed_options=opts))
    at = {}
    for t in (0, 59, 60, 121, 180, 299, 300):
        monkeypatch.setattr(shape, "get_run_time", lambda t=t: t)
        at[t] = shape.tick()
    assert at == {0: (1, 2), 59: (1, 2), 60: (5, 2), 121: (10, 2), 180: (20, 2), 299: (50, 2), 300: None}
    # --run-time still bounds it; without --staged it is plain -u/-r.
    opts.run_time = 100
    monkeypatch.setattr(shape, "get_run_time", lambda: 100)
    assert shape.tick() is None
    opts.staged = False
    monkeypatch.setattr(shape, "get_run_time", lambda: 5)
    assert shape.tick() == (3, 2)
