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
# The column types, for the array parameters of the insert (writer.py).
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

# Event ids: unique across restarts and gateways (8 random bytes per process, then a counter),
# so a batch replayed from the journal after a partial write inserts nothing twice.
_PREFIX = os.urandom(8).hex()
_SEQ = itertools.count(1)


def event(req, status: int, seconds: float, gateway: str) -> tuple:
    """The row of a finished request: plain values only (JSON-able for the journal); ``ts`` is
    the arrival time in epoch seconds."""
    return (
        time.time() - seconds,
        f"{_PREFIX}-{next(_SEQ):x}",
        req.rid.decode("latin-1") if req.rid else "",
        req.key.name if req.key is not None else None,
        req.requested,
        req.model,
        req.endpoint,
        status,
        req.prompt_tokens,
        req.completion_tokens,
        round(seconds * 1000, 3),
        round(req.ttft_s * 1000, 3) if req.ttft_s is not None else None,
        req.replica,
        req.attempts,
        req.cut,
        gateway,
    )
