"""From a YAML document (or ``--backend`` pairs) to a Config: the section parsers and the
checks across sections (unique names, known fallbacks and key models)."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
from dataclasses import replace
from typing import Any

import yaml

from .checks import _bool, _list, _map, _num, _optional_positive, _str, _url
from .schema import (
    CAPABILITIES,
    PROBES,
    ROUTING_POLICIES,
    TIERS,
    ApiKey,
    Auth,
    Cache,
    Circuit,
    Config,
    ConfigError,
    Health,
    Latency,
    Model,
    Queue,
    RateLimit,
    Retry,
    Routing,
    Server,
    Upstream,
    Usage,
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


_SIMPLE = {
    "server": (
        Server,
        {
            "host": _str,
            "port": lambda p, v: _num(p, v, integer=True, minimum=0),
            "max_body_bytes": lambda p, v: _num(p, v, integer=True, minimum=1),
            "access_log": _bool,
            "drain_seconds": lambda p, v: _num(p, v),
            "head_timeout_s": lambda p, v: _num(p, v, exclusive=True),
            "body_timeout_s": lambda p, v: _num(p, v, exclusive=True),
            "max_url_bytes": lambda p, v: _num(p, v, integer=True, minimum=16),
            "max_header_count": lambda p, v: _num(p, v, integer=True, minimum=1),
            "max_head_bytes": lambda p, v: _num(p, v, integer=True, minimum=256),
            "max_connections": lambda p, v: _num(p, v, integer=True, minimum=1),
            "max_idle_per_client": lambda p, v: _num(p, v, integer=True, minimum=1),
            # null: plain HTTP, as when absent
            "tls_cert_file": lambda p, v: None if v is None else _str(p, v),
            "tls_key_file": lambda p, v: None if v is None else _str(p, v),
            "metrics_port": lambda p, v: None if v is None else _num(p, v, integer=True, minimum=1),
        },
    ),
    "health": (
        Health,
        {"interval_s": lambda p, v: _num(p, v, exclusive=True), "timeout_s": lambda p, v: _num(p, v, exclusive=True)},
    ),
    "circuit": (Circuit, {"failures": lambda p, v: _num(p, v, integer=True, minimum=1), "cooldown_s": _num}),
    "retry": (
        Retry,
        {"attempts": lambda p, v: _num(p, v, integer=True, minimum=1), "backoff_base_s": _num, "backoff_max_s": _num},
    ),
    "upstream": (
        Upstream,
        {
            "connect_timeout_s": lambda p, v: _num(p, v, exclusive=True),
            "total_timeout_s": lambda p, v: _num(p, v, exclusive=True),
            "max_response_bytes": lambda p, v: _num(p, v, integer=True, minimum=1024),
            "first_byte_timeout_s": lambda p, v: _num(p, v, exclusive=True),
            "chunk_gap_timeout_s": lambda p, v: _num(p, v, exclusive=True),
            "stream_max_s": _optional_positive,
        },
    ),
    "queue": (
        Queue,
        {
            "max_inflight": lambda p, v: _num(p, v, integer=True, minimum=1),
            "max_waiting": lambda p, v: _num(p, v, integer=True, minimum=0),
            "wait_timeout_s": _num,
        },
    ),
    "cache": (
        Cache,
        {
            "ttl_s": lambda p, v: _num(p, v, exclusive=True),
            "max_entry_bytes": lambda p, v: _num(p, v, integer=True, minimum=1),
            "max_entries": lambda p, v: _num(p, v, integer=True, minimum=1),
        },
    ),
    # usage.password_file is read in parse() (the secret goes into Usage.password)
    "usage": (
        Usage,
        {
            "database_url": lambda p, v: None if v is None else _database_url(p, v),
            "gateway": _str,
            "journal_dir": _str,
            "journal_max_bytes": lambda p, v: _num(p, v, integer=True, minimum=1024 * 1024),
            "batch_size": lambda p, v: _num(p, v, integer=True, minimum=1),
            "flush_interval_s": lambda p, v: _num(p, v, exclusive=True),
            "queue_max": lambda p, v: _num(p, v, integer=True, minimum=1),
            "connect_timeout_s": lambda p, v: _num(p, v, exclusive=True),
            "insert_timeout_s": lambda p, v: _num(p, v, exclusive=True),
            "stop_timeout_s": lambda p, v: _num(p, v),
        },
    ),
}


def _section(name: str, raw: Any):
    cls, fields = _SIMPLE[name]
    m = _map(name, raw, tuple(fields))
    return cls(**{k: fields[k](f"{name}.{k}", v) for k, v in m.items()})


def _key(path: str, raw: Any) -> ApiKey:
    m = _map(
        path, raw, ("name", "sha256", "models", "rpm", "burst", "admin", "daily_tokens", "monthly_tokens", "cache")
    )
    for req in ("name", "sha256"):
        if req not in m:
            raise ConfigError(f"{path}.{req}: required")
    digest = _str(f"{path}.sha256", m["sha256"]).lower()
    if not _HEX64.match(digest):
        raise ConfigError(f"{path}.sha256: expected 64 hex characters (sha256 of the key), never the key itself")
    models = tuple(
        _str(f"{path}.models[{i}]", x) for i, x in enumerate(_list(f"{path}.models", m.get("models", ["*"])))
    )
    return ApiKey(
        name=_str(f"{path}.name", m["name"]),
        sha256=digest,
        models=models,
        rpm=_num(f"{path}.rpm", m.get("rpm", 1000), integer=True, minimum=1),
        burst=_num(f"{path}.burst", m.get("burst", 100), integer=True, minimum=1),
        admin=_bool(f"{path}.admin", m.get("admin", False)),
        daily_tokens=_num(f"{path}.daily_tokens", m.get("daily_tokens", 0), integer=True, minimum=0),
        monthly_tokens=_num(f"{path}.monthly_tokens", m.get("monthly_tokens", 0), integer=True, minimum=0),
        cache=_bool(f"{path}.cache", m.get("cache", False)),
    )


_MODEL_KEYS = (
    "name",
    "aliases",
    "capabilities",
    "tier",
    "latency_ms",
    "timeout_s",
    "first_byte_timeout_s",
    "chunk_gap_timeout_s",
    "stream_max_s",
    "max_inflight",
    "max_waiting",
    "fallbacks",
    "replicas",
    "upstream_api_key_file",
    "upstream_api_key_header",
    "upstream_ca_file",
    "probe",
    "retry_attempts",
    "cache",
    "routing",
)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


def _routing(path: str, raw: Any) -> Routing:
    r = _map(path, raw, ("policy", "prefix_chars", "load_factor"))
    policy = _str(f"{path}.policy", r.get("policy", "least_outstanding"))
    if policy not in ROUTING_POLICIES:
        raise ConfigError(f"{path}.policy: {policy!r} is not one of {', '.join(ROUTING_POLICIES)}")
    opt = {}
    if r.get("prefix_chars") is not None:
        opt["prefix_chars"] = _num(f"{path}.prefix_chars", r["prefix_chars"], integer=True, minimum=1)
    if r.get("load_factor") is not None:
        opt["load_factor"] = _num(f"{path}.load_factor", r["load_factor"], minimum=1)
    return Routing(policy=policy, **opt)


def _model(path: str, raw: Any) -> Model:
    m = _map(path, raw, _MODEL_KEYS)
    for req in ("name", "replicas"):
        if req not in m:
            raise ConfigError(f"{path}.{req}: required")
    name = _str(f"{path}.name", m["name"])
    if name == "auto":
        raise ConfigError(f"{path}.name: 'auto' is reserved for model selection")
    replicas = tuple(_url(f"{path}.replicas[{i}]", u) for i, u in enumerate(_list(f"{path}.replicas", m["replicas"])))
    if not replicas:
        raise ConfigError(f"{path}.replicas: at least one replica URL is required")
    caps = tuple(
        _str(f"{path}.capabilities[{i}]", c)
        for i, c in enumerate(_list(f"{path}.capabilities", m.get("capabilities", ["chat", "completion"])))
    )
    for i, c in enumerate(caps):
        if c not in CAPABILITIES:
            raise ConfigError(f"{path}.capabilities[{i}]: {c!r} is not one of {', '.join(CAPABILITIES)}")
    tier = _str(f"{path}.tier", m.get("tier", "embedding" if "embedding" in caps else "lightweight"))
    if tier not in TIERS:
        raise ConfigError(f"{path}.tier: {tier!r} is not one of {', '.join(TIERS)}")
    lat = _map(f"{path}.latency_ms", m.get("latency_ms"), ("avg", "p95"))
    opt = {}
    for k, integer in (("max_inflight", True), ("max_waiting", True)):
        if m.get(k) is not None:
            opt[k] = _num(f"{path}.{k}", m[k], integer=integer, minimum=1 if k == "max_inflight" else 0)
    for k in ("timeout_s", "first_byte_timeout_s", "chunk_gap_timeout_s", "stream_max_s"):
        if m.get(k) is not None:
            opt[k] = _num(f"{path}.{k}", m[k], exclusive=True)
    if m.get("retry_attempts") is not None:
        opt["retry_attempts"] = _num(f"{path}.retry_attempts", m["retry_attempts"], integer=True, minimum=1)
    probe = _str(f"{path}.probe", m.get("probe", "full"))
    if probe not in PROBES:
        raise ConfigError(f"{path}.probe: {probe!r} is not one of {', '.join(PROBES)}")
    header = _str(f"{path}.upstream_api_key_header", m.get("upstream_api_key_header", "Authorization"))
    if not _HEADER_NAME.match(header):
        raise ConfigError(f"{path}.upstream_api_key_header: {header!r} is not a header name (letters, digits, -)")
    ca_file = m.get("upstream_ca_file")
    if ca_file is not None:
        ca_file = _str(f"{path}.upstream_ca_file", ca_file)
        try:
            ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{path}.upstream_ca_file: cannot load {ca_file}: {e}") from e
    return Model(
        name=name,
        replicas=replicas,
        aliases=tuple(
            _str(f"{path}.aliases[{i}]", a) for i, a in enumerate(_list(f"{path}.aliases", m.get("aliases", []) or []))
        ),
        capabilities=caps,
        tier=tier,
        latency_ms=Latency(
            avg=_num(f"{path}.latency_ms.avg", lat.get("avg", 1000)),
            p95=_num(f"{path}.latency_ms.p95", lat.get("p95", 2000)),
        ),
        fallbacks=tuple(
            _str(f"{path}.fallbacks[{i}]", f)
            for i, f in enumerate(_list(f"{path}.fallbacks", m.get("fallbacks", []) or []))
        ),
        upstream_key=_password_file(f"{path}.upstream_api_key_file", m.get("upstream_api_key_file")),
        upstream_key_header=header,
        upstream_ca_file=ca_file,
        probe=probe,
        cache=_bool(f"{path}.cache", m.get("cache", False)),
        routing=_routing(f"{path}.routing", m.get("routing")),
        **opt,
    )


def _check_tls(server: Server) -> None:
    """Both TLS files or neither; when set, they load as a certificate chain with its key (so a
    wrong file stops the config here, with its name, not the listener at start)."""
    cert, key = server.tls_cert_file, server.tls_key_file
    if (cert is None) != (key is None):
        raise ConfigError("server.tls_cert_file and server.tls_key_file: set both (HTTPS only) or neither (HTTP)")
    if cert is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as e:  # before OSError, its base class
        raise ConfigError(
            f"server.tls_cert_file {cert} / tls_key_file {key}: not a PEM certificate chain and its key ({e.reason})"
        ) from e
    except OSError as e:
        raise ConfigError(f"server.tls_cert_file / tls_key_file: cannot read {e.filename or cert}: {e.strerror}") from e


def _check_metrics_port(server: Server) -> None:
    mp = server.metrics_port
    if mp is not None and (mp > 65535 or mp == server.port):
        raise ConfigError(
            f"server.metrics_port: {mp} must be a TCP port (1-65535) other than server.port ({server.port})"
        )


def parse(raw: Any) -> Config:
    """Validate a parsed YAML document and return a Config."""
    top = _map(
        "",
        raw,
        ("server", "auth", "rate_limit", "health", "circuit", "retry", "upstream", "queue", "usage", "cache", "models"),
    )
    usage = dict(_map("usage", top.get("usage"), (*_SIMPLE["usage"][1], "password_file")))
    usage_password = _password_file("usage.password_file", usage.pop("password_file", None))
    sections = {k: _section(k, usage if k == "usage" else top.get(k)) for k in _SIMPLE}
    sections["usage"] = _usage(sections["usage"], usage_password)
    _check_tls(sections["server"])
    _check_metrics_port(sections["server"])
    a = _map("auth", top.get("auth"), ("required", "keys", "failed_rpm", "failed_burst"))
    keys = tuple(_key(f"auth.keys[{i}]", k) for i, k in enumerate(_list("auth.keys", a.get("keys", []) or [])))
    required = _bool("auth.required", a.get("required", bool(keys)))
    if required and not keys:
        raise ConfigError("auth.required: true but auth.keys is empty (set required: false to run without auth)")
    if not required and keys:
        raise ConfigError("auth.required: false only when auth.keys is empty")
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ConfigError("auth.keys: key names must be unique")
    rl = _map(
        "rate_limit",
        top.get("rate_limit"),
        ("backend", "redis_url", "redis_password_file", "on_redis_error", "connect_timeout_s", "timeout_s"),
    )
    backend = rl.get("backend", "memory")
    if backend not in ("memory", "redis"):
        raise ConfigError(f"rate_limit.backend: {backend!r} is not one of memory, redis")
    redis_url = rl.get("redis_url")
    if redis_url is not None:
        _str("rate_limit.redis_url", redis_url)
    if backend == "redis" and not redis_url:
        raise ConfigError("rate_limit.redis_url: required when rate_limit.backend is redis")
    if redis_url and _URL_PASSWORD.match(redis_url):
        raise ConfigError("rate_limit.redis_url: holds credentials; put the password in rate_limit.redis_password_file")
    redis_password = _password_file("rate_limit.redis_password_file", rl.get("redis_password_file"))
    on_redis_error = rl.get("on_redis_error", "allow")
    if on_redis_error not in ("allow", "reject"):
        raise ConfigError(f"rate_limit.on_redis_error: {on_redis_error!r} is not one of allow, reject")
    models = tuple(_model(f"models[{i}]", m) for i, m in enumerate(_list("models", top.get("models", []) or [])))
    if not models:
        raise ConfigError("models: at least one model is required")
    seen: dict[str, str] = {}
    for i, m in enumerate(models):
        for n in (m.name, *m.aliases):
            if n in seen:
                raise ConfigError(f"models[{i}]: name or alias {n!r} already used by model {seen[n]!r}")
            seen[n] = m.name
    for i, m in enumerate(models):
        for j, f in enumerate(m.fallbacks):
            if f not in seen or seen[f] == m.name:
                raise ConfigError(f"models[{i}].fallbacks[{j}]: {f!r} is not another configured model")
    for i, k in enumerate(keys):
        for j, n in enumerate(k.models):
            if n != "*" and n not in seen:
                raise ConfigError(f"auth.keys[{i}].models[{j}]: unknown model {n!r}")
    return Config(
        auth=Auth(
            required=required,
            keys=keys,
            failed_rpm=_num("auth.failed_rpm", a.get("failed_rpm", 60), integer=True, minimum=1),
            failed_burst=_num("auth.failed_burst", a.get("failed_burst", 20), integer=True, minimum=1),
        ),
        rate_limit=RateLimit(
            backend=backend,
            redis_url=redis_url,
            redis_password=redis_password,
            on_redis_error=on_redis_error,
            connect_timeout_s=_num("rate_limit.connect_timeout_s", rl.get("connect_timeout_s", 0.25), exclusive=True),
            timeout_s=_num("rate_limit.timeout_s", rl.get("timeout_s", 0.25), exclusive=True),
        ),
        models=models,
        **sections,
    )


def load(path: str) -> Config:
    return load_versioned(path)[0]


def load_versioned(path: str) -> tuple[Config, str]:
    """The config and its version: the sha256 hex of the bytes parsed (what ``sha256sum FILE``
    prints), read once, so the version is exactly that of the config in force."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        raw = yaml.safe_load(data.decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        return parse(raw), hashlib.sha256(data).hexdigest()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


