"""Per-key token budgets per UTC day and month (``auth.keys[].daily_tokens`` / ``monthly_tokens``).

A request of a key with a budget is admitted while the key has spent less than its budget in
the current day and month; what it spends (prompt + completion tokens, as the upstream reported
them) is charged when it ends. So a request in flight may overshoot the budget once; the next is
refused with 429 ``insufficient_quota`` until the period renews (00:00 UTC, the 1st of the month).

The counts live where the rate limits do: in memory with one gateway, in Redis with several, so
a budget spent through one gateway is spent on all. Redis keys: ``citadel:budget:<key>:<YYYYMMDD>``
and ``...:<YYYYMM>``, expiring after their period. A charge that Redis does not take (down, slow)
is logged and counted in ``llm_rate_limiter_errors_total``; the tokens are not charged.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime
import logging
import time
from typing import NamedTuple

from .errors import Denied

log = logging.getLogger("citadel_gateway")
_DAY = 86400


class Period(NamedTuple):
    day: str  # YYYYMMDD (UTC)
    month: str  # YYYYMM
    day_ends: float  # epoch seconds
    month_ends: float


_period: list = [None, None]  # [day number, Period]: computed once per UTC day


def period(now: float | None = None) -> Period:
    now = time.time() if now is None else now
    n = int(now // _DAY)
    if _period[0] == n:
        return _period[1]
    d = datetime.datetime.fromtimestamp(n * _DAY, datetime.UTC)
    days = calendar.monthrange(d.year, d.month)[1]
    month_start = n - (d.day - 1)
    p = Period(f"{d:%Y%m%d}", f"{d:%Y%m}", (n + 1) * _DAY, (month_start + days) * _DAY)
    _period[:] = [n, p]
    return p


def budgeted(key) -> bool:
    return bool(key.daily_tokens or key.monthly_tokens)


def verdict(key, today: int, month: int, p: Period, now: float | None = None) -> Denied | None:
    """The refusal of a key that has spent its budget, else None."""
    now = time.time() if now is None else now
    for limit, used, what, ends, renews in (
        (key.daily_tokens, today, "daily", p.day_ends, "at 00:00 UTC"),
        (key.monthly_tokens, month, "monthly", p.month_ends, "on the 1st of the month, 00:00 UTC"),
    ):
        if limit and used >= limit:
            return Denied(
                429,
                f"key {key.name!r} has used its {what} token budget ({used} of {limit} tokens); it renews {renews}",
                "insufficient_quota",
                "budget_exhausted",
                ((b"retry-after", str(max(1, int(ends - now))).encode()),),
            )
    return None


class MemoryLedger:
    """One gateway's counts: name -> [day, tokens that day, month, tokens that month]."""

    def __init__(self) -> None:
        self._c: dict[str, list] = {}

    def spent_now(self, name: str, p: Period) -> tuple[int, int]:
        c = self._c.get(name)
        if c is None:
            return 0, 0
        return (c[1] if c[0] == p.day else 0), (c[3] if c[2] == p.month else 0)

    async def spent(self, name: str, p: Period) -> tuple[int, int]:
        return self.spent_now(name, p)

    def charge(self, name: str, tokens: int) -> None:
        p = period()
        today, month = self.spent_now(name, p)
        self._c[name] = [p.day, today + tokens, p.month, month + tokens]

    async def reset(self, name: str) -> None:
        self._c.pop(name, None)

    async def drain(self) -> None:
        pass


class RedisLedger:
    """The counts of every gateway, in the rate limiter's Redis (its client, its bounds)."""

    def __init__(self, limiter, on_error) -> None:
        self.r = limiter.r
        self.bound = limiter.bound
        self.prefix = "citadel:budget:"
        self.on_error = on_error  # called when a charge fails (the limiter-errors counter)
        self._tasks: set[asyncio.Task] = set()

    def _keys(self, name: str, p: Period) -> tuple[str, str]:
        return f"{self.prefix}{name}:{p.day}", f"{self.prefix}{name}:{p.month}"

    async def spent(self, name: str, p: Period) -> tuple[int, int]:
        async with asyncio.timeout(self.bound):
            today, month = await self.r.mget(self._keys(name, p))
        return int(today or 0), int(month or 0)

    def charge(self, name: str, tokens: int) -> None:
        """Off the request path: the request has ended; its tokens are added in the background."""
        t = asyncio.get_running_loop().create_task(self._charge(name, tokens, period()))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _charge(self, name: str, tokens: int, p: Period) -> None:
        day, month = self._keys(name, p)
        try:
            async with asyncio.timeout(self.bound):
                pipe = self.r.pipeline(transaction=False)
                pipe.incrby(day, tokens).expireat(day, int(p.day_ends) + _DAY)
                pipe.incrby(month, tokens).expireat(month, int(p.month_ends) + _DAY)
                await pipe.execute()
        except Exception as e:  # noqa: BLE001 - Redis down or slow: the charge is lost, said so
            self.on_error()
            log.error("budget: %d tokens of key %r not charged, Redis failed: %s", tokens, name, e)

    async def reset(self, name: str) -> None:
        async with asyncio.timeout(self.bound):
            await self.r.delete(*self._keys(name, period()))

    async def drain(self) -> None:
        """At stop: the charges still on their way."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def make_ledger(limiter, on_error):
    from .limits import MemoryLimiter

    return MemoryLedger() if isinstance(limiter, MemoryLimiter) else RedisLedger(limiter, on_error)
