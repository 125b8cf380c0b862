"""Model table (names + aliases) and replica sets (no web framework imports).

Replica choice is the model's routing policy (routing.py). A draining replica (drain.py, the
admin API) is never chosen; its in-flight requests finish and its health checks go on.
"""

from __future__ import annotations

import logging
import ssl
from urllib.parse import urlsplit

from . import config as C
from . import routing
from .health import CLOSED, CircuitBreaker

log = logging.getLogger("citadel_gateway.routing")


class Replica:
    __slots__ = (
        "url",
        "host",
        "port",
        "label",
        "outstanding",
        "healthy",
        "reason",
        "breaker",
        "model",
        "draining",
        "auth",
        "authority",
        "prefix",
        "key",
        "salt",
        "picks",
        "load",
    )

    def __init__(self, url: str, model: str, breaker: CircuitBreaker, tls: ssl.SSLContext | None = None) -> None:
        u = urlsplit(url)
        self.url = url
        self.host = u.hostname
        https = u.scheme == "https"
        self.port = u.port or (443 if https else 80)
        self.label = f"{self.host}:{self.port}"  # the metric label `replica`
        self.authority = self.label if u.port else self.host  # the Host header
        self.prefix = u.path.rstrip("/")  # stands in for the client's /v1 (empty: the path as sent)
        self.key = (self.host, self.port, tls if https else None)  # the upstream pool's key
        self.model = model
        self.outstanding = 0
        self.healthy = True  # optimistic until the first active check says otherwise
        self.reason: str | None = None
        self.breaker = breaker
        self.draining = False  # set by the admin API: no new requests, in-flight ones finish
        self.auth = b""  # the upstream key's header line (the model's), set by the Router on every (re)load
        self.salt = routing.salt(url)  # its rendezvous hashing salt (prefix affinity)
        self.picks = [0] * len(routing.HOW)  # times chosen, by how (llm_replica_picks_total)
        # load_aware: (vLLM's running + waiting, this gateway's in flight then, KV use, when) (load.py)
        self.load: tuple[float, int, float, float] | None = None

    def available(self) -> bool:
        return self.healthy and self.breaker.available()

    def path(self, path: str) -> str:
        """The upstream path of a client's ``path`` (``/v1/...``)."""
        if not self.prefix:
            return path
        return self.prefix + path[3:] if path.startswith("/v1") else self.prefix + path

    def set_health(self, ok: bool, reason: str | None = None) -> None:
        changed = ok != self.healthy
        self.healthy = ok
        self.reason = reason
        if ok and self.breaker.state != CLOSED:
            self.breaker.success()  # an active check that passed closes the breaker too
        if changed:
            log.warning(
                "replica %s of %s is %s%s",
                self.label,
                self.model,
                "healthy" if ok else "unhealthy",
                f": {reason}" if reason else "",
            )


