"""Core modules without a server: breaker, buckets, admission queue, replica choice, selection."""

from __future__ import annotations

import asyncio
import time

import pytest
from citadel_gateway import config as C
from citadel_gateway import selection
from citadel_gateway.backends import Router
from citadel_gateway.health import CLOSED, HALF_OPEN, OPEN, SLOW_PROBES_TO_EJECT, CircuitBreaker, HealthChecker
from citadel_gateway.limits import Admission, MemoryLimiter, QueueFull, QueueTimeout
from citadel_gateway.usage import usage_tokens


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_half_opens_once_and_closes():
    clk = Clock()
    b = CircuitBreaker(failures=3, cooldown=10, clock=clk)
    for _ in range(2):
        b.failure()
    assert b.state == CLOSED
    assert b.acquire()
    b.failure()
    assert b.state == OPEN
    assert not b.available()
    assert not b.acquire()
    clk.t += 10
    assert b.available()
    assert b.acquire()
    assert b.state == HALF_OPEN
    assert not b.acquire(), "only one half-open probe at a time"
    b.failure()
    assert b.state == OPEN, "a failed probe re-opens"
    clk.t += 10
    assert b.acquire()
    b.success()
    assert b.state == CLOSED
    assert b.acquire()
    assert b.acquire()


def test_breaker_hard_failure_opens_at_once():
    b = CircuitBreaker(failures=5, cooldown=10)
    b.failure(hard=True)
    assert b.state == OPEN


def test_token_bucket():
    clk = Clock()
    lim = MemoryLimiter(clock=clk)
    assert [lim.take_now("k", 60, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = lim.take_now("k", 60, 3)
    assert wait == pytest.approx(1.0)
    clk.t += 1.0
    assert lim.take_now("k", 60, 3) == 0.0
    assert lim.take_now("other", 60, 3) == 0.0, "buckets are per key"


def test_admission_queue_bounds():
    async def main():
        a = Admission(max_inflight=1, max_waiting=1, wait_timeout=0.1)
        await a.acquire()
        waiter = asyncio.ensure_future(a.acquire())
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await a.acquire()
        a.release()  # hands the slot to the waiter
        await waiter
        assert a.inflight == 1
        t = time.monotonic()
        with pytest.raises(QueueTimeout):
            await a.acquire()
        assert 0.08 < time.monotonic() - t < 0.5
        a.release()
        assert a.inflight == 0
        assert a.waiting == 0

    asyncio.run(main())


def _router(**over):
    models = [
        {
            "name": "big",
            "tier": "heavyweight",
            "capabilities": ["chat", "reasoning"],
            "latency_ms": {"avg": 2000, "p95": 3000},
            "replicas": ["http://h1:1"],
        },
        {
            "name": "small",
            "tier": "lightweight",
            "capabilities": ["chat", "completion"],
            "latency_ms": {"avg": 500, "p95": 750},
            "replicas": ["http://h2:1", "http://h3:1"],
        },
        {
            "name": "coder",
            "tier": "lightweight",
            "capabilities": ["chat", "code"],
            "latency_ms": {"avg": 900, "p95": 1500},
            "replicas": ["http://h4:1"],
        },
        {
            "name": "emb",
            "tier": "embedding",
            "capabilities": ["embedding"],
            "latency_ms": {"avg": 30, "p95": 60},
            "replicas": ["http://h5:1"],
        },
    ]
    return Router(C.parse({"models": models, **over}))


def test_least_outstanding_replica():
    r = _router()
    m = r.get("small")
    a, b = m.replicas
    a.outstanding = 3
    assert m.pick() is b
    b.outstanding = 5
    assert m.pick() is a
    a.healthy = False
    assert m.pick() is b
    assert m.pick([b]) is None


def test_selection_by_priority_and_task():
    r = _router()
    ms = r.models
    assert selection.choose(ms, "chat", "quality").name == "big"
    assert selection.choose(ms, "chat", "balanced").name in ("small", "coder")
    assert selection.choose(ms, "chat", "speed").name == "small"
    assert selection.choose(ms, "code", "speed").name == "coder"
    assert selection.choose(ms, "embedding", "quality").name == "emb"
    # observed latency wins over the configured one for speed
    r.get("coder").observe(0.05)
    assert selection.choose(ms, "chat", "speed").name == "coder"
    # unhealthy models are never chosen
    r.get("big").replicas[0].healthy = False
    assert selection.choose(ms, "chat", "quality").name != "big"
    rec = selection.recommend(ms, "chat", "quality")
    assert rec["model"]
    assert rec["score"] > 0
    assert rec["reasoning"]
    assert len(rec["alternatives"]) <= 2


def test_selection_is_microseconds():
    ms = _router().models
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        selection.choose(ms, "chat", "balanced")
    per = (time.perf_counter() - t) / n
    assert per < 100e-6, f"selection took {per * 1e6:.1f} µs"


def test_usage_found_without_parsing():
    body = (
        b'{"id":"x","choices":[{"text":"'
        + b"a" * 100000
        + b'"}],"usage":{"prompt_tokens":12,"total_tokens":20,"completion_tokens":8}}'
    )
    assert usage_tokens(body) == (12, 8)
    assert usage_tokens(b'{"data":[]}') is None


def test_a_busy_replica_is_ejected_only_after_repeated_slow_probes():
    r = _router()
    a, b = r.get("small").replicas
    answers = {a: TimeoutError(), b: ConnectionRefusedError("refused")}

    async def fetch(replica, method, path, body, timeout):
        raise answers[replica]

    checker = HealthChecker(r, fetch, interval=1, timeout=1)
    for _ in range(SLOW_PROBES_TO_EJECT - 1):
        asyncio.run(checker.check_once())
        assert a.healthy, "a probe that only timed out does not eject a busy replica"
        assert not b.healthy, "a refused connection ejects at once"
    asyncio.run(checker.check_once())
    assert not a.healthy
    assert a.reason == "timed out"
