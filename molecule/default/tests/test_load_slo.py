"""Locust against the lab gateway, the way `make load` runs it (loadtests/run.sh).

A short run at a small load (2 CPU cores serve the lab's vLLM) must pass the
lab catalog's SLO gates; a run with an impossible target must fail and name
the model. The key and the URL come from where `make load` takes them. The gateways' usage
report (`citadel-gateway usage`, from PostgreSQL) for a run's window agrees with
what Locust measured.
"""

import csv
import datetime
import os
import subprocess
import time
from pathlib import Path

import lab_inventory
import lab_ops

REPO = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
INVENTORY = os.environ["CITADEL_INVENTORY"]


def catalog() -> list[dict]:
    return lab_inventory.models()


def load(report_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    env = {**os.environ, "INVENTORY": INVENTORY, "REPORT_DIR": str(report_dir)}
    run = subprocess.run(
        [str(REPO / "loadtests/run.sh"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return run, run.stdout + run.stderr


def rows(path: Path) -> dict[str, dict]:
    with path.open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_lab_slo_gates_hold_at_ci_load(tmp_path):
    # One user: every lab vLLM server shares the machine's 2 cores, and two
    # concurrent SmolLM2 requests already take 2-3x as long (measured), so more
    # users would measure CPU contention, not the stack.
    run, out = load(tmp_path, "--run-time", "45s", "--users", "1", "--spawn-rate", "1")
    assert run.returncode == 0, out[-5000:]
    assert "SLO gates passed" in out
    stats = rows(tmp_path / "locust_stats.csv")
    with (tmp_path / "locust_slo.csv").open() as f:
        gates = list(csv.DictReader(f))
    for model in catalog():
        name = model["name"]
        mine = {row: v for row, v in stats.items() if row.startswith(f"{name} ")}
        assert sum(int(v["Request Count"]) for v in mine.values()) > 0, f"{name} got no requests"
        metrics = {g["metric"]: g for g in gates if g["model"] == name}
        assert {"p95 ms", "avg ms", "error ratio"} <= metrics.keys(), name
        assert all(g["passed"] == "True" for g in metrics.values()), metrics
        # The gate's targets are the catalog's, not a copy.
        assert float(metrics["p95 ms"]["target"]) == model["latency_ms"]["p95"]
        assert float(metrics["avg ms"]["target"]) == model["latency_ms"]["avg"]
        if "chat" in model["capabilities"]:
            ttft = stats[f"{name} stream ttft"]
            assert int(ttft["Request Count"]) > 0
            # The first token arrives well before the whole answer: the gateway streams unbuffered.
            assert float(ttft["Median Response Time"]) < float(stats[f"{name} stream"]["Median Response Time"])
            assert float(stats[f"{name} stream tokens/s"]["Average Response Time"]) > 0
    assert (tmp_path / "report.html").stat().st_size > 0


def _close(ours: float, locust: float) -> bool:
    """Within Locust's sampling: it keeps response times in buckets (1 ms below 100 ms, 10 ms
    below 1 s, 100 ms above), and measures on the client, a few ms further than the gateway."""
    bucket = 1 if locust < 100 else 10 if locust < 1000 else 100
    return abs(ours - locust) <= bucket + max(3.0, 0.15 * locust)


def test_the_usage_report_matches_what_locust_measured(tmp_path):
    """Embeddings as fast as two users can send them (hundreds of samples in 15 s), then the
    report from PostgreSQL for the run's window against Locust's own figures: the same requests
    (plus at most one per user that was in flight when Locust stopped, which it does not count),
    no errors, the same p50 and p95 within Locust's sampling."""
    start = datetime.datetime.now(datetime.UTC)
    run, out = load(tmp_path, "--run-time", "15s", "--users", "2", "--spawn-rate", "2",
                    "--models", "all-minilm-l6-v2", "--mix", "embeddings=1", "--think-seconds", "0")  # fmt: skip
    end = datetime.datetime.now(datetime.UTC)
    assert run.returncode == 0, out[-5000:]
    locust = rows(tmp_path / "locust_stats.csv")["all-minilm-l6-v2 embeddings"]
    sent = int(locust["Request Count"])
    assert sent > 100, locust
    deadline = time.monotonic() + 30  # the gateways insert every second
    while True:
        report = lab_ops.usage_report("--since", start.isoformat(), "--until", end.isoformat())
        if sum(r["requests"] for r in report) >= sent or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(f"usage report: {report}\nlocust: {locust}")
    (r,) = report
    assert r["name"] == "all-minilm-l6-v2"
    assert sent <= r["requests"] <= sent + 2, (r, sent)
    assert (r["error_ratio"], int(locust["Failure Count"])) == (0, 0)
    assert r["prompt_tokens"] > 0
    assert _close(r["p50_ms"], float(locust["50%"])), (r["p50_ms"], locust["50%"])
    # p95 sits in a steep tail: two estimators on a few hundred samples agree within a few
    # percentile points (a rank's standard error is sqrt(n * 0.05 * 0.95) ~ 1.5 % of n here)
    low, high = float(locust["90%"]), float(locust["98%"])
    assert low * 0.95 - 1 <= r["p95_ms"] <= high * 1.05 + 10, (r["p95_ms"], locust)


def test_impossible_target_fails_and_names_the_model(tmp_path):
    # Short chats only: every request is one the p95 gate measures.
    args = ["--run-time", "10s", "--users", "2", "--models", "smollm2-135m", "--mix", "chat_short=1"]
    run, out = load(tmp_path, *args, "--slo-p95-ms", "smollm2-135m=1")
    assert run.returncode != 0, out[-5000:]
    assert "SLO gates FAILED for: smollm2-135m" in out
    # The gate table's row: model, metric, target, measured, verdict.
    row = next(line.split() for line in out.splitlines() if line.startswith("smollm2-135m  p95 ms"))
    assert row[3] == "1"
    assert float(row[4]) > 1
    assert row[5] == "FAIL"
