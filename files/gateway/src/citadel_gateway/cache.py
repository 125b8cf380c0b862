"""The response cache: deterministic answers kept for ``cache.ttl_s`` and replayed byte for byte.

Off unless a model (``models[].cache``) or a key (``auth.keys[].cache``) turns it on. Only chat
and completion requests asking for greedy decoding (``temperature: 0``), one choice (``n`` 1)
and no stream options but ``include_usage`` are looked up; the key is the served model, the
request body in canonical form (keys sorted, ``model`` the served name) and the key's scope (its
allowed models), so two keys that may use different models never share an entry. A stream is
kept as the chunks the client got and replayed as the same chunks. Only complete 200 answers
are kept (never an error, a cut stream or one over ``cache.max_entry_bytes``). The client's
``Cache-Control: no-cache`` skips the lookup (the fresh answer is kept), ``no-store`` skips both.

Stores: memory (one gateway, LRU bounded by ``cache.max_entries``) or the rate limiter's Redis
(shared by every gateway), with the limiter's bounded waits: a Redis that does not answer in time
is a miss (counted ``error``), never a failed request.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import struct
import time

import orjson

HIT, MISS, BYPASS, ERROR = "hit", "miss", "bypass", "error"
_PREFIX = "citadel:cache:"
_ENDPOINTS = ("chat", "completions")


def eligible(obj: dict, endpoint: str) -> bool:
    """Is the answer to this request a function of the request (greedy, one choice)?"""
    if endpoint not in _ENDPOINTS:
        return False
    t = obj.get("temperature")
    if type(t) not in (int, float) or t != 0:
        return False
    if obj.get("n", 1) != 1:
        return False
    so = obj.get("stream_options")
    return so is None or (isinstance(so, dict) and set(so) <= {"include_usage"})


def directive(headers) -> bytes:
    """The client's Cache-Control: b"no-store", b"no-cache" or b""."""
    for k, v in headers:
        if k == b"cache-control":
            v = v.lower()
            if b"no-store" in v:
                return b"no-store"
            if b"no-cache" in v:
                return b"no-cache"
    return b""


def entry_key(model: str, scope: str, obj: dict) -> str:
    canonical = orjson.dumps({**obj, "model": model}, option=orjson.OPT_SORT_KEYS)
    return _PREFIX + hashlib.sha256(scope.encode() + b"\0" + canonical).hexdigest()


class MemoryStore:
    def __init__(self, max_entries: int, clock=time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._d: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    async def get(self, key: str) -> bytes | None:
        found = self._d.get(key)
        if found is None:
            return None
        if found[0] <= self.clock():
            del self._d[key]
            return None
        self._d.move_to_end(key)
        return found[1]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._d[key] = (self.clock() + ttl, value)
        self._d.move_to_end(key)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)


class RedisStore:
    """Entries in the rate limiter's Redis (its client, so its password and bounded waits)."""

    def __init__(self, client, timeout: float) -> None:
        self.client = client
        self.timeout = timeout

    async def get(self, key: str) -> bytes | None:
        async with asyncio.timeout(self.timeout):
            return await self.client.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        async with asyncio.timeout(self.timeout):
            await self.client.set(key, value, px=max(1, int(ttl * 1000)))


def make_store(limiter, cfg):
    """The store beside the rate limiter's: its Redis, or this process's memory."""
    from .limits import MemoryLimiter

    if isinstance(limiter, MemoryLimiter):
        return MemoryStore(cfg.max_entries)
    return RedisStore(limiter.r, limiter.bound)


