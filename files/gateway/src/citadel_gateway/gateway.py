"""The hot path for the three POST endpoints: ``check_head`` (the verdict on a head) and ``serve``.

Plain requests reach ``check_head`` and then ``serve`` straight from our uvicorn protocol
(server/, no ASGI); the rest through ``Gateway.__call__``, an ASGI handler dispatched before
FastAPI (app.py). A request goes auth.py → admission.py → forward.py (retry.py) → relay.py, and
ends in accesslog.py and metrics.py. The lifecycle and reload are in runtime.py; the state
(state.py: router, keys, limits, queues) is swapped whole on reload, and a request keeps the
objects it started with, so a reload never disturbs it.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

import orjson

from . import auth, cache, selection
from . import config as C
from .accesslog import line
from .admission import Slot, rate_limit, rate_limit_now, within_budget
from .asgi import AsgiResponder, StreamAborted
from .context import GONE, HOT, TOO_LARGE, Request
from .errors import Denied, error_body, error_headers, send_error
from .forward import Forward, reencoded
from .limits import MemoryLimiter
from .metrics import OVERHEAD_BUCKETS, inc, observe
from .runtime import Runtime
from .state import State
from .usage import ask_for_usage

__all__ = ["HOT", "TOO_LARGE", "Gateway", "State"]
log = logging.getLogger("citadel_gateway")
_RID_OK = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class Gateway(Runtime):
    """The hot path on top of the Runtime (lifecycle, reload, the pool and the limiter)."""

    def __init__(
        self, cfg: C.Config, config_path: str | None = None, log_stream=None, config_version: str | None = None
    ) -> None:
        super().__init__(cfg, config_path, log_stream, config_version)
        self._rid_prefix = os.urandom(4).hex().encode()
        self._rid = itertools.count(1)

    def new_rid(self) -> bytes:
        """A request id of our own (unique per process start)."""
        return b"%s-%x" % (self._rid_prefix, next(self._rid))

    def check_head(
        self,
        path: str,
        headers,
        client: str | None,
        content_length: int | None,
        expect_continue: bool,
        metrics_listener: bool = False,
    ):
        """Verdict on a complete request head, before any body byte is read: a refusal
        (status, headers, body) to answer and close, or the go-on value to hand to ``serve``
        (for a hot path the Request, its key found once here; None elsewhere). With
        server.metrics_port set, /metrics is served on that listener only and nothing else is
        (404). Hot paths: the key (401, 429 for an address that keeps failing); every path: a
        declared body over server.max_body_bytes (413)."""
        st = self.state
        if st.cfg.server.metrics_port is not None and metrics_listener is not (path == "/metrics"):
            where = "the metrics port" if metrics_listener else "the API port; it is on the metrics port"
            msg = f"{path} is not served on {where}"
            return 404, error_headers(None), error_body(404, msg, "not_found")
        denied = None
        hot = path in HOT
        if hot:
            # One pass over the headers: the key and the client's request id.
            bearer = xkey = rid = None
            for k, v in headers:
                if k == b"authorization":
                    bearer = v
                elif k == b"x-api-key":
                    xkey = v
                elif k == b"x-request-id" and rid is None:
                    rid = v
            req = Request(path, 0.0)
            req.rid = rid if rid is not None and _RID_OK.match(rid) else self.new_rid()
            req.state = st
            a = st.cfg.auth
            if a.required:
                verdict = auth.authenticate_token(a, st.keys, self.failed_auth, auth.token_of(bearer, xkey), client)
                if type(verdict) is Denied:
                    denied = verdict
                else:
                    req.key = verdict
                    req.allowed = st.allowed[verdict.name]
        limit = st.cfg.server.max_body_bytes
        if denied is None and content_length is not None and content_length > limit:
            denied = Denied(413, f"request body over {limit} bytes", "body_too_large", "body_too_large")
        if denied is None:
            return req if hot else None
        if hot:
            req.t0 = time.perf_counter()
            self._finish(req, self._count(denied, req))
            return (
                denied.status,
                error_headers(req.rid, denied.headers),
                error_body(denied.status, denied.message, denied.code),
            )
        return (
            denied.status,
            error_headers(None, denied.headers),
            error_body(denied.status, denied.message, denied.code),
        )

    async def __call__(self, scope, receive, send) -> None:
        """ASGI entry to the hot path, for what our protocol hands to ASGI (pipelined requests,
        ``Expect: 100-continue``, HTTP/1.0, other methods) and for other ASGI servers."""
        out = AsgiResponder(receive, send)
        if scope["method"] == "POST":
            client = scope.get("client")
            verdict = self.check_head(scope["path"], scope["headers"], client[0] if client else None, None, False)
            if type(verdict) is tuple:
                await out.whole(*verdict)
                return
            body = await out.read_body(self.state.cfg.server.max_body_bytes)
        else:
            verdict, body = None, b""
        await self.serve(scope["method"], scope["path"], scope["headers"], body, out, verdict)

    def _client_rid(self, headers) -> bytes:
        for k, v in headers:
            if k == b"x-request-id":
                if _RID_OK.match(v):
                    return v
                break
        return self.new_rid()

    async def serve(self, method: str, path: str, headers, body, out, req: Request | None = None) -> None:
        """Answer one request on a hot path whose head passed ``check_head`` (``req``: what it
        returned; None when the head was not judged, e.g. a GET). ``body`` is the whole body,
        or TOO_LARGE / GONE; ``out`` writes the answer (server.HotCycle or AsgiResponder)."""
        if req is None:
            req = Request(path, time.perf_counter())
            req.rid = self._client_rid(headers)
        else:
            req.t0 = time.perf_counter()
        try:
            status = await self._handle(method, headers, body, out, req)
        except StreamAborted:
            raise
        except Exception:  # noqa: BLE001 - a gateway bug: log it, answer without a stack trace
            log.exception("internal error on %s", path)
            status = 500
            if not req.started:
                await send_error(out, 500, "internal gateway error", "internal_error", req.rid)
        self._finish(req, status)

    def _finish(self, req: Request, status: int) -> None:
        dt = time.perf_counter() - req.t0
        m = self.metrics
        model = req.model or "unknown"
        inc(m.requests, (model, req.endpoint, status))
        if req.key is not None:
            inc(m.key_requests, (req.key.name, model, status))
        if req.model is not None:
            observe(m.duration, (req.model, req.endpoint), dt)
        if req.upstream_s is not None:
            observe(m.overhead, (req.endpoint,), max(0.0, dt - req.upstream_s), OVERHEAD_BUCKETS)
        key = req.key
        if key is not None and (key.daily_tokens or key.monthly_tokens):
            tokens = (req.prompt_tokens or 0) + (req.completion_tokens or 0)
            if tokens:
                self.ledger.charge(key.name, tokens)
        text = None
        if self.access.enabled:
            text = line(req, status, dt)
            self.access.write(text)
        # every request of a valid key (all when auth is off): a client without one cannot fill the database
        usage = self.usage
        if usage is not None and (key is not None or not self.state.cfg.auth.required):
            usage.record(text or line(req, status, dt))  # the access-log line is the row

    def _count(self, denied: Denied, req: Request) -> int:
        if denied.reason:
            inc(self.metrics.rejections, (req.model or "unknown", denied.reason))
        return denied.status

    async def _deny(self, out, req: Request, denied: Denied) -> int:
        if denied.status == 499:
            return 499
        if req.error is None and denied.status >= 500:
            req.error = denied.message
        await send_error(out, denied.status, denied.message, denied.code, req.rid, denied.headers)
        return self._count(denied, req)

    async def _handle(self, method: str, headers, body, out, req: Request) -> int:
        if method != "POST":
            return await send_error(
                out,
                405,
                f"method {method} not allowed; use POST",
                "method_not_allowed",
                req.rid,
                ((b"allow", b"POST"),),
            )
        st = self.state
        if req.state is not st:  # not judged by check_head, or a reload since: judge by the new keys
            req.key = req.allowed = None
            if st.cfg.auth.required:
                token = auth.presented(headers)
                key = st.keys.find(token) if token is not None else None
                if key is None:  # a POST whose head passed check_head: only a reload in between gets here
                    return await self._deny(out, req, auth.INVALID)
                req.key = key
                req.allowed = st.allowed[key.name]
        key = req.key
        if body is TOO_LARGE:
            limit = st.cfg.server.max_body_bytes
            return await send_error(out, 413, f"request body over {limit} bytes", "body_too_large", req.rid)
        if body is GONE:
            return 499
        try:
            # orjson: the stdlib's parser, run cold between requests, was ~6 us of the latency a
            # request gains at concurrency 1. Stricter: NaN, lone surrogates and invalid UTF-8 are
            # a 400 here, not passed on. What the gateway edits it re-encodes exactly (reencoded).
            obj = orjson.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return await send_error(out, 400, "request body is not valid JSON", "invalid_json", req.rid)
        if not isinstance(obj, dict):
            return await send_error(out, 400, "request body must be a JSON object", "invalid_request", req.rid)
        name = obj.get("model")
        if not isinstance(name, str) or not name:
            return await send_error(out, 400, "'model' is required and must be a string", "invalid_model", req.rid)
        req.requested = name[:256]  # as the client sent it, into the records: bounded
        stream = obj.get("stream") is True

        if name == "auto":
            req.auto = selection.hints(headers, req.endpoint)
            model = selection.choose(st.models_for(key), *req.auto)
            req.served_by = model.name if model is not None else None
        else:
            model = st.router.get(name)
        if model is None:
            if name == "auto":
                req.model = "auto"
                return await self._deny(
                    out,
                    req,
                    Denied(
                        503,
                        f"no healthy model the key may use offers {req.auto[0]}",
                        "no_replica",
                        "no_replica",
                        ((b"retry-after", b"5"),),
                    ),
                )
            return await send_error(out, 404, f"model {name!r} does not exist", "model_not_found", req.rid)
        req.model = model.name
        if req.allowed is not None and model.name not in req.allowed:
            return await self._deny(
                out,
                req,
                Denied(403, f"key {key.name!r} may not use model {model.name!r}", "model_not_allowed", "forbidden"),
            )
        if key is not None:
            limiter = self.limiter
            if type(limiter) is MemoryLimiter:
                refused = rate_limit_now(limiter, key)
            else:
                refused = await rate_limit(limiter, st.cfg.rate_limit.on_redis_error, self._limiter_error, key)
            if refused is None and (key.daily_tokens or key.monthly_tokens):
                refused = await within_budget(self.ledger, st.cfg.rate_limit.on_redis_error, self._limiter_error, key)
            if refused is not None:
                return await self._deny(out, req, refused)
        keep = None
        if model.cfg.cache or (key is not None and key.cache):
            hit, keep = await cache.lookup(self, obj, model.name, req, headers, out)
            if hit is not None:
                return hit
            if keep is not None:
                out = keep.recorder  # passes the answer on and keeps a copy
        if stream and req.endpoint != "embeddings":
            req.hide_usage = ask_for_usage(obj)  # the tokens of a stream come only when asked for
        if model.name != name or req.hide_usage:
            obj["model"] = model.name
            body = reencoded(body, model.name, req.hide_usage)

        req.hooked = out.hook_disconnect(req.on_disconnect)  # a client disconnect aborts the upstream request
        slot = Slot(st.admission)
        try:
            refused = None if slot.try_take(model.name) else await slot.take(model.name, req)
            if refused is None:
                refused = await Forward(self, st, req, obj, body, out, slot, headers).run(model, stream)
            if isinstance(refused, Denied):
                return await self._deny(out, req, refused)
        finally:
            slot.release()
        if keep is not None and refused == 200:
            await keep.done(self.metrics, model.name, req.cut)
        return refused
