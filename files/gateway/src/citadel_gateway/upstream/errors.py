"""The upstream client's errors, classified for retry decisions (``ConnectError``: never sent)."""

from __future__ import annotations


class UpstreamError(Exception):
    """Upstream failed (the request may or may not have reached it)."""


class ConnectError(UpstreamError):
    """The request did not reach the upstream (refused, connect failed or timed out)."""


class Refused(ConnectError):
    """Connection refused: nothing listens there (the breaker opens at once)."""


class UpstreamTimeout(UpstreamError):
    """The per-request deadline passed."""


class ResponseTooLarge(UpstreamError):
    """The body is larger than the caller's limit (the connection was dropped).

    ``received``: body bytes read before giving up (0 when the declared Content-Length already
    said so); ``declared``: the Content-Length, or None when the upstream did not give one."""

    def __init__(self, limit: int, received: int, declared: int | None) -> None:
        said = f"declared {declared} bytes" if declared is not None else f"{received} bytes received already"
        super().__init__(f"upstream answer over the {limit} byte limit ({said})")
        self.limit = limit
        self.received = received
        self.declared = declared