class Recorder:
    """Passes an answer on to ``out`` and keeps a copy while it stays within ``limit`` bytes."""

    __slots__ = ("out", "limit", "size", "status", "ctype", "body", "chunks", "ended")

    def __init__(self, out, limit: int) -> None:
        self.out, self.limit = out, limit
        self.size = 0
        self.status = 0
        self.ctype = b""
        self.body: bytes | None = None
        self.chunks: list[bytes] | None = None
        self.ended = False

    def __getattr__(self, name):  # read_body, hook_disconnect, watch_disconnect: the responder's
        return getattr(self.out, name)

    @staticmethod
    def _ctype(headers) -> bytes:
        return next((v for k, v in headers if k.lower() == b"content-type"), b"application/json")

    async def whole(self, status: int, headers: list, body: bytes) -> None:
        self.status, self.ctype, self.body = status, self._ctype(headers), body
        self.ended = True
        await self.out.whole(status, headers, body)

    async def start(self, status: int, headers: list) -> None:
        self.status, self.ctype, self.chunks = status, self._ctype(headers), []
        await self.out.start(status, headers)

    async def chunk(self, data: bytes) -> None:
        if self.chunks is not None and data:
            self.size += len(data)
            if self.size > self.limit:
                self.chunks = None  # too large to keep: passed on, not kept
            else:
                self.chunks.append(data)
        await self.out.chunk(data)

    async def end(self) -> None:
        self.ended = True
        await self.out.end()

    async def abort(self) -> None:
        self.chunks = None
        await self.out.abort()

    def entry(self) -> bytes | None:
        """What to keep: a complete 200 answer within the limit, else None. Framed as bytes
        (the content type, then the body or each chunk, each with its length): replayed exact."""
        if self.status != 200 or not self.ended:
            return None
        parts = [self.body] if self.body is not None else self.chunks
        if parts is None or sum(map(len, parts)) > self.limit:
            return None
        kind = b"W" if self.body is not None else b"S"
        return b"".join([kind, _frame(self.ctype), *map(_frame, parts)])


def _frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _frames(raw: bytes, at: int):
    while at < len(raw):
        (n,) = struct.unpack_from(">I", raw, at)
        yield raw[at + 4 : at + 4 + n]
        at += 4 + n


async def replay(raw: bytes, out, headers: list) -> None:
    """Answer from a kept entry: the same body, or the same chunks."""
    frames = _frames(raw, 1)
    headers = [*headers, (b"content-type", next(frames))]
    if raw[:1] == b"W":
        await out.whole(200, headers, next(frames))
        return
    await out.start(200, headers)
    for c in frames:
        await out.chunk(c)
    await out.end()


class Keep:
    """A request that missed: its answer is recorded on the way out and kept if it is whole."""

    __slots__ = ("store", "key", "ttl", "recorder")

    def __init__(self, store, key: str, ttl: float, recorder: Recorder) -> None:
        self.store, self.key, self.ttl, self.recorder = store, key, ttl, recorder

    async def done(self, metrics, model: str, cut: bool) -> None:
        entry = None if cut else self.recorder.entry()
        if entry is None:
            return
        try:
            await self.store.set(self.key, entry, self.ttl)
        except Exception:  # noqa: BLE001 - a store that fails loses an entry, never the answer (sent)
            metrics.cache[(model, ERROR)] = metrics.cache.get((model, ERROR), 0) + 1


async def lookup(rt, obj: dict, model: str, req, headers, out) -> tuple[int | None, Keep | None]:
    """(200, None) when answered from the cache; else (None, a Keep to record the answer with,
    or None when this request is not to be kept). ``rt``: the Runtime (store, metrics, config)."""
    if not eligible(obj, req.endpoint):
        return None, None
    counts = rt.metrics.cache
    how = directive(headers)
    if how == b"no-store":
        counts[(model, BYPASS)] = counts.get((model, BYPASS), 0) + 1
        return None, None
    allowed = req.allowed
    key = entry_key(model, "*" if allowed is None else "\0".join(sorted(allowed)), obj)
    cfg, store = rt.state.cfg.cache, rt.cache
    if how == b"no-cache":
        result, raw = BYPASS, None
    else:
        try:
            raw = await store.get(key)
            result = MISS if raw is None else HIT
        except Exception:  # noqa: BLE001 - a store that fails or times out is a miss, not a failed request
            result, raw = ERROR, None
    counts[(model, result)] = counts.get((model, result), 0) + 1
    if raw is not None:
        req.replica = "cache"
        req.started = True
        h = [(b"x-request-id", req.rid), (b"x-citadel-model", model.encode()), (b"x-citadel-cache", b"hit")]
        await replay(raw, out, h)
        return 200, None
    return None, Keep(store, key, cfg.ttl_s, Recorder(out, cfg.max_entry_bytes))
