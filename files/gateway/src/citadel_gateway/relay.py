"""Relaying an upstream answer to the client, under the model's deadlines.

Non-streamed: the whole answer within the model's total deadline, at most
``upstream.max_response_bytes`` (502 beyond); a large answer of known length is passed on chunk
by chunk instead of being held. Streams: the response head is held back until the first body
byte (so a first-byte timeout or an early failure is still a clean 504/502), then every chunk
is passed on as it arrives with at most ``chunk_gap`` between two and (optional) ``stream_max``
for the whole. A stream that breaks after its first byte ends with an OpenAI-shaped error event
and a connection closed without the chunked terminator: no client takes it for complete.
"""

from __future__ import annotations

import asyncio
import time

from .errors import error_event, send_error
from .metrics import observe
from .upstream import ResponseTooLarge, UpstreamError, UpstreamTimeout
from .usage import StreamUsage, usage_tokens

_HOP = frozenset(
    (b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server", b"x-request-id")
)
PASS_ON_BYTES = 1024 * 1024  # known-length answers above this are passed on, not held
_DONE = b"data: [DONE]"  # an OpenAI stream's last event
_DONE_TAIL = 24  # the stream's last bytes kept to find it (with its trailing blank line, CRLF too)


class Relay:
    """One answer from replica ``r`` of ``model`` to the client (``out``)."""

    __slots__ = ("gw", "req", "model", "r", "resp", "out", "t_up", "cap")

    def __init__(self, gw, req, model, r, resp, out, t_up: float, cap: float | None) -> None:
        self.gw, self.req, self.model, self.r, self.resp, self.out = gw, req, model, r, resp, out
        self.t_up = t_up  # perf_counter when the request went upstream
        self.cap = cap  # loop time when a stream must be over (None: no cap)

    def headers(self) -> list:
        req = self.req
        h = [(b"x-request-id", req.rid)]
        if req.served_by:
            h.append((b"x-citadel-model", req.served_by.encode()))
        for k, v in self.resp.headers:
            if k.lower() not in _HOP:
                h.append((k, v))
        return h

    async def run(self) -> int:
        try:
            if self.resp.content_type.startswith(b"text/event-stream"):
                return await self.stream()
            return await self.whole()
        finally:
            self.resp.close()

    def _failed(self, e: Exception) -> int:
        """Book an upstream failure; the status the client is (or would be) told."""
        req = self.req
        if req.client_gone:
            self.r.breaker.release()  # the client left: says nothing about the replica
            req.error = "client disconnected"
            return 499
        self.r.breaker.failure()
        req.error = str(e)
        return 504 if isinstance(e, UpstreamTimeout) else 502

    async def whole(self) -> int:
        req, resp, name = self.req, self.resp, self.model.name
        limit = self.gw.state.cfg.upstream.max_response_bytes
        length = resp.content_length
        if length is not None and length > PASS_ON_BYTES and length <= limit:
            return await self.pass_on()
        try:
            data = resp.read_now(limit)
            if data is None:
                data = await resp.read(limit)  # raises at once when the head declared too much
        except ResponseTooLarge:
            self.r.breaker.success()  # the replica works; its answer is just more than we relay
            req.error = f"upstream answer over upstream.max_response_bytes ({limit})"
            return await send_error(self.out, 502, f"upstream {name} answer too large", "upstream_too_large", req.rid)
        except UpstreamError as e:
            req.upstream_s = time.perf_counter() - self.t_up
            status = self._failed(e)
            if status == 499:
                return 499
            msg = f"upstream {name} timed out" if status == 504 else f"upstream {name} failed: {e}"
            return await send_error(
                self.out, status, msg, "upstream_timeout" if status == 504 else "upstream_error", req.rid
            )
        up = req.upstream_s = time.perf_counter() - self.t_up
        status = resp.status
        req.started = True
        try:
            await self.out.whole(status, self.headers(), data)
        finally:  # the bookkeeping once the answer is on its way: it is not the client's wait
            if status < 500:
                self.r.breaker.success()
            else:
                self.r.breaker.failure()
        if status == 200:
            self._count(usage_tokens(data), up)
        return status

    def _count(self, u: tuple[int, int] | None, seconds: float | None) -> None:
        """The answer's tokens: the request's record, the counters; with ``seconds`` (a whole
        answer, not a stream), the model's observed latency and speed."""
        req = self.req
        if u is not None:
            req.prompt_tokens, req.completion_tokens = u
            self.gw.metrics.tokens_used(self.model.name, req.key.name if req.key is not None else None, *u)
        if seconds is not None:
            self.model.observe(seconds, u[1] if u else None)

    async def pass_on(self) -> int:
        """A large answer of known length, chunk by chunk (chunked to the client)."""
        req, resp, out = self.req, self.resp, self.out
        req.started = True
        await out.start(resp.status, self.headers())
        tail = b""
        while True:
            try:
                chunk = await resp.next_chunk()
            except UpstreamError as e:
                return await self._broken(e)
            if chunk is None:
                break
            tail = (tail + chunk)[-512:]
            await out.chunk(chunk)
        req.upstream_s = time.perf_counter() - self.t_up
        await out.end()
        self.r.breaker.success()
        if resp.status == 200:
            self._count(usage_tokens(tail), req.upstream_s)
        return resp.status

    async def _broken(self, e: Exception) -> int:
        """After the first byte: an error event, then the connection ends without the terminator."""
        status = self._failed(e)
        self.req.cut = True
        if status != 499:
            name = self.model.name
            msg = {
                504: f"upstream {self.model.name} stream deadline exceeded: {e}",
                502: f"upstream {name} stream broke: {e}",
            }[status]
            await self.out.chunk(error_event(status, msg, "stream_timeout" if status == 504 else "stream_broken"))
        await self.out.abort()
        return status

    async def stream(self) -> int:
        req, resp, out, model = self.req, self.resp, self.out, self.model
        loop = asyncio.get_running_loop()
        try:
            first = await resp.next_chunk()  # within the first-byte deadline set at send
        except UpstreamError as e:
            req.upstream_s = time.perf_counter() - self.t_up
            status = self._failed(e)
            if status == 499:
                return 499
            if status == 504:
                msg, code = (
                    f"upstream {model.name} sent no first byte within {model.first_byte_s:g} s",
                    "first_byte_timeout",
                )
            else:
                msg, code = f"upstream {model.name} failed before its first byte: {e}", "upstream_error"
            return await send_error(out, status, msg, code, req.rid)
        now = time.perf_counter()
        req.upstream_s = now - self.t_up
        req.ttft_s = now - req.t0
        observe(self.gw.metrics.ttfb, (model.name, req.endpoint), req.ttft_s)
        req.started = True
        await out.start(resp.status, self.headers())
        watcher = None if req.hooked else loop.create_task(out.watch_disconnect(req.on_disconnect))
        usage = StreamUsage(req.hide_usage)
        # The [DONE] event reached the client: the answer is whole, whatever happens to the
        # upstream's chunked terminator. The openai SDK closes its connection on [DONE], often
        # before that terminator arrived: a 200 delivered, with its usage, not a 499.
        done, tail = False, b""
        try:
            chunk = first
            while chunk is not None:
                await out.chunk(usage.feed(chunk))
                if not done:  # [DONE] may come split across two chunks
                    tail = (tail + chunk[-_DONE_TAIL:])[-_DONE_TAIL:]
                    done = _DONE in tail
                if req.client_gone:
                    if done:
                        break
                    self.r.breaker.release()
                    return 499
                gap_end = loop.time() + model.gap_s
                capped = self.cap is not None and self.cap < gap_end
                resp.set_deadline(self.cap if capped else gap_end)
                try:
                    chunk = await resp.next_chunk()
                except UpstreamTimeout:
                    if done:
                        break
                    what = (
                        f"stream over its {model.stream_max_s:g} s cap" if capped else f"no chunk for {model.gap_s:g} s"
                    )
                    return await self._broken(UpstreamTimeout(what))
                except UpstreamError as e:
                    if done:
                        break
                    return await self._broken(e)
        finally:
            if watcher is not None:
                watcher.cancel()
        await out.chunk(usage.flush())
        await out.end()
        if resp.status < 500:
            self.r.breaker.success()
        else:
            self.r.breaker.release()
        if resp.status == 200:
            self._count(usage.tokens, None)
        return resp.status
