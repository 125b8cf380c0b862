"""Replica health: passive circuit breaker + active readiness checks (no web framework imports)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backends import Model, Replica, Router

log = logging.getLogger("citadel_gateway.health")

CLOSED, HALF_OPEN, OPEN = 0, 1, 2  # the values of llm_circuit_state
CIRCUIT_NAMES = ("closed", "half-open", "open")  # how the registry and the admin API name them


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; after ``cooldown`` lets ONE probe through
    (half-open); that probe's success closes it, its failure re-opens it."""

    __slots__ = ("failures", "cooldown", "count", "state", "opened_at", "probing", "clock")

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.count = 0
        self.state = CLOSED
        self.opened_at = 0.0
        self.probing = False
        self.clock = clock

    def available(self) -> bool:
        """Could a request go here now (without reserving the half-open probe)?"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return self.clock() - self.opened_at >= self.cooldown
        return not self.probing

    def acquire(self) -> bool:
        """Reserve the right to send a request; in half-open only one caller wins."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock() - self.opened_at < self.cooldown:
                return False
            self.state = HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.count = 0
        self.probing = False
        self.state = CLOSED

    def failure(self, hard: bool = False) -> None:
        """``hard``: the replica is certainly gone (connection refused): open at once."""
        self.count += 1
        self.probing = False
        if self.state == HALF_OPEN or hard or self.count >= self.failures:
            self.opened_at = self.clock()
            self.state = OPEN

    def release(self) -> None:
        """A reserved request ended without a verdict (client went away)."""
        self.probing = False


Fetch = Callable[["Replica", str, str, bytes | None, float], Awaitable[tuple[int, bytes]]]


async def probe(
    replica: Replica, model_name: str, capabilities: tuple[str, ...], fetch: Fetch, timeout: float, kind: str = "full"
) -> str | None:
    """Readiness of one replica for one model: None when ready, else the reason.

    ``full`` (vLLM): /health (process alive) → /v1/models lists the model → a real 1-token
    request. ``request``: the same without /health. ``models``: the listing only.
    """
    try:
        if kind == "full":
            status, _ = await fetch(replica, "GET", "/health", None, timeout)
            if status != 200:
                return f"/health returned {status}"
        status, body = await fetch(replica, "GET", "/v1/models", None, timeout)
        if status != 200:
            return f"/v1/models returned {status}"
        ids = {m.get("id") for m in json.loads(body).get("data", []) if isinstance(m, dict)}
        if model_name not in ids:
            return f"/v1/models does not list {model_name}"
        if kind == "models":
            return None
        if "embedding" in capabilities and "chat" not in capabilities and "completion" not in capabilities:
            path, req = "/v1/embeddings", {"model": model_name, "input": "ping"}
        elif "chat" in capabilities:
            path = "/v1/chat/completions"
            req = {"model": model_name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        else:
            path, req = "/v1/completions", {"model": model_name, "prompt": "ping", "max_tokens": 1}
        status, _ = await fetch(replica, "POST", path, json.dumps(req).encode(), timeout)
        if status != 200:
            return f"{path} returned {status}"
    except TimeoutError:
        return "timed out"
    except (OSError, ValueError, Exception) as e:  # noqa: BLE001 - any failure means not ready
        return f"{type(e).__name__}: {e}"
    return None


SLOW_PROBES_TO_EJECT = 3


def _is_timeout(reason: str) -> bool:
    return reason == "timed out" or reason.startswith("UpstreamTimeout")


class Periodic:
    """A round (``run_round``) every ``interval`` seconds in a task of its own, from start() to
    stop(); a failing round is logged and the next one comes all the same."""

    interval: float
    what = "periodic round"
    _task: asyncio.Task | None = None

    async def run_round(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug in one round must not kill the loop
                log.exception("%s failed", self.what)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class HealthChecker(Periodic):
    """Runs ``probe`` for every replica every ``interval`` seconds."""

    what = "health check round"

    def __init__(self, router: Router, fetch: Fetch, interval: float, timeout: float) -> None:
        self.router = router
        self.fetch = fetch
        self.interval = interval
        self.timeout = timeout
        self._slow: dict[Replica, int] = {}  # consecutive timed-out probes per replica
        self.rounds = 0  # completed check rounds; /ready waits for the first one

    async def check_once(self) -> None:
        jobs = []
        for model in self.router.models:
            for r in model.replicas:
                jobs.append(self._check(model, r))
        await asyncio.gather(*jobs)
        self.rounds += 1

    async def _check(self, model: Model, r: Replica) -> None:
        reason = await probe(r, model.name, model.capabilities, self.fetch, self.timeout, model.probe)
        if reason is None:
            self._slow.pop(r, None)
            r.set_health(True, None)
            return
        # A probe that only timed out is what a busy replica looks like (a CPU server
        # working through a batch): eject it after SLOW_PROBES_TO_EJECT such rounds in a
        # row, not one. Any other failure (refused, 5xx, model not listed) ejects at once.
        if _is_timeout(reason):
            self._slow[r] = self._slow.get(r, 0) + 1
            if self._slow[r] < SLOW_PROBES_TO_EJECT:
                return
        r.set_health(False, reason)

    async def run_round(self) -> None:
        await self.check_once()
