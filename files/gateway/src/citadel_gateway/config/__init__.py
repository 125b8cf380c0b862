"""Load and validate the gateway's YAML config (no web framework imports).

The schema is the one the llm_gateway role renders; see README.md. Every error names
the offending key path, e.g. ``models[1].replicas[0]: expected a URL http://host:port``.
"""

from .parse import from_backends, load, load_versioned, parse
from .schema import (
    CAPABILITIES,
    PROBES,
    ROUTING_POLICIES,
    TIERS,
    ApiKey,
    Auth,
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

__all__ = [
    "CAPABILITIES",
    "PROBES",
    "ROUTING_POLICIES",
    "TIERS",
    "ApiKey",
    "Auth",
    "Circuit",
    "Config",
    "ConfigError",
    "Health",
    "Latency",
    "Model",
    "Queue",
    "RateLimit",
    "Retry",
    "Routing",
    "Server",
    "Upstream",
    "Usage",
    "from_backends",
    "load",
    "load_versioned",
    "parse",
]
