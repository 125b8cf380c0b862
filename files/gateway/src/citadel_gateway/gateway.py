"""The gateway's state and its hot path for the three POST endpoints (``Gateway.serve``).

Plain requests reach ``serve`` straight from our uvicorn protocol (server.py, no ASGI); the
rest through ``Gateway.__call__``, an ASGI handler dispatched before FastAPI/Starlette (see
app.py). Either way: no routing tables, middleware or Pydantic per request. The state (router,
keys, limits, queues) is swapped whole on reload; a request keeps the objects it started with,
so a reload never disturbs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import re
import sys
import time

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from . import config as C
from . import selection
from .backends import Model, Router
from .limits import Admission, MemoryLimiter, QueueFull, QueueTimeout, RedisLimiter, retry_after
from .metrics import OVERHEAD_BUCKETS, Metrics, inc, observe
from .upstream import Cancel, Pool, Refused, UpstreamError, UpstreamTimeout

# Upstream answers worth another replica before anything reached the client: vLLM says
# 500 when its engine died under a request (a replica being stopped), 502/503 when busy
# or starting.
_RETRY_STATUSES = frozenset((500, 502, 503))

log = logging.getLogger("citadel_gateway")

HOT = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}
_HOP = frozenset(
    (b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server", b"x-request-id")
)
_RID_OK = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_JSON_CT = (b"content-type", b"application/json")
_ERR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


def error_body(status: int, message: str, code: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": _ERR_TYPE.get(status, "server_error"), "code": code}}
    ).encode()


def usage_tokens(body: bytes) -> tuple[int, int] | None:
    """Prompt/completion tokens from a JSON response's ``usage`` without parsing the body:
    vLLM puts ``usage`` last, so search from the end."""
    i = body.rfind(b'"usage"')
    if i < 0:
        return None
    tail = body[i : i + 400]
    p = _PROMPT.search(tail)
    c = _COMPLETION.search(tail)
    return (int(p.group(1)) if p else 0, int(c.group(1)) if c else 0)


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


class AccessLog:
    """One pre-serialised JSON line per request, written in batches (no logging module per request)."""

    def __init__(self, stream=None, enabled: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.buf: list[str] = []
        self._handle: asyncio.TimerHandle | None = None

    def write(self, line: str) -> None:
        self.buf.append(line)
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


class State:
    """Everything derived from one config; replaced whole on reload."""

    def __init__(self, cfg: C.Config, previous: State | None = None) -> None:
        self.cfg = cfg
        self.router = Router(cfg, previous.router if previous else None)
        self.keys = {k.sha256: k for k in cfg.auth.keys}
        self.allowed = {k.name: (None if "*" in k.models else self._expand(k.models)) for k in cfg.auth.keys}
        q = cfg.queue
        self.admission: dict[str, Admission] = {}
        for m in self.router.models:
            old = previous.admission.get(m.name) if previous else None
            a = Admission(
                m.cfg.max_inflight or q.max_inflight,
                m.cfg.max_waiting if m.cfg.max_waiting is not None else q.max_waiting,
                q.wait_timeout_s,
            )
            if old is not None:  # in-flight and queued requests keep counting against the same queue
                old.max_inflight, old.max_waiting, old.wait_timeout = a.max_inflight, a.max_waiting, a.wait_timeout
            self.admission[m.name] = old if old is not None else a

    def _expand(self, names) -> frozenset[str]:
        out = set()
        for n in names:
            m = self.router.get(n)
            if m is not None:
                out.add(m.name)
        return frozenset(out)


class Gateway:
    def __init__(self, cfg: C.Config, config_path: str | None = None, log_stream=None) -> None:
        self.config_path = config_path
        self.metrics = Metrics()
        self.state = State(cfg)
        self.metrics.state = self.state
        self.pool = Pool(cfg.upstream.connect_timeout_s)
        self.limiter = self._make_limiter(cfg)
        self.access = AccessLog(log_stream, cfg.server.access_log)
        self.health = None
        self._rid_prefix = os.urandom(4).hex() + "-"
        self._rid = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()

    @staticmethod
    def _make_limiter(cfg: C.Config):
        if cfg.rate_limit.backend == "redis":
            return RedisLimiter(cfg.rate_limit.redis_url)
        return MemoryLimiter()

    # -- lifecycle (called from the ASGI lifespan) ------------------------------------
    async def start(self) -> None:
        from .health import HealthChecker

        self.access.start()
        cfg = self.state.cfg
        self.health = HealthChecker(self.state.router, self.fetch, cfg.health.interval_s, cfg.health.timeout_s)
        self.health.start()
        if not cfg.auth.required:
            log.warning("AUTH IS OFF: no --api-key / auth.keys given; anyone reaching this port can use every model")

    async def stop(self) -> None:
        if self.health is not None:
            await self.health.stop()
        self.pool.close()
        await self.limiter.close()
        self.access.stop()

    def reload(self) -> bool:
        """Re-read the config file (SIGHUP). An invalid file keeps the running config."""
        if not self.config_path:
            log.warning("reload requested but no --config file was given")
            return False
        try:
            cfg = C.load(self.config_path)
        except C.ConfigError as e:
            log.error("config reload failed, keeping the running config: %s", e)
            return False
        self.apply(cfg)
        log.warning("config reloaded from %s: %d models", self.config_path, len(cfg.models))
        return True

    def apply(self, cfg: C.Config) -> None:
        old = self.state
        new = State(cfg, old)
        if cfg.rate_limit != old.cfg.rate_limit:
            prev, self.limiter = self.limiter, self._make_limiter(cfg)
            t = asyncio.get_running_loop().create_task(prev.close())
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        self.pool.connect_timeout = cfg.upstream.connect_timeout_s
        self.access.enabled = cfg.server.access_log
        self.state = new
        self.metrics.state = new
        if self.health is not None:
            self.health.router = new.router
            self.health.interval = cfg.health.interval_s
            self.health.timeout = cfg.health.timeout_s

    # -- upstream helper for health checks ---------------------------------------------
    async def fetch(self, replica, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        body = body or b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {replica.label}\r\nUser-Agent: citadel-gateway-health\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        resp = await self.pool.request(replica.host, replica.port, head, body, loop.time() + timeout)
        try:
            data = await resp.read()
        finally:
            resp.close()
        return resp.status, data

    # -- the hot path ------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        """ASGI entry to the hot path, for what our protocol hands to ASGI (pipelined requests,
        ``Expect: 100-continue``, HTTP/1.0, other methods) and for other ASGI servers. Plain
        requests on our protocol (server.py) reach ``serve`` without ASGI."""
        out = AsgiResponder(receive, send)
        body = await out.read_body(self.state.cfg.server.max_body_bytes) if scope["method"] == "POST" else b""
        await self.serve(scope["method"], scope["path"], scope["headers"], body, out)

    async def serve(self, method: str, path: str, headers, body, out) -> None:
        """Answer one request on a hot path. ``body`` is the whole body, or TOO_LARGE / GONE;
        ``out`` writes the answer (server.HotCycle or AsgiResponder)."""
        endpoint = HOT[path]
        t0 = time.perf_counter()
        st = self.state
        info = _Info()
        try:
            status = await self._handle(method, path, headers, body, out, endpoint, st, info, t0)
        except Exception:  # noqa: BLE001 - a gateway bug: log it, answer without a stack trace
            log.exception("internal error on %s", path)
            status = 500
            if not info.started:
                await _send_error(out, 500, "internal gateway error", "internal_error", info.rid)
        dt = time.perf_counter() - t0
        m = self.metrics
        model = info.model or "unknown"
        inc(m.requests, (model, endpoint, status))
        if info.model is not None:
            observe(m.duration, (model, endpoint), dt)
        if info.upstream_s is not None:
            observe(m.overhead, (endpoint,), max(0.0, dt - info.upstream_s), OVERHEAD_BUCKETS)
        if self.access.enabled:
            # One line, formatted directly: request ids are validated/generated (safe characters),
            # names come from the config and are JSON-quoted once (_q).
            err = f',"error":{json.dumps(info.error)}' if info.error else ""
            self.access.write(
                f'{{"ts":{time.time():.3f},"request_id":"{info.rid.decode("latin-1") if info.rid else ""}",'
                f'"key":{_q(info.key)},"model":{_q(info.model)},"endpoint":"{endpoint}","status":{status},'
                f'"duration_ms":{dt * 1000:.2f},"replica":{_q(info.replica)},"retries":{info.retries}{err}}}'
            )

    async def _handle(self, method, path, headers, body, out, endpoint: str, st: State, info: _Info, t0: float) -> int:
        auth = xkey = rid = task = priority = None
        for k, v in headers:
            if k == b"authorization":
                auth = v
            elif k == b"x-api-key":
                xkey = v
            elif k == b"x-request-id":
                rid = v
            elif k == b"x-task":
                task = v
            elif k == b"x-priority":
                priority = v
        if rid is None or not _RID_OK.match(rid):
            rid = (self._rid_prefix + format(next(self._rid), "x")).encode()
        info.rid = rid
        if method != "POST":
            return await _send_error(
                out,
                405,
                f"method {method} not allowed; use POST",
                "method_not_allowed",
                rid,
                ((b"allow", b"POST"),),
            )

        # auth: sha256 of the presented key, compared in constant time against the stored digest
        key = None
        cfg = st.cfg
        if cfg.auth.required:
            token = None
            if auth is not None and auth[:7].lower() == b"bearer ":
                token = auth[7:].strip()
            elif xkey is not None:
                token = xkey.strip()
            if not token:
                return await self._reject(
                    out,
                    401,
                    "missing API key (Authorization: Bearer or X-API-Key)",
                    "missing_api_key",
                    rid,
                    None,
                    "unauthorized",
                )
            digest = hashlib.sha256(token).hexdigest()
            key = st.keys.get(digest)
            if key is None or not hmac.compare_digest(key.sha256, digest):
                return await self._reject(out, 401, "invalid API key", "invalid_api_key", rid, None, "unauthorized")
            info.key = key.name

        if body is TOO_LARGE:
            limit = cfg.server.max_body_bytes
            return await _send_error(out, 413, f"request body over {limit} bytes", "body_too_large", rid)
        if body is GONE:
            return 499
        try:
            obj = json.loads(body.decode())  # str: skips json's encoding detection
        except (ValueError, UnicodeDecodeError):
            return await _send_error(out, 400, "request body is not valid JSON", "invalid_json", rid)
        if not isinstance(obj, dict):
            return await _send_error(out, 400, "request body must be a JSON object", "invalid_request", rid)
        name = obj.get("model")
        if not isinstance(name, str) or not name:
            return await _send_error(out, 400, "'model' is required and must be a string", "invalid_model", rid)
        stream = obj.get("stream") is True

        router = st.router
        chosen = False
        if name == "auto":
            t = (
                task.decode("latin-1").strip().lower()
                if task
                else ("embedding" if endpoint == "embeddings" else "chat")
            )
            if endpoint == "embeddings":
                t = "embedding"
            pr = priority.decode("latin-1").strip().lower() if priority else "balanced"
            pr = pr if pr in selection.PRIORITIES else "balanced"
            model = selection.choose(router.models, t, pr)
            info.auto = (t, pr)
            if model is None:
                info.model = "auto"
                return await self._reject(
                    out,
                    503,
                    f"no healthy model offers {t}",
                    "no_replica",
                    rid,
                    "auto",
                    "no_replica",
                    ((b"retry-after", b"5"),),
                )
            chosen = True
        else:
            model = router.get(name)
            if model is None:
                return await _send_error(out, 404, f"model {name!r} does not exist", "model_not_found", rid)
        info.model = model.name
        if key is not None:
            allowed = st.allowed[key.name]
            if allowed is not None and model.name not in allowed:
                return await self._reject(
                    out,
                    403,
                    f"key {key.name!r} may not use model {model.name!r}",
                    "model_not_allowed",
                    rid,
                    model.name,
                    "forbidden",
                )
            if isinstance(self.limiter, MemoryLimiter):
                wait = self.limiter.take_now(key.name, key.rpm, key.burst)
            else:
                try:
                    wait = await self.limiter.take(key.name, key.rpm, key.burst)
                except Exception as e:  # noqa: BLE001 - Redis down: rate_limit.on_redis_error decides
                    inc(self.metrics.limiter_errors, ())
                    if cfg.rate_limit.on_redis_error == "reject":
                        log.error("rate limiter unavailable, rejecting request: %s", e)
                        return await self._reject(
                            out,
                            503,
                            "rate limiter unavailable",
                            "rate_limiter_unavailable",
                            rid,
                            model.name,
                            "limiter_unavailable",
                            ((b"retry-after", b"1"),),
                        )
                    log.error("rate limiter unavailable, allowing request: %s", e)
                    wait = 0.0
            if wait > 0:
                return await self._reject(
                    out,
                    429,
                    "rate limit exceeded",
                    "rate_limited",
                    rid,
                    model.name,
                    "rate_limited",
                    ((b"retry-after", retry_after(wait).encode()),),
                )
        if model.name != name:
            obj["model"] = model.name
            body = json.dumps(obj, separators=(",", ":")).encode()

        # On our protocol (server.py) a client disconnect fires info.cancel directly.
        info.hooked = out.hook_disconnect(info.cancel.fire)

        adm = st.admission[model.name]
        if not adm.try_acquire():
            try:
                await adm.acquire()
            except QueueFull:
                return await self._reject(
                    out,
                    429,
                    f"model {model.name} queue is full",
                    "queue_full",
                    rid,
                    model.name,
                    "queue_full",
                    ((b"retry-after", b"1"),),
                )
            except QueueTimeout:
                return await self._reject(
                    out,
                    503,
                    f"timed out waiting for a slot on {model.name}",
                    "queue_timeout",
                    rid,
                    model.name,
                    "queue_timeout",
                    ((b"retry-after", b"1"),),
                )
        try:
            return await self._forward(path, out, endpoint, st, info, model, obj, body, stream, chosen, t0)
        finally:
            adm.release()

    async def _reject(self, out, status, message, code, rid, model, reason, headers=()):
        m = self.metrics
        inc(m.rejections, (model or "unknown", reason))
        return await _send_error(out, status, message, code, rid, headers)

    async def _forward(self, path, out, endpoint, st, info, model: Model, obj, body, stream, chosen, t0) -> int:
        loop = asyncio.get_running_loop()
        cfg = st.cfg
        router = st.router
        retry = cfg.retry
        deadline = loop.time() + model.timeout_s
        path = path.encode()
        tried: list = []
        used_fallbacks = {model.name}
        attempts = 0
        primary = model
        m = self.metrics
        while True:
            r = model.pick(tried)
            if r is None:
                fb = None
                for fname in model.fallbacks if model is primary else primary.fallbacks:
                    cand = router.get(fname)
                    if cand is not None and cand.name not in used_fallbacks and cand.healthy_count():
                        fb = cand
                        break
                if fb is None and info.auto is not None:
                    # auto: the choice went down since it was made (health not yet updated): choose again
                    rest = [x for x in router.models if x.name not in used_fallbacks]
                    fb = selection.choose(rest, *info.auto)
                    if fb is not None:
                        used_fallbacks.add(fb.name)
                        model, tried = fb, []
                        obj["model"] = fb.name
                        body = json.dumps(obj, separators=(",", ":")).encode()
                        continue
                if fb is None:
                    info.error = "no healthy replica"
                    return await self._reject(
                        out,
                        503,
                        f"no healthy replica for {model.name}",
                        "no_replica",
                        info.rid,
                        primary.name,
                        "no_replica",
                        ((b"retry-after", b"5"),),
                    )
                inc(m.fallbacks, (primary.name, fb.name))
                used_fallbacks.add(fb.name)
                model, tried = fb, []
                obj["model"] = fb.name
                body = json.dumps(obj, separators=(",", ":")).encode()
                info.model_served = fb.name
                continue
            info.replica = r.label
            head = b"".join(
                (
                    b"POST ",
                    path,
                    b" HTTP/1.1\r\nHost: ",
                    r.label.encode(),
                    b"\r\nContent-Type: application/json\r\nContent-Length: ",
                    str(len(body)).encode(),
                    b"\r\nX-Request-Id: ",
                    info.rid,
                    b"\r\n\r\n",
                )
            )
            r.outstanding += 1
            t_up = time.perf_counter()
            err = None
            try:
                resp = await self.pool.request(r.host, r.port, head, body, deadline, info.cancel)
            except UpstreamError as e:
                if info.cancel.fired:
                    r.outstanding -= 1
                    r.breaker.release()  # the client left: says nothing about the replica
                    info.error = "client disconnected"
                    return 499
                if isinstance(e, UpstreamTimeout):
                    r.outstanding -= 1
                    r.breaker.failure()
                    info.error = str(e)
                    info.upstream_s = time.perf_counter() - t_up
                    return await _send_error(out, 504, f"upstream {model.name} timed out", "upstream_timeout", info.rid)
                # Nothing reached the client yet, whether or not the request reached the
                # upstream: inference has no side effects, so another replica may answer it
                # (a replica stopped mid-request resets the connection before any response).
                r.breaker.failure(hard=isinstance(e, Refused))
                err = e
            except BaseException:
                r.outstanding -= 1
                r.breaker.release()
                raise
            if err is None and resp.status in _RETRY_STATUSES and attempts + 1 < retry.attempts:
                resp.close()
                r.breaker.failure()
                err = UpstreamError(f"upstream answered {resp.status}")
            if err is not None:
                r.outstanding -= 1
                attempts += 1
                tried.append(r)
                info.error = str(err)
                if attempts >= retry.attempts or loop.time() >= deadline:
                    info.upstream_s = time.perf_counter() - t_up
                    return await _send_error(
                        out, 502, f"upstream {model.name} unavailable: {err}", "upstream_error", info.rid
                    )
                info.retries += 1
                inc(m.retries, (primary.name,))
                if model.pick_preview(tried) is None:
                    # every replica tried once: back off (jittered exponential) and allow them again,
                    # unless none is available at all (then fail fast instead of sleeping on dead sockets)
                    if not any(x.available() for x in model.replicas):
                        continue
                    delay = min(retry.backoff_max_s, retry.backoff_base_s * (2 ** (attempts - 1))) * (
                        0.5 + random.random() / 2
                    )
                    if loop.time() + delay >= deadline:
                        return await _send_error(
                            out, 504, f"upstream {model.name} deadline exceeded", "upstream_timeout", info.rid
                        )
                    await asyncio.sleep(delay)
                    tried = []
                continue
            break
        # response head received from replica r
        info.error = None
        try:
            return await self._relay(out, endpoint, info, model, r, resp, stream, chosen, t0, t_up)
        finally:
            r.outstanding -= 1

    async def _relay(self, out, endpoint, info, model, r, resp, stream, chosen, t0, t_up) -> int:
        status = resp.status
        headers = [(b"x-request-id", info.rid)]
        if chosen or info.model_served:
            headers.append((b"x-citadel-model", model.name.encode()))
        for k, v in resp.headers:
            if k.lower() not in _HOP:
                headers.append((k, v))
        m = self.metrics
        is_stream = stream or resp.content_type.startswith(b"text/event-stream")
        if not is_stream:
            try:
                data = await resp.read()
            except UpstreamError as e:
                resp.close()
                info.upstream_s = time.perf_counter() - t_up
                if info.cancel.fired:
                    r.breaker.release()
                    info.error = "client disconnected"
                    return 499
                r.breaker.failure()
                if isinstance(e, UpstreamTimeout):
                    return await _send_error(out, 504, f"upstream {model.name} timed out", "upstream_timeout", info.rid)
                resp.close()
                info.error = str(e)
                info.upstream_s = time.perf_counter() - t_up
                return await _send_error(
                    out, 502, f"upstream {model.name} failed mid-response", "upstream_error", info.rid
                )
            resp.close()
            up = time.perf_counter() - t_up
            info.upstream_s = up
            if status < 500:
                r.breaker.success()
            else:
                r.breaker.failure()
            if status == 200:
                u = usage_tokens(data)
                if u is not None:
                    if u[0]:
                        inc(m.tokens, (model.name, "prompt"), u[0])
                    if u[1]:
                        inc(m.tokens, (model.name, "completion"), u[1])
                model.observe(up, u[1] if u else None)
            info.started = True
            await out.whole(status, headers, data)
            return status
        # streaming: relay every chunk as it arrives; no retry once anything went out
        info.started = True
        info.upstream_s = time.perf_counter() - t_up  # upstream wait until the head; the rest is relaying
        await out.start(status, headers)
        cancel = info.cancel
        watcher = None if info.hooked else asyncio.get_running_loop().create_task(out.watch_disconnect(cancel))
        first = True
        ok = True
        try:
            while True:
                try:
                    chunk = await resp.next_chunk()
                except UpstreamError as e:
                    ok = cancel.fired
                    info.error = "client disconnected" if ok else f"stream broken: {e}"
                    if not ok:
                        r.breaker.failure()
                    break
                if chunk is None:
                    break
                if first:
                    first = False
                    observe(m.ttfb, (model.name, endpoint), time.perf_counter() - t0)
                await out.chunk(chunk)
            if not cancel.fired:
                await out.end()
        finally:
            if watcher is not None:
                watcher.cancel()
            resp.close()
        if ok and status < 500:
            r.breaker.success()
        else:
            r.breaker.release()
        return status if ok or not first else 502


class _Info:
    __slots__ = (
        "rid",
        "key",
        "model",
        "replica",
        "retries",
        "error",
        "upstream_s",
        "started",
        "model_served",
        "cancel",
        "hooked",
        "auto",
    )

    def __init__(self) -> None:
        self.rid = None
        self.key = None
        self.model = None
        self.replica = None
        self.retries = 0
        self.error = None
        self.upstream_s = None
        self.started = False
        self.model_served = None
        self.cancel = Cancel()
        self.hooked = False
        self.auto = None


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


TOO_LARGE = _Marker("TOO_LARGE")  # the body went over server.max_body_bytes (its rest was dropped)
GONE = _Marker("GONE")  # the client left before its body was complete


class AsgiResponder:
    """The hot path's output over plain ASGI ``send``/``receive`` (server.HotCycle is the same
    interface written straight to the socket)."""

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
        """On uvicorn's cycle under GatewayHttpProtocol, a disconnect calls ``callback`` at once;
        elsewhere (False) the stream relay watches ``receive`` instead."""
        cycle = getattr(self.receive, "__self__", None)
        if type(cycle) is RequestResponseCycle:
            cycle.citadel_on_disconnect = callback
            return True
        return False

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

    async def watch_disconnect(self, cancel: Cancel) -> None:
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                cancel.fire()
                return


async def _send_error(out, status: int, message: str, code: str, rid, headers=()) -> int:
    h = [_JSON_CT]
    if rid:
        h.append((b"x-request-id", rid))
    h.extend(headers)
    await out.whole(status, h, error_body(status, message, code))
    return status
