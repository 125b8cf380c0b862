"""Prometheus metrics with the exact names dashboards use (no web framework imports).

The hot path only bumps plain dict entries (no locks, no prometheus_client objects per
request); a custom collector turns them into metric families at scrape time. Health, circuit,
draining and active-request gauges are read live from the router at scrape time, so they can
never go stale.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from . import routing

BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def observe(table: dict, key: tuple, v: float, buckets: tuple = BUCKETS) -> None:
    """Histogram observation: one bucket slot and the sum (cumulated at scrape time)."""
    h = table.get(key)
    if h is None:
        h = table[key] = [0] * (len(buckets) + 1) + [0.0]
    h[bisect_left(buckets, v)] += 1
    h[-1] += v


def inc(table: dict, key: tuple, amount: float = 1) -> None:
    table[key] = table.get(key, 0) + amount


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple, float] = {}  # (model, endpoint, status)
        self.duration: dict[tuple, list] = {}  # (model, endpoint)
        self.ttfb: dict[tuple, list] = {}  # (model, endpoint)
        self.overhead: dict[tuple, list] = {}  # (endpoint,)
        self.retries: dict[tuple, float] = {}  # (model,)
        self.fallbacks: dict[tuple, float] = {}  # (model, fallback)
        self.rejections: dict[tuple, float] = {}  # (model, reason)
        self.tokens: dict[tuple, float] = {}  # (model, type)
        self.key_requests: dict[tuple, float] = {}  # (key, model, status)
        self.key_tokens: dict[tuple, float] = {}  # (key, model, type)
        self.limiter_errors: dict[tuple, float] = {}  # () : the Redis limiter failed to answer
        self.cache: dict[tuple, float] = {}  # (model, result): hit, miss, bypass, error (cache.py)
        # usage records (records/writer.py): events by outcome
        self.usage_events = dict.fromkeys(("queued", "written", "journaled", "replayed", "dropped"), 0)
        self.state = None  # gateway.State, read at scrape time
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def tokens_used(self, model: str, key: str | None, prompt: int, completion: int) -> None:
        """An answer's usage: per model, and per key when a key was presented."""
        t = self.tokens
        if prompt:
            inc(t, (model, "prompt"), prompt)
        if completion:
            inc(t, (model, "completion"), completion)
        if key is not None:
            t = self.key_tokens
            if prompt:
                inc(t, (key, model, "prompt"), prompt)
            if completion:
                inc(t, (key, model, "completion"), completion)

    def describe(self):
        return []

    @staticmethod
    def _hist(name: str, doc: str, labels: list[str], table: dict, buckets: tuple) -> HistogramMetricFamily:
        f = HistogramMetricFamily(name, doc, labels=labels)
        bounds = [floatToGoString(b) for b in buckets] + ["+Inf"]
        for key, h in list(table.items()):
            acc, out = 0, []
            for le, n in zip(bounds, h[:-1], strict=True):
                acc += n
                out.append((le, acc))
            f.add_metric([str(x) for x in key], out, h[-1])
        return f

    @staticmethod
    def _counter(name: str, doc: str, labels: list[str], table: dict) -> CounterMetricFamily:
        f = CounterMetricFamily(name, doc, labels=labels)
        for key, v in list(table.items()):
            f.add_metric([str(x) for x in key], v)
        return f

    def collect(self):
        yield self._counter(
            "llm_requests",
            "Requests by model, endpoint and HTTP status",
            ["model", "endpoint", "status"],
            self.requests,
        )
        yield self._hist(
            "llm_request_duration_seconds", "Request duration", ["model", "endpoint"], self.duration, BUCKETS
        )
        yield self._hist(
            "llm_time_to_first_byte_seconds",
            "Time to first byte of streamed responses",
            ["model", "endpoint"],
            self.ttfb,
            BUCKETS,
        )
        yield self._hist(
            "llm_gateway_overhead_seconds",
            "Time spent in the gateway excluding upstream wait",
            ["endpoint"],
            self.overhead,
            OVERHEAD_BUCKETS,
        )
        yield self._counter("llm_retries", "Retries of a request on another attempt", ["model"], self.retries)
        yield self._counter("llm_fallbacks", "Requests sent to a fallback model", ["model", "fallback"], self.fallbacks)
        yield self._counter("llm_rejections", "Rejected requests by reason", ["model", "reason"], self.rejections)
        yield self._counter("llm_tokens_processed", "Tokens reported in upstream usage", ["model", "type"], self.tokens)
        yield self._counter(
            "llm_key_requests",
            "Requests by API key, model and HTTP status",
            ["key", "model", "status"],
            self.key_requests,
        )
        yield self._counter(
            "llm_key_tokens", "Tokens reported in upstream usage, by API key", ["key", "model", "type"], self.key_tokens
        )
        yield self._counter(
            "llm_cache_requests",
            "Cacheable requests by result: hit, miss, bypass (Cache-Control), error (the store did not answer)",
            ["model", "result"],
            self.cache,
        )
        yield self._counter(
            "llm_rate_limiter_errors",
            "Requests whose rate-limit check failed (Redis unreachable)",
            [],
            self.limiter_errors,
        )
        f = CounterMetricFamily(
            "llm_usage_events",
            "Usage records: queued, written to PostgreSQL, journaled to disk, replayed from it, dropped",
            labels=["outcome"],
        )
        for outcome, n in self.usage_events.items():
            f.add_metric([outcome], n)
        yield f
        st = self.state
        active = GaugeMetricFamily("llm_active_requests", "Requests being forwarded now", labels=["model"])
        mh = GaugeMetricFamily("llm_model_health", "1 when at least one replica is healthy", labels=["model"])
        uh = GaugeMetricFamily(
            "llm_upstream_health", "Replica readiness (1 healthy, 0 not)", labels=["model", "replica"]
        )
        cs = GaugeMetricFamily(
            "llm_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", labels=["model", "replica"]
        )
        dr = GaugeMetricFamily(
            "llm_replica_draining",
            "1 while the replica drains (admin API: no new requests)",
            labels=["model", "replica"],
        )
        if st is not None:
            for m in st.router.models:
                a = st.admission.get(m.name)
                active.add_metric([m.name], a.inflight if a else 0)
                mh.add_metric([m.name], 1 if any(r.available() for r in m.replicas) else 0)
                for r in m.replicas:
                    uh.add_metric([m.name, r.label], 1 if r.healthy else 0)
                    cs.add_metric([m.name, r.label], r.breaker.state)
                    dr.add_metric([m.name, r.label], 1 if r.draining else 0)
        yield from (active, mh, uh, cs, dr)
        yield self._picks(st)

    @staticmethod
    def _picks(st) -> CounterMetricFamily:
        """Replica choices, by how (routing.HOW): read from the replicas, which count them."""
        f = CounterMetricFamily(
            "llm_replica_picks",
            "Replicas chosen for a request: least_outstanding; load_aware; for prefix_affinity placed (a key's first"
            " request), affinity (back to the key's replica) or overflow (that one over the load bound or unavailable)",
            labels=["model", "replica", "how"],
        )
        if st is not None:
            for m in st.router.models:
                for r in m.replicas:
                    for how, n in zip(routing.HOW, r.picks, strict=True):
                        if n:
                            f.add_metric([m.name, r.label, how], n)
        return f

    def render(self) -> bytes:
        return generate_latest(self.registry)
