"""The attempt loop: pick a replica, send, and on a retryable failure try again (retry.py decides),
moving to a fallback model (or, for ``model: "auto"``, choosing again) when a model has no
available replica left. Only models the key may use are ever chosen; each model is entered
through its own admission queue.
"""

from __future__ import annotations

import asyncio
import json
import time

from . import routing, selection
from .errors import Denied
from .metrics import inc
from .relay import Relay
from .retry import KEY_REFUSED
from .upstream import Refused, UpstreamError, UpstreamTimeout
from .usage import ask_for_usage

_RETRY_5 = ((b"retry-after", b"5"),)
_STARTS: dict[tuple[str, str], bytes] = {}  # (path, replica URL) -> the request head up to the length


def reencoded(body: bytes, model: str, ask_usage: bool) -> bytes:
    """``body`` with the gateway's edits: ``model``, and with ``ask_usage`` stream_options asking
    for usage (usage.ask_for_usage). Parsed again with the standard library: it keeps integers of
    any size exact, where orjson (which reads every request, gateway.py) turns those past 64 bits
    into floats. Only requests the gateway edits pay for it."""
    obj = json.loads(body)
    obj["model"] = model
    if ask_usage:
        ask_for_usage(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def _allowed(req, name: str) -> bool:
    return req.allowed is None or name in req.allowed


def next_model(st, req, primary, used: set):
    """A fallback of the primary (or for auto a new choice) the key may use, with a healthy replica."""
    for name in primary.fallbacks:
        cand = st.router.get(name)
        if cand is not None and cand.name not in used and _allowed(req, cand.name) and cand.routable():
            return cand
    if req.auto is not None:
        rest = [m for m in st.router.models if m.name not in used and _allowed(req, m.name)]
        return selection.choose(rest, *req.auto)
    return None


class Forward:
    __slots__ = ("gw", "st", "req", "obj", "body", "out", "slot", "headers")

    def __init__(self, gw, st, req, obj: dict, body: bytes, out, slot, headers) -> None:
        self.gw, self.st, self.req, self.obj, self.body, self.out, self.slot = gw, st, req, obj, body, out, slot
        self.headers = headers

    def _affinity(self, model) -> int | None:
        """The request's affinity key for ``model`` (None unless it routes by prefix affinity)."""
        if model.prefix_chars is None:
            return None
        return routing.affinity_key(self.obj, self.headers, model.prefix_chars)

    def _head(self, r) -> bytes:
        req = self.req
        rid = req.upstream_rid = b"%s-%d" % (self.gw.new_rid(), req.attempts)
        start = _STARTS.get((req.path, r.url))
        if start is None:
            start = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: " % (
                r.path(req.path).encode(),
                r.authority.encode(),
            )
            if len(_STARTS) < 4096:  # paths x replica URLs: small, but reloads may add URLs
                _STARTS[(req.path, r.url)] = start
        return b"%s%d\r\nX-Request-Id: %s\r\n%s\r\n" % (start, len(self.body), rid, r.auth)

    def _switch(self, model) -> None:
        self.obj["model"] = model.name
        self.body = reencoded(self.body, model.name, False)
        self.req.model = self.req.served_by = model.name

    async def run(self, model, stream: bool) -> int | Denied:
        gw, st, req = self.gw, self.st, self.req
        loop = asyncio.get_running_loop()
        policy = st.retry
        primary, used, tried = model, {model.name}, []
        start = loop.time()
        cap = start + model.stream_max_s if stream and model.stream_max_s else None
        key = self._affinity(model)
        while True:
            # streams: the answer head and first byte within first_byte_s (then relay.py takes over)
            deadline = start + (model.first_byte_s if stream else model.timeout_s)
            if cap is not None:
                deadline = min(deadline, cap)
            r = model.pick(tried, key)
            if r is None:
                nxt = next_model(st, req, primary, used)
                if nxt is None:
                    if primary.all_draining():  # the operator's doing (admin API), not a failure
                        req.error = req.error or "all replicas draining"
                        msg = f"all replicas of {primary.name} are draining"
                        return Denied(503, msg, "model_draining", "draining", _RETRY_5)
                    req.error = req.error or "no healthy replica"
                    return Denied(503, f"no healthy replica for {model.name}", "no_replica", "no_replica", _RETRY_5)
                if nxt.name in primary.fallbacks:
                    inc(gw.metrics.fallbacks, (primary.name, nxt.name))
                used.add(nxt.name)
                refused = await self.slot.take(nxt.name, req)
                if refused is not None:
                    return refused
                model, tried = nxt, []
                self._switch(model)
                key = self._affinity(model)
                continue
            req.replica = r.label
            req.attempts += 1
            head = self._head(r)
            r.outstanding += 1
            t_up = time.perf_counter()
            err = None
            try:
                resp = await gw.pool.request(r.key, head, self.body, deadline, req)
            except UpstreamError as e:
                err = e
            except BaseException:
                r.outstanding -= 1
                r.breaker.release()
                raise
            if err is not None:
                if req.client_gone:
                    r.outstanding -= 1
                    r.breaker.release()  # the client left: says nothing about the replica
                    req.error = "client disconnected"
                    return 499
                r.breaker.failure(hard=isinstance(err, Refused))
                if isinstance(err, UpstreamTimeout):
                    r.outstanding -= 1
                    req.error = str(err)
                    req.upstream_s = time.perf_counter() - t_up
                    what = "sent no first byte" if stream else "timed out"
                    return Denied(504, f"upstream {model.name} {what}", "upstream_timeout", "")
            elif resp.status in KEY_REFUSED:
                resp.close()
                r.breaker.failure()
                err = UpstreamError(f"refused the gateway's upstream key ({resp.status})")
            elif policy.retry_status(resp.status, req.attempts, model.attempts):
                resp.close()
                r.breaker.failure()
                err = UpstreamError(f"upstream answered {resp.status}")
            if err is None:
                break
            r.outstanding -= 1
            tried.append(r)
            req.error = str(err)
            if not policy.may_send(req.attempts, model.attempts) or loop.time() >= deadline:
                req.upstream_s = time.perf_counter() - t_up
                return Denied(502, f"upstream {model.name} unavailable: {err}", "upstream_error", "")
            inc(gw.metrics.retries, (primary.name,))
            if model.pick_preview(tried) is None:
                # every replica tried once: back off and allow them again, unless none is
                # available and not draining (then go on at once: a fallback, or a fast 503)
                if not model.routable():
                    continue
                delay = policy.backoff(req.attempts)
                if loop.time() + delay >= deadline:
                    return Denied(504, f"upstream {model.name} deadline exceeded", "upstream_timeout", "")
                await asyncio.sleep(delay)
                tried = []
        req.error = None
        try:
            return await Relay(gw, req, model, r, resp, self.out, t_up, cap).run()
        finally:
            r.outstanding -= 1
