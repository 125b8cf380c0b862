"""OpenAI-shaped error answers: a JSON body, or an SSE error event for a stream that broke."""

from __future__ import annotations

import json
from typing import NamedTuple

JSON_CT = (b"content-type", b"application/json")
_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}

# OpenAI gives a few codes a type of their own (a spent budget: type and code insufficient_quota).
_CODE_TYPE = {"insufficient_quota": "insufficient_quota"}


class Denied(NamedTuple):
    """A refusal or failure the client gets as an error answer."""

    status: int
    message: str
    code: str
    reason: str  # llm_rejections_total{reason}; "" for upstream failures (not a rejection)
    headers: tuple = ()


def error_body(status: int, message: str, code: str) -> bytes:
    kind = _CODE_TYPE.get(code) or _TYPE.get(status, "server_error")
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


def error_event(status: int, message: str, code: str) -> bytes:
    """The last event of a stream that broke after its first byte (then the connection ends
    without the chunked terminator, so no client takes the stream for complete)."""
    return b"data: " + error_body(status, message, code) + b"\n\n"


def error_headers(rid: bytes | None, extra=()) -> list:
    h = [JSON_CT]
    if rid:
        h.append((b"x-request-id", rid))
    h.extend(extra)
    return h


async def send_error(out, status: int, message: str, code: str, rid: bytes | None, headers=()) -> int:
    await out.whole(status, error_headers(rid, headers), error_body(status, message, code))
    return status