_EMBED_HINTS = ("embed", "minilm", "bge-", "e5-", "gte-", "nomic")


def from_backends(pairs: list[str], key_digests: list[tuple[str, str]], base: Config | None = None) -> Config:
    """Config from repeated ``--backend MODEL=URL`` (a model named twice gets two replicas).

    Capabilities are unknown here: a name that looks like an embedding model
    (embed, minilm, bge-, e5-, gte-, nomic) is an embedding model, anything else chat+completion.
    """
    order: dict[str, list[str]] = {}
    for i, p in enumerate(pairs):
        name, sep, url = p.partition("=")
        if not sep or not name:
            raise ConfigError(f"--backend[{i}]: expected MODEL=URL, got {p!r}")
        order.setdefault(name, []).append(_url(f"--backend {name}", url))
    raw_models = []
    for name, urls in order.items():
        emb = any(h in name.lower() for h in _EMBED_HINTS)
        raw_models.append(
            {
                "name": name,
                "replicas": urls,
                "capabilities": ["embedding"] if emb else ["chat", "completion"],
                "tier": "embedding" if emb else "lightweight",
            }
        )
    raw: dict[str, Any] = {"models": raw_models}
    if key_digests:
        raw["auth"] = {"required": True, "keys": [{"name": n, "sha256": d} for n, d in key_digests]}
    cfg = parse(raw)
    if base is not None:
        # --backend on top of --config replaces the model table only.
        cfg = replace(base, models=cfg.models, auth=cfg.auth if key_digests else base.auth)
    return cfg


# redis://user:secret@host or redis://:secret@host
_URL_PASSWORD = re.compile(r"^rediss?://[^/@]*:[^/@]*@")


def _database_url(where: str, v: Any) -> str:
    url = _str(where, v)
    if not re.match(r"^postgres(ql)?://[^/@:]+@[^/@]+/[A-Za-z0-9_]+$", url):
        raise ConfigError(
            f"{where}: expected postgresql://USER@HOST:PORT/DATABASE (the password goes in usage.password_file)"
        )
    return url


def _usage(u: Usage, password: str | None) -> Usage:
    if u.database_url is None:
        return u
    if password is None:
        raise ConfigError("usage.password_file: required with usage.database_url")
    return replace(u, password=password, gateway=u.gateway or socket.gethostname())


def _password_file(where: str, path: Any) -> str | None:
    """The secret in file ``path`` (surrounding whitespace stripped), or None without a path. Read
    here, by the gateway's own user, so `--check-config` and a start both fail on a missing or
    unreadable file, with the reason."""
    if path is None:
        return None
    _str(where, path)
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None
    if not secret:
        raise ConfigError(f"{where}: {path} is empty")
    return secret
