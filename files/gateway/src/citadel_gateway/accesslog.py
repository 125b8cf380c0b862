"""The JSON access log: one pre-formatted line per request, written in batches by a thread of its
own (no logging module per request, no write on the event loop). The same line is the request's
usage record (records/): one text made per request, for both.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import sys
import threading
import time

_QUOTED: dict[str, str] = {}
# Event ids: unique across restarts and gateways (8 random bytes per process, then a counter), so
# a usage batch replayed from the journal after a partial write inserts nothing twice.
_PREFIX = os.urandom(8).hex()
_SEQ = itertools.count(1)


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
    """Request ids are validated or ours (safe characters); names come from the config, except
    ``requested`` (the client's, hence JSON-quoted). Token counts are the upstream's ``usage``.
    ``ts`` is when the answer ended (epoch seconds, microsecond precision); the request arrived
    ``duration_ms`` earlier. The keys are the usage table's too (records/writer.py reads them)."""
    err = f',"error":{_text(req.error)}' if req.error else ""
    if req.prompt_tokens is not None:
        err += f',"prompt_tokens":{req.prompt_tokens},"completion_tokens":{req.completion_tokens}'
    if req.ttft_s is not None:
        err += f',"ttft_ms":{req.ttft_s * 1000:.2f}'
    if req.cut:
        err += ',"cut":true'
    return (
        f'{{"ts":{time.time():.6f},"event_id":"{_PREFIX}-{next(_SEQ):x}","request_id":"{_id(req.rid)}",'
        f'"upstream_request_id":"{_id(req.upstream_rid)}",'
        f'"key":{_q(req.key.name if req.key else None)},"requested":{_requested(req.requested, req.model)},'
        f'"model":{_q(req.model)},"endpoint":"{req.endpoint}",'
        f'"status":{status},"duration_ms":{seconds * 1000:.2f},"replica":{_q(req.replica)},'
        f'"attempts":{req.attempts}{err}}}'
    )


def _requested(name: str | None, served: str | None) -> str:
    if name is None:
        return "null"
    return _q(name) if name == served else _text(name)  # only served names are cached


def _text(s: str) -> str:
    """JSON literal of a string from outside (a client's, an upstream's), without NUL, which
    PostgreSQL's text and jsonb refuse (a whole usage batch would be refused for it)."""
    return json.dumps(s.replace("\x00", "\ufffd") if "\x00" in s else s)


class AccessLog:
    """Lines collect in the loop; a writer thread writes them (every 0.2 s, or per 512 lines).

    Writing a batch to a file or to journald's socket takes ~0.3 ms here, and a stalled journald
    longer: on the loop that is the request it lands on. The thread's write releases the GIL, so
    the loop goes on. Bounded: when the writer is 64 batches behind, the loop waits for it rather
    than drop a line or write out of order. ``stop`` writes everything before it returns.
    """

    BATCH = 512
    BEHIND = 64

    def __init__(self, stream=None, enabled: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.buf: list[str] = []
        self._handle: asyncio.TimerHandle | None = None
        self._batches: queue.Queue[str | None] = queue.Queue(self.BEHIND)
        self._writer: threading.Thread | None = None

    def write(self, text: str) -> None:
        self.buf.append(text)
        if len(self.buf) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        data = "\n".join(self.buf) + "\n"
        self.buf.clear()
        if self._writer is not None:
            self._batches.put(data)  # waits only when the writer is BEHIND batches behind
        else:
            self._write(data)

    def _write(self, data: str) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _run(self) -> None:
        while (data := self._batches.get()) is not None:
            self._write(data)

    def _tick(self) -> None:
        self.flush()
        self._handle = asyncio.get_running_loop().call_later(0.2, self._tick)

    def start(self) -> None:
        self._writer = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._writer.start()
        self._handle = asyncio.get_running_loop().call_later(0.2, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        writer, self._writer = self._writer, None
        if writer is not None:
            self._batches.put(None)  # after every batch already handed over: their order holds
            writer.join()
        self.flush()
