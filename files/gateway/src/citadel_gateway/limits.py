"""Per-key token buckets (memory or Redis) and the per-model admission queue (no web framework imports)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time


class QueueFull(Exception):
    pass


class QueueTimeout(Exception):
    pass


class MemoryLimiter:
    """Token bucket per key: refills ``rpm/60`` tokens per second up to ``burst``."""

    def __init__(self, clock=time.monotonic) -> None:
        self._b: dict[str, list[float]] = {}
        self.clock = clock

    def take_now(self, key: str, rpm: int, burst: int) -> float:
        now = self.clock()
        b = self._b.get(key)
        rate = rpm / 60.0
        if b is None:
            self._b[key] = [burst - 1.0, now]
            return 0.0
        tokens = min(float(burst), b[0] + (now - b[1]) * rate)
        b[1] = now
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            return 0.0
        b[0] = tokens
        return (1.0 - tokens) / rate

    async def close(self) -> None:
        pass


# Atomic in Redis: refill by elapsed time (Redis' own clock, so gateways on hosts with skewed
# clocks agree), take one token or report the wait. Returns the wait in milliseconds (0 = allowed).
_LUA = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
return wait
"""


class LimiterTimeout(TimeoutError):
    """Redis did not answer within the limiter's bound (rate_limit.on_redis_error decides)."""


class RedisLimiter:
    """Token bucket shared by every gateway replica through one Redis (atomic Lua script).

    Bounded: a connect waits at most ``connect_timeout_s``, a reply ``timeout_s``, and a whole
    ``take()`` (reconnect and script load included) at most their sum; past that it raises
    LimiterTimeout, so a blackholed Redis costs each request that long and no more."""

    def __init__(
        self,
        url: str,
        connect_timeout_s: float = 0.25,
        timeout_s: float = 0.25,
        prefix: str = "citadel:rl:",
        password: str | None = None,
    ) -> None:
        """``password``: Redis's requirepass (a password in ``url`` wins), kept out of the URL so
        the config file can be shown and logged."""
        import redis.asyncio as redis  # imported here: only Redis-backed deployments need it
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import TimeoutError as RedisTimeout

        # one immediate retry (a pooled connection Redis closed while idle), no backoff sleeps:
        # redis-py's default retries with backoff would outlast the bound below anyway
        self.r = redis.from_url(
            url,
            password=password,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self.prefix = prefix
        self.bound = connect_timeout_s + timeout_s
        self._timeouts = (TimeoutError, RedisTimeout)
        self.script = self.r.register_script(_LUA)

    async def take(self, key: str, rpm: int, burst: int) -> float:
        """0.0 when allowed, else seconds until a token is available (Retry-After)."""
        try:
            async with asyncio.timeout(self.bound):
                wait_ms = await self.script(keys=[self.prefix + key], args=[rpm / 60.0, burst])
        except self._timeouts as e:
            raise LimiterTimeout(f"redis did not answer within {self.bound:g} s ({str(e) or 'no reply'})") from e
        return int(wait_ms) / 1000.0

    async def close(self) -> None:
        await self.r.aclose()


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class Admission:
    """Bounded admission per model: ``max_inflight`` run, ``max_waiting`` queue (FIFO) for at
    most ``wait_timeout`` seconds; beyond that QueueFull / QueueTimeout instead of waiting forever."""

    __slots__ = ("max_inflight", "max_waiting", "wait_timeout", "inflight", "_waiters")

    def __init__(self, max_inflight: int, max_waiting: int, wait_timeout: float) -> None:
        self.max_inflight = max_inflight
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self.inflight = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def try_acquire(self) -> bool:
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        if len(self._waiters) >= self.max_waiting:
            raise QueueFull
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(self.wait_timeout, _expire, fut)
        try:
            await fut  # on success the releasing request handed its slot over (inflight unchanged)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # got the slot just as we were cancelled: pass it on
            else:
                self._remove(fut)
            raise
        except QueueTimeout:
            self._remove(fut)
            raise
        finally:
            timer.cancel()

    def _remove(self, fut: asyncio.Future) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.inflight -= 1

    @property
    def waiting(self) -> int:
        return len(self._waiters)


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(QueueTimeout())