class Model:
    __slots__ = (
        "cfg",
        "name",
        "aliases",
        "capabilities",
        "tier",
        "replicas",
        "fallbacks",
        "timeout_s",
        "first_byte_s",
        "gap_s",
        "stream_max_s",
        "ewma_ms",
        "tps",
        "probe",
        "attempts",
        "policy",
        "prefix_chars",
        "load_factor",
        "placements",
    )

    def __init__(self, cfg: C.Model, replicas: list[Replica], upstream: C.Upstream) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.aliases = cfg.aliases
        self.capabilities = cfg.capabilities
        self.tier = cfg.tier
        self.replicas = replicas
        self.fallbacks = cfg.fallbacks
        # Deadlines: non-streamed answers as a whole; streams by first byte, gap and optional cap.
        self.timeout_s = cfg.timeout_s or upstream.total_timeout_s
        self.first_byte_s = cfg.first_byte_timeout_s or upstream.first_byte_timeout_s
        self.gap_s = cfg.chunk_gap_timeout_s or upstream.chunk_gap_timeout_s
        self.stream_max_s = cfg.stream_max_s or upstream.stream_max_s
        self.probe = cfg.probe
        self.attempts = cfg.retry_attempts  # None: retry.attempts
        self.policy = cfg.routing.policy
        # prefix_affinity: characters of the prompt's start in its affinity key (None: no key)
        self.prefix_chars = cfg.routing.prefix_chars if self.policy == "prefix_affinity" else None
        self.load_factor = cfg.routing.load_factor
        self.placements: dict = {}  # prefix_affinity: affinity key -> its replica (routing.MEMORY, oldest first)
        self.ewma_ms: float | None = None  # observed latency of successful non-streamed requests
        self.tps: float | None = None  # observed completion tokens per second

    def healthy_count(self) -> int:
        return sum(1 for r in self.replicas if r.available())

    def routable(self) -> bool:
        """Could a new request go to one of its replicas now (available and not draining)?"""
        return any(not r.draining and r.available() for r in self.replicas)

    def all_draining(self) -> bool:
        return all(r.draining for r in self.replicas)

    def observe(self, seconds: float, completion_tokens: int | None = None) -> None:
        ms = seconds * 1000.0
        self.ewma_ms = ms if self.ewma_ms is None else self.ewma_ms * 0.8 + ms * 0.2
        if completion_tokens and seconds > 0:
            tps = completion_tokens / seconds
            self.tps = tps if self.tps is None else self.tps * 0.8 + tps * 0.2

    def pick_preview(self, exclude: tuple | list = ()) -> Replica | None:
        """Is there an available replica outside ``exclude``? (reserves nothing)"""
        for r in self.replicas:
            if r not in exclude and not r.draining and r.available():
                return r
        return None

    def pick(self, exclude: tuple | list = (), key: int | None = None) -> Replica | None:
        """The available replica not in ``exclude`` that the policy chooses: by the request's
        affinity ``key`` (routing.affinity_key) when it has one, else by load.
        Reserves a half-open probe."""
        if key is not None:
            best, how = routing.bounded_affinity(self.replicas, exclude, key, self.load_factor, self.placements)
        elif self.policy == "load_aware":
            best, how = routing.load_aware(self.replicas, exclude)
        else:
            best, how = routing.least_outstanding(self.replicas, exclude)
        if best is None:
            return None
        if not best.breaker.acquire():
            # lost the half-open probe race: try the others
            return self.pick((*exclude, best), key)
        best.picks[how] += 1
        return best


def _auth_line(mc: C.Model) -> bytes:
    """The upstream key's header line, as the model's servers take it."""
    if not mc.upstream_key:
        return b""
    if mc.upstream_key_header.lower() == "authorization":
        return b"Authorization: Bearer %s\r\n" % mc.upstream_key.encode()
    return b"%s: %s\r\n" % (mc.upstream_key_header.encode(), mc.upstream_key.encode())


class Router:
    def __init__(self, cfg: C.Config, previous: Router | None = None) -> None:
        self.cfg = cfg
        old: dict[tuple[str, str], Replica] = {}
        drained: set[str] = set()  # URLs draining before the reload
        if previous is not None:
            for m in previous.models:
                for r in m.replicas:
                    old[(m.name, r.url)] = r
                    if r.draining:
                        drained.add(r.url)
        self.models: list[Model] = []
        self.table: dict[str, Model] = {}
        contexts: dict[str | None, ssl.SSLContext] = {}  # CA file -> context (one per file: pooled by it)
        for mc in cfg.models:
            reps = []
            tls = None
            if any(u.startswith("https:") for u in mc.replicas):
                if mc.upstream_ca_file not in contexts:
                    contexts[mc.upstream_ca_file] = ssl.create_default_context(cafile=mc.upstream_ca_file)
                tls = contexts[mc.upstream_ca_file]
            for url in mc.replicas:
                r = old.get((mc.name, url))
                if r is None:
                    r = Replica(url, mc.name, CircuitBreaker(cfg.circuit.failures, cfg.circuit.cooldown_s), tls)
                    r.draining = url in drained  # new to this model (renamed, moved): drained by URL
                else:  # keep live health/outstanding/draining across a reload; take the new breaker settings
                    r.breaker.failures = cfg.circuit.failures
                    r.breaker.cooldown = cfg.circuit.cooldown_s
                    r.key = (r.host, r.port, r.key[2] and tls)  # the CA file may have changed: a new context
                r.auth = _auth_line(mc)
                reps.append(r)
            m = Model(mc, reps, cfg.upstream)
            if previous is not None and (pm := previous.table.get(mc.name)) is not None:
                m.ewma_ms, m.tps = pm.ewma_ms, pm.tps
                m.placements = pm.placements  # where each affinity key's cache is, kept across reloads
            self.models.append(m)
            for n in (mc.name, *mc.aliases):
                self.table[n] = m

    def get(self, name: str) -> Model | None:
        return self.table.get(name)

    def missing(self) -> list[str]:
        """Models with no healthy replica (what /ready reports)."""
        return [m.name for m in self.models if not any(r.available() for r in m.replicas)]
