"""The config's shape: frozen dataclasses with their defaults, and ConfigError."""

from __future__ import annotations

from dataclasses import dataclass, field

CAPABILITIES = ("chat", "completion", "embedding", "code", "reasoning")
# How the health checker finds a replica ready: ``full`` (vLLM: /health, then the model in
# /v1/models, then a 1-token request), ``request`` (the model listed, then a 1-token request;
# servers without /health) or ``models`` (the model listed: costs nothing on a paid provider).
PROBES = ("full", "request", "models")
ROUTING_POLICIES = ("least_outstanding", "prefix_affinity", "load_aware")  # routing.py
TIERS = ("heavyweight", "lightweight", "embedding")


class ConfigError(ValueError):
    """A config problem; the message names the key."""


@dataclass(frozen=True)
class Server:
    host: str = "0.0.0.0"
    port: int = 8000
    max_body_bytes: int = 4 * 1024 * 1024
    access_log: bool = True
    drain_seconds: float = 30
    # Hostile-client limits (checked before any body byte is read).
    head_timeout_s: float = 10  # a request head must be complete within this (slowloris)
    body_timeout_s: float = 30  # a declared body must arrive within this after the head
    max_url_bytes: int = 8192  # longer request target: 414
    max_header_count: int = 100  # more header lines: 431
    max_head_bytes: int = 32768  # request line + headers larger: 431
    max_connections: int = 8192  # open client connections per process; beyond: closed at accept
    max_idle_per_client: int = 256  # idle keep-alive connections per client address; beyond: the oldest closed
    # PEM files: both set, the listener speaks HTTPS only (no plain HTTP); neither, HTTP.
    tls_cert_file: str | None = None  # the certificate, then any intermediates
    tls_key_file: str | None = None
    # A second listener that serves /metrics only (and /metrics nowhere else), so a firewall can
    # open it to the monitoring hosts alone; None: /metrics on the API port. Same TLS as the API.
    metrics_port: int | None = None


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    models: tuple[str, ...] = ("*",)
    rpm: int = 1000
    burst: int = 100
    admin: bool = False  # may call the admin API (routes/admin.py); sees replica URLs and reasons in the registry
    # Tokens (prompt + completion, as the upstream reported them) per UTC day and month; 0: no budget.
    # Shared by every gateway through the rate limiter's store (budgets.py).
    daily_tokens: int = 0
    monthly_tokens: int = 0
    cache: bool = False  # its deterministic requests are answered from the response cache (cache.py)


@dataclass(frozen=True)
class Auth:
    required: bool = False
    keys: tuple[ApiKey, ...] = ()
    # Failed authentications per client address: token bucket, then 429.
    failed_rpm: int = 60
    failed_burst: int = 20


@dataclass(frozen=True)
class RateLimit:
    backend: str = "memory"
    redis_url: str | None = None
    # Read from rate_limit.redis_password_file (never written in the config itself).
    redis_password: str | None = field(default=None, repr=False)
    # Redis unreachable: "allow" serves the request (and logs an ERROR), "reject" answers 503.
    on_redis_error: str = "allow"
    # Bounded waits on Redis (a blackholed Redis must not hang requests); a timeout is an error
    # like any other and goes through on_redis_error.
    connect_timeout_s: float = 0.25
    timeout_s: float = 0.25


@dataclass(frozen=True)
class Cache:
    """The response cache (cache.py), used for models and keys that turn it on; kept in the rate
    limiter's store (Redis: shared by every gateway; memory: this process, at most max_entries)."""

    ttl_s: float = 300
    max_entry_bytes: int = 1024 * 1024
    max_entries: int = 10000


@dataclass(frozen=True)
class Health:
    interval_s: float = 30
    timeout_s: float = 5


@dataclass(frozen=True)
class Circuit:
    failures: int = 5
    cooldown_s: float = 60


@dataclass(frozen=True)
class Retry:
    attempts: int = 3
    backoff_base_s: float = 0.05
    backoff_max_s: float = 1.0


@dataclass(frozen=True)
class Upstream:
    connect_timeout_s: float = 10
    total_timeout_s: float = 30  # non-streamed requests: the whole answer (504 after it)
    max_response_bytes: int = 64 * 1024 * 1024  # non-streamed answers larger than this: 502
    # Streams (per-model overrides in models[]): the first body byte within first_byte_timeout_s,
    # then no gap between chunks longer than chunk_gap_timeout_s, and (optional) the whole
    # stream within stream_max_s.
    first_byte_timeout_s: float = 60
    chunk_gap_timeout_s: float = 30
    stream_max_s: float | None = None


@dataclass(frozen=True)
class Queue:
    max_inflight: int = 64
    max_waiting: int = 256
    wait_timeout_s: float = 10


@dataclass(frozen=True)
class Latency:
    avg: float = 1000
    p95: float = 2000


@dataclass(frozen=True)
class Routing:
    """How a model's replica is chosen (routing.py)."""

    policy: str = "least_outstanding"
    prefix_chars: int = 512  # prefix_affinity: how much of the prompt's start names its replica
    load_factor: float = 1.25  # prefix_affinity: a replica takes at most this x the mean in flight


@dataclass(frozen=True)
class Model:
    name: str
    replicas: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ("chat", "completion")
    tier: str = "lightweight"
    latency_ms: Latency = field(default_factory=Latency)
    timeout_s: float | None = None
    first_byte_timeout_s: float | None = None
    chunk_gap_timeout_s: float | None = None
    stream_max_s: float | None = None
    max_inflight: int | None = None
    max_waiting: int | None = None
    fallbacks: tuple[str, ...] = ()
    # Read from upstream_api_key_file: the key the model's servers require (vLLM's --api-key, a
    # provider's key), sent on every attempt and health probe, never logged. In the header
    # upstream_api_key_header: "Authorization" (as "Bearer KEY") or another name (the bare key).
    upstream_key: str | None = field(default=None, repr=False)
    upstream_key_header: str = "Authorization"
    upstream_ca_file: str | None = None  # https replicas: the CA to verify them by (default: the system's)
    probe: str = "full"
    retry_attempts: int | None = None  # sends per request (default: retry.attempts)
    cache: bool = False  # deterministic requests answered from the response cache (cache.py)
    routing: Routing = field(default_factory=Routing)


@dataclass(frozen=True)
class Usage:
    """Usage records in PostgreSQL (records/); no database_url: none are written."""

    database_url: str | None = None  # postgresql://USER@HOST:PORT/DB, no password in it
    password: str | None = field(default=None, repr=False)  # read from usage.password_file
    gateway: str = ""  # this gateway's name in every row (default: the host name)
    journal_dir: str = "/var/lib/citadel-gateway/usage-journal"
    journal_max_bytes: int = 1024**3
    batch_size: int = 500
    flush_interval_s: float = 1.0
    queue_max: int = 100_000
    connect_timeout_s: float = 5
    insert_timeout_s: float = 10
    stop_timeout_s: float = 5  # SIGTERM: insert what is queued within this, journal the rest


@dataclass(frozen=True)
class Config:
    server: Server = field(default_factory=Server)
    auth: Auth = field(default_factory=Auth)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    health: Health = field(default_factory=Health)
    circuit: Circuit = field(default_factory=Circuit)
    retry: Retry = field(default_factory=Retry)
    upstream: Upstream = field(default_factory=Upstream)
    queue: Queue = field(default_factory=Queue)
    usage: Usage = field(default_factory=Usage)
    cache: Cache = field(default_factory=Cache)
    models: tuple[Model, ...] = ()
