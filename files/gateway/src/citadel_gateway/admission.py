"""Admission of one request to one model: the key's rate limit, then the model's queue.

A request holds one model's slot at a time: a fallback gives the primary's slot back and waits
in its own model's queue (its own limits apply). A client that leaves while queued gives its
place up at once (Request.on_disconnect cancels the wait).
"""

from __future__ import annotations

import asyncio
import logging

from . import budgets
from .errors import Denied
from .limits import MemoryLimiter, QueueFull, QueueTimeout, retry_after

log = logging.getLogger("citadel_gateway")
_RETRY_1 = ((b"retry-after", b"1"),)
GONE = Denied(499, "client disconnected", "client_gone", "client_gone")


def rate_limit_now(limiter: MemoryLimiter, key) -> Denied | None:
    """``rate_limit`` for the in-memory limiter, without a coroutine."""
    wait = limiter.take_now(key.name, key.rpm, key.burst)
    return _limited(wait) if wait > 0 else None


def _limited(wait: float) -> Denied:
    return Denied(
        429, "rate limit exceeded", "rate_limited", "rate_limited", ((b"retry-after", retry_after(wait).encode()),)
    )


async def rate_limit(limiter, on_error: str, metrics_inc, key) -> Denied | None:
    """The key's token bucket (memory or Redis); Redis failures follow rate_limit.on_redis_error."""
    if isinstance(limiter, MemoryLimiter):
        wait = limiter.take_now(key.name, key.rpm, key.burst)
    else:
        try:
            wait = await limiter.take(key.name, key.rpm, key.burst)
        except Exception as e:  # noqa: BLE001 - Redis down or slow: on_redis_error decides
            return _store_failed(on_error, metrics_inc, "rate limiter", e)
    if wait > 0:
        return _limited(wait)
    return None


async def within_budget(ledger, on_error: str, metrics_inc, key) -> Denied | None:
    """The key's daily and monthly token budgets (budgets.py); Redis failures as for the limits."""
    p = budgets.period()
    if type(ledger) is budgets.MemoryLedger:
        today, month = ledger.spent_now(key.name, p)
    else:
        try:
            today, month = await ledger.spent(key.name, p)
        except Exception as e:  # noqa: BLE001 - Redis down or slow: on_redis_error decides
            return _store_failed(on_error, metrics_inc, "budget store", e)
    return budgets.verdict(key, today, month, p)


def _store_failed(on_error: str, metrics_inc, what: str, e: Exception) -> Denied | None:
    metrics_inc()
    if on_error == "reject":
        log.error("%s unavailable, rejecting request: %s", what, e)
        return Denied(503, f"{what} unavailable", "rate_limiter_unavailable", "limiter_unavailable", _RETRY_1)
    log.error("%s unavailable, allowing request: %s", what, e)
    return None


class Slot:
    """The model queue slot a request holds (at most one at a time)."""

    __slots__ = ("queues", "held")

    def __init__(self, queues: dict) -> None:
        self.queues = queues  # model name -> limits.Admission
        self.held = None

    def try_take(self, model: str) -> bool:
        """``take`` when ``model`` has a free slot and nobody waits: True (held), without a coroutine."""
        self.release()
        adm = self.queues[model]
        if adm.try_acquire():
            self.held = adm
            return True
        return False

    async def take(self, model: str, req) -> Denied | None:
        """Give back what is held, then wait for ``model``'s slot (or a refusal)."""
        self.release()
        adm = self.queues[model]
        if not adm.try_acquire():
            req.waiting = asyncio.current_task()
            try:
                await adm.acquire()
            except QueueFull:
                return Denied(429, f"model {model} queue is full", "queue_full", "queue_full", _RETRY_1)
            except QueueTimeout:
                return Denied(
                    503, f"timed out waiting for a slot on {model}", "queue_timeout", "queue_timeout", _RETRY_1
                )
            except asyncio.CancelledError:
                if not req.client_gone:
                    raise
                asyncio.current_task().uncancel()  # our own cancel (the client left), not a shutdown
                return GONE
            finally:
                req.waiting = None
        self.held = adm
        return None

    def release(self) -> None:
        if self.held is not None:
            self.held.release()
            self.held = None
