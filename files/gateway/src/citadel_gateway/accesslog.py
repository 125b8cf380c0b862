"""The JSON access log: one pre-formatted line per request, written in batches (no logging
module per request)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

_QUOTED: dict[str, str] = {}


def _q(s: str | None) -> str:
    """JSON literal of a config-derived name, cached (the set of names is small)."""
    if s is None:
        return "null"
    r = _QUOTED.get(s)
    if r is None:
        r = json.dumps(s)
        if len(_QUOTED) < 10000:
            _QUOTED[s] = r
    return r


def _id(rid: bytes | None) -> str:
    return rid.decode("latin-1") if rid else ""


def line(req, status: int, seconds: float) -> str:
    """Request ids are validated or ours (safe characters); names come from the config."""
    err = f',"error":{json.dumps(req.error)}' if req.error else ""
    return (
        f'{{"ts":{time.time():.3f},"request_id":"{_id(req.rid)}","upstream_request_id":"{_id(req.upstream_rid)}",'
        f'"key":{_q(req.key.name if req.key else None)},"model":{_q(req.model)},"endpoint":"{req.endpoint}",'
        f'"status":{status},"duration_ms":{seconds * 1000:.2f},"replica":{_q(req.replica)},'
        f'"attempts":{req.attempts}{err}}}'
    )


class AccessLog:
    def __init__(self, stream=None, enabled: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.buf: list[str] = []
        self._handle: asyncio.TimerHandle | None = None

    def write(self, text: str) -> None:
        self.buf.append(text)
        if len(self.buf) >= 512:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            data = "\n".join(self.buf) + "\n"
            self.buf.clear()
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def _tick(self) -> None:
        self.flush()
        self._handle = asyncio.get_running_loop().call_later(0.2, self._tick)

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(0.2, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.flush()
