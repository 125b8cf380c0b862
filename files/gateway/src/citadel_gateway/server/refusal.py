"""GatewayHttpProtocol's refusals and timeout answers: a final answer with ``Connection: close``,
our side shut, then a short bounded drain so that the client reads the answer, not a reset."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from ..errors import JSON_CT, error_body
from .sweeper import _CLOSED, _LINGER

_LINGER_S = 2.0  # a refused connection drains what the client still sends for at most this long
_LINGER_BYTES = 1 << 20  # ... or this many bytes, whichever comes first


def _error(status: int, message: str, code: str) -> tuple[int, list, bytes]:
    return status, [JSON_CT], error_body(status, message, code)


class RefusalMixin:
    """The output half of GatewayHttpProtocol that is not a served request (the protocol's
    attributes: phase, since, cycle, pipeline, flow, the transports)."""

    def _answer(self, status: int, headers, body: bytes) -> bytes:
        """A complete response that closes the connection."""
        parts = [STATUS_LINE[status]]
        for n, v in self.server_state.default_headers:
            parts += (n, b": ", v, b"\r\n")
        for n, v in headers:
            if n.lower() not in (b"content-length", b"connection", b"transfer-encoding"):
                parts += (n, b": ", v, b"\r\n")
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body)
        return b"".join(parts)

    def _refuse(self) -> None:
        """Answer ``self.refusal`` and close; the request's body is never read. Behind answers
        still being written (pipelining), it waits its turn in uvicorn's pipeline queue."""
        self.phase = _LINGER
        self.since = None
        self.head_left = None
        cycle = self.cycle
        if (cycle is not None and not cycle.response_complete) or self.pipeline:
            self.flow.pause_reading()
            self.pipeline.appendleft((None, self.refusal))  # on_response_complete writes it
            return
        self._write_refusal(self.refusal)

    def _write_refusal(self, data: bytes) -> None:
        """Write a final answer, shut down our side, then drain and drop what the client still
        sends for a short bounded time, so that it reads the answer instead of a reset."""
        self.phase = _LINGER
        t = self.raw_transport
        if t.is_closing():
            return
        self.transport._flush()  # a response head still held by the coalescer goes first
        t.write(data)
        self.linger_left = _LINGER_BYTES
        self.since = self.loop.time() + _LINGER_S
        self.flow.resume_reading()
        try:
            t.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            t.close()

    def head_timeout(self) -> None:
        self.phase = _CLOSED
        self.transport.close()

    def body_timeout(self, limit: float) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_started or self.pipeline:
            self.phase = _CLOSED
            self.transport.close()
            return
        # The app must not answer after us; an ASGI app waiting in receive() wakes to a disconnect.
        cycle.disconnected = True
        event = getattr(cycle, "message_event", None)
        if event is not None:
            event.set()
        self._write_refusal(self._answer(*_error(408, f"request body not received within {limit:g} s", "body_timeout")))
