"""The paired c=1 client (paired.py) against the real stub: every system measured in the same
cycles, answers checked, failures counted and never taken for samples. Every run is bounded by a
cycle count (the time bound is far above it), so no count depends on the machine's speed.

Run: .venv/bin/pytest loadtests/bench
"""

from __future__ import annotations

import sys

import paired
import pytest
from stubproc import free_port, running_stub


@pytest.fixture(scope="module")
def stub():
    with running_stub(sys.executable, "raw", ["m1"]) as port:
        yield f"http://127.0.0.1:{port}"


CYCLES = 300
LONG = 120.0  # seconds: never reached before CYCLES


def test_every_system_gets_the_same_number_of_requests(stub):
    res = paired.run([("a", stub, {}), ("b", stub, {"X-Extra": "1"})], "k", "m1", LONG, max_cycles=CYCLES)
    assert set(res) == {"a", "b"}
    a, b = res["a"], res["b"]
    assert a["errors"] == b["errors"] == 0
    assert a["requests"] == b["requests"] == CYCLES  # one request each per cycle
    for r in (a, b):
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"]


def test_non_200_answers_are_errors_not_samples(stub):
    res = paired.run([("good", stub, {})], "k", "m1", LONG, max_cycles=CYCLES)
    assert res["good"]["errors"] == 0
    res = paired.run([("unknown-model", stub, {})], "k", "no-such-model", LONG, max_cycles=CYCLES)
    r = res["unknown-model"]
    assert r["requests"] == 0
    assert r["p99_ms"] is None
    assert r["errors"] == 200 + CYCLES  # every 404 counted (warm-up included), the connection kept


def test_a_system_that_is_down_is_counted_and_the_others_measured(stub):
    down = f"http://127.0.0.1:{free_port()}"
    res = paired.run([("up", stub, {}), ("down", down, {})], "k", "m1", LONG, max_cycles=50)
    assert res["down"]["requests"] == 0
    assert res["down"]["errors"] == 200 + 50  # the warm-up ones too: each refused connect
    assert res["up"]["requests"] == 50
    assert res["up"]["errors"] == 0


def test_only_loopback():
    with pytest.raises(SystemExit, match="127.0.0.1 only"):
        paired.run([("x", "http://10.0.0.1:80", {})], "k", "m1", 0.1)
