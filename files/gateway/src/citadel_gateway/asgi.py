"""The hot path's output over plain ASGI ``send``/``receive`` (server.HotCycle is the same
interface written straight to the socket)."""

from __future__ import annotations

from .context import GONE, TOO_LARGE


class StreamAborted(Exception):
    """Raised to the ASGI server so it drops the connection without ending the body cleanly."""


class AsgiResponder:
    __slots__ = ("receive", "send")

    def __init__(self, receive, send) -> None:
        self.receive = receive
        self.send = send

    async def read_body(self, limit: int):
        parts = []
        size = 0
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                return GONE
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                return TOO_LARGE
            parts.append(chunk)
            if not msg.get("more_body"):
                return b"".join(parts)

    def hook_disconnect(self, callback) -> bool:
        """Under our uvicorn protocol a disconnect calls ``callback`` at once; elsewhere (False)
        the stream relay watches ``receive`` instead."""
        from .server import hook_asgi_disconnect  # server/ imports the gateway: late import

        return hook_asgi_disconnect(self.receive, callback)

    async def whole(self, status: int, headers: list, body: bytes) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def start(self, status: int, headers: list) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        await self.send({"type": "http.response.body", "body": b""})

    async def abort(self) -> None:
        raise StreamAborted("stream broken after its first byte")

    async def watch_disconnect(self, callback) -> None:
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                callback()
                return
