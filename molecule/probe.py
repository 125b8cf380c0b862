"""A bounded chat load through the lab gateway that counts every request.

The operator tests (rolling restarts, drains, gateway restarts) run it while the
operation runs: half the workers send non-streamed chats, half streamed ones.
A non-streamed request counts as ok only with a 200 and a chat completion body;
a stream only with a 200, at least one content chunk, `data: [DONE]` and a
clean end of the chunked body. Each worker starts a request at most every
`interval_s`: a steady load, not a flood (on the lab's 2 cores a closed loop
of back-to-back chats starved the very playbooks under test: a gateway
playbook took 26 s idle, 119 s at 0.5 s and 64 s at 1 s per worker).
Everything else is recorded with its time and what was seen, so a failing test
says what broke and when. Every request carries an `X-Request-Id` of
`<prefix>-<n>`, the id of its usage row: the report keeps the ids of those that
succeeded.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field


@dataclass
class Report:
    ok: dict = field(default_factory=lambda: {"plain": 0, "stream": 0})
    failed: list = field(default_factory=list)  # (seconds since start, kind, what)
    ids: list = field(default_factory=list)  # X-Request-Id of every request that succeeded
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.ok.values()) + len(self.failed)

    def clean(self) -> bool:
        """Nothing failed, and both kinds of request got through (the load really ran)."""
        return not self.failed and self.ok["plain"] > 0 and self.ok["stream"] > 0

    def __str__(self) -> str:
        head = f"{self.total} requests in {self.seconds:.0f} s: {self.ok} ok, {len(self.failed)} failed"
        return "\n".join([head, *(f"  +{t:.1f}s {kind}: {what}" for t, kind, what in self.failed[:20])])


class Probe:
    """`with Probe(key) as p: ...operation...` then `p.report`. Bounded: it stops by itself after
    `max_s` seconds or `max_requests` requests, whichever comes first."""

    def __init__(
        self,
        key: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        model: str = "smollm2-135m",
        workers: int = 2,
        max_s: float = 1200,
        max_requests: int = 20000,
        timeout_s: float = 150,
        interval_s: float = 1.0,
        tls: ssl.SSLContext | None = None,  # HTTPS, trusting what this context trusts
    ) -> None:
        self.key, self.host, self.port, self.model, self.tls = key, host, port, model, tls
        self.workers, self.max_s, self.max_requests, self.timeout_s = workers, max_s, max_requests, timeout_s
        self.interval_s = interval_s
        self.report = Report()
        self.prefix = f"probe-{uuid.uuid4().hex[:12]}"
        self._seq = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0

    def __enter__(self) -> Probe:
        self._t0 = time.monotonic()
        for i in range(self.workers):
            t = threading.Thread(target=self._run, args=(i % 2 == 1,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)
        self.report.seconds = time.monotonic() - self._t0

    def _run(self, stream: bool) -> None:
        kind = "stream" if stream else "plain"
        next_start = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - self._t0 < self.max_s:
            # the pace: wait for this worker's next start (or the stop)
            if self._stop.wait(max(0.0, next_start - time.monotonic())):
                return
            next_start = max(next_start + self.interval_s, time.monotonic())
            with self._lock:
                if self.report.total >= self.max_requests:
                    return
                self._seq += 1
                rid = f"{self.prefix}-{self._seq}"
            try:
                what = self._stream(rid) if stream else self._plain(rid)
            except (OSError, http.client.HTTPException, ValueError) as e:
                what = f"{type(e).__name__}: {e}"
            with self._lock:
                if what is None:
                    self.report.ok[kind] += 1
                    self.report.ids.append(rid)
                else:
                    self.report.failed.append((time.monotonic() - self._t0, kind, what))

    def _request(self, stream: bool, rid: str) -> http.client.HTTPResponse:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 8,
            "temperature": 0,
            "stream": stream,
        }
        if self.tls:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s, context=self.tls)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body),
            {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json", "X-Request-Id": rid},
        )
        return conn.getresponse()

    def _plain(self, rid: str) -> str | None:
        """None when the answer is a complete chat completion, else what was wrong."""
        resp = self._request(False, rid)
        raw = resp.read()
        if resp.status != 200:
            return f"HTTP {resp.status} {raw[:200]!r}"
        choice = json.loads(raw)["choices"][0]
        if not isinstance(choice["message"]["content"], str) or not choice.get("finish_reason"):
            return f"incomplete body {raw[:200]!r}"
        return None

    def _stream(self, rid: str) -> str | None:
        """None when the stream is complete (content chunks, [DONE], clean end), else what was wrong.
        A chunked body cut short raises IncompleteRead in read(): recorded by the caller."""
        resp = self._request(True, rid)
        if resp.status != 200:
            return f"HTTP {resp.status} {resp.read()[:200]!r}"
        events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return f"truncated stream: {len(events)} events, last {events[-1:]!r}"
        chunks = [json.loads(e) for e in events[:-1]]
        if any("error" in c for c in chunks) or not any(c.get("choices") for c in chunks):
            return f"stream without content or with an error event: {events[:3]!r}"
        return None
