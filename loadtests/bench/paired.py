"""Latency at concurrency 1, interleaved request by request across systems.

wrk measures one system for a few seconds, then the next: on a VM whose speed drifts by tens of
percent within a minute, two systems' p99s then come from different machines, and direct's own
p99 moved by 2-3x between rounds in the runs that set this up. Here one client holds one
keep-alive connection per system and sends one request to each in turn, in a new random order
every cycle (so no system always follows the same one), so every system's samples come from the
same seconds and the drift hits all alike. Same request as wrk's (``body``), answers checked
(200, whole body read), bounded in time and count, 127.0.0.1 only.
"""

from __future__ import annotations

import gc
import random
import socket
import time
from dataclasses import dataclass, field


def body(model: str) -> bytes:
    """The chat completion every load of the benchmark sends (wrk gets it as BENCH_BODY)."""
    return (
        b'{"model":"%s","messages":[{"role":"system","content":"You are a helpful assistant."},'
        b'{"role":"user","content":"What is the capital of France? Answer in one sentence."}],'
        b'"max_tokens":64,"temperature":0}' % model.encode()
    )


@dataclass
class _System:
    name: str
    port: int
    request: bytes
    sock: socket.socket | None = None
    buf: bytes = b""
    samples: list[int] = field(default_factory=list)  # ns
    errors: int = 0

    def connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed mid-response")
        return data

    def one(self, record: bool) -> None:
        t0 = time.perf_counter_ns()
        try:
            if self.sock is None:
                self.connect()
            self.sock.sendall(self.request)
            buf = self.buf
            while (i := buf.find(b"\r\n\r\n")) < 0:
                buf += self._recv()
            head, rest = buf[:i].lower(), buf[i + 4 :]
            ok = head.startswith(b"http/1.1 200 ")
            j = head.find(b"\r\ncontent-length:")
            if j >= 0:
                end = head.find(b"\r\n", j + 2)
                n = int(head[j + 17 : end if end > 0 else None])
                while len(rest) < n:
                    rest += self._recv()
                self.buf = rest[n:]
            elif b"\r\ntransfer-encoding: chunked" in head:
                while (k := rest.find(b"0\r\n\r\n")) < 0:  # small JSON answers: one chunk and the end
                    rest += self._recv()
                self.buf = rest[k + 5 :]
            else:
                raise ConnectionError("answer with neither Content-Length nor chunked")
            if b"\r\nconnection: close" in head:
                self._drop()
        except (OSError, ValueError):
            self._drop()
            ok = False
        if not ok:
            self.errors += 1
        elif record:
            self.samples.append(time.perf_counter_ns() - t0)

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def summary(self) -> dict:
        s = sorted(self.samples)

        def q(p: float) -> float | None:
            return s[min(len(s) - 1, int(p / 100 * len(s)))] / 1e6 if s else None

        quantiles = {f"p{str(p).replace('.', '')}_ms": q(p) for p in (50, 90, 99, 99.9)}
        return {"requests": len(s), "errors": self.errors, **quantiles}


def run(systems: list[tuple[str, str, dict]], key: str, model: str, seconds: float, max_cycles: int = 200_000):
    """systems: (name, base URL, extra headers). One request to each in turn for ``seconds``
    (after 200 unrecorded ones each); returns {name: summary}."""
    payload = body(model)
    todo = []
    for name, base, headers in systems:
        if not base.startswith("http://127.0.0.1:"):
            raise SystemExit(f"refusing to load {base}: the benchmark targets 127.0.0.1 only")
        port = int(base.rsplit(":", 1)[1])
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        head += f"Authorization: Bearer {key}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(payload)}\r\n\r\n"
        todo.append(_System(name, port, head.encode() + payload))
    for s in todo:
        for _ in range(200):
            s.one(record=False)
    order = list(todo)
    shuffle = random.Random(len(todo)).shuffle  # seeded: a run can be repeated
    gc.disable()  # the client's own collections would land in someone's samples
    try:
        end = time.monotonic() + seconds
        cycle = 0
        while cycle < max_cycles and time.monotonic() < end:
            shuffle(order)
            for s in order:
                s.one(record=True)
            cycle += 1
    finally:
        gc.enable()
        for s in todo:
            s._drop()
    return {s.name: s.summary() for s in todo}
