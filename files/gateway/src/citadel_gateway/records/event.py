"""One request as a row of citadel.usage_events (roles/postgresql/files/migrations)."""

from __future__ import annotations

import itertools
import os
import time

COLUMNS = (
    "ts",
    "event_id",
    "request_id",
    "key_name",
    "requested_model",
    "model",
    "endpoint",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
    "replica",
    "attempts",
    "cut",
    "gateway",
)
# The column types: each row travels to PostgreSQL as one element of a JSON array, read back
# with these (writer.py). Times go as integer microseconds (MICROSECONDS), because JSON encodes
# an integer about twice as fast as a float: the encoding is most of the accounting's CPU.
TYPES = (
    "timestamptz",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "smallint",
    "integer",
    "integer",
    "real",
    "real",
    "text",
    "smallint",
    "boolean",
    "text",
)

MICROSECONDS = frozenset({"ts", "latency_ms", "ttft_ms"})

# Event ids: unique across restarts and gateways (8 random bytes per process, then a counter),
# so a batch replayed from the journal after a partial write inserts nothing twice.
_PREFIX = os.urandom(8).hex()
_SEQ = itertools.count(1)


def event(req, status: int, seconds: float, gateway: str) -> tuple:
    """The row of a finished request: plain values only (JSON-able for the journal); ``ts`` is
    the arrival time in epoch microseconds, latency and TTFT are microseconds too."""
    return (
        time.time_ns() // 1000 - int(seconds * 1e6),
        f"{_PREFIX}-{next(_SEQ):x}",
        req.rid.decode("latin-1") if req.rid else "",
        req.key.name if req.key is not None else None,
        req.requested,
        req.model,
        req.endpoint,
        status,
        req.prompt_tokens,
        req.completion_tokens,
        int(seconds * 1e6),
        int(req.ttft_s * 1e6) if req.ttft_s is not None else None,
        req.replica,
        req.attempts,
        req.cut,
        gateway,
    )
