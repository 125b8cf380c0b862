"""Replica load as vLLM itself reports it, for the ``load_aware`` policy (no web framework imports).

Every ``POLL_S`` seconds the poller reads ``/metrics`` of each replica of a ``load_aware`` model:
``vllm:num_requests_running`` + ``vllm:num_requests_waiting`` (every client's requests there: other
gateways', direct callers') and ``vllm:kv_cache_usage_perc``. A replica keeps what this gateway had
in flight there at that moment, so routing.load_aware can count the others' load apart from its
own, which it knows up to the request. A reading older than ``STALE_S`` (polls that fail, a slow
round on a busy host) is not used, and an answer without the gauges clears it: the replica is then
judged by this gateway's own count alone, as least_outstanding would (never by a stale figure).
"""

from __future__ import annotations

import asyncio
import logging
import time

from .health import Periodic

log = logging.getLogger("citadel_gateway.load")

POLL_S = 1.0
STALE_S = 3 * POLL_S  # a reading older than this is not used
_GAUGES = (b"vllm:num_requests_running", b"vllm:num_requests_waiting", b"vllm:kv_cache_usage_perc")


def parse(text: bytes) -> tuple[float, float] | None:
    """(requests running + waiting, KV cache use 0..1) from a vLLM /metrics body, summed over its
    label sets (engines); None when a gauge is missing (not a vLLM server)."""
    found = [0.0, 0.0, 0.0]
    seen = [False, False, False]
    for line in text.splitlines():
        for i, name in enumerate(_GAUGES):
            if line.startswith(name) and line[len(name) : len(name) + 1] in (b"{", b" "):
                try:
                    found[i] += float(line.rsplit(b" ", 1)[1])
                except ValueError:
                    return None
                seen[i] = True
    if not all(seen):
        return None
    return found[0] + found[1], found[2]


class LoadPoller(Periodic):
    """Polls the replicas of the router's ``load_aware`` models (the router may be swapped on reload)."""

    what = "load poll round"
    interval = POLL_S

    def __init__(self, router, fetch, timeout: float) -> None:
        self.router = router
        self.fetch = fetch
        self.timeout = timeout

    async def poll_once(self) -> None:
        jobs = [self._poll(r) for m in self.router.models if m.policy == "load_aware" for r in m.replicas]
        if jobs:
            await asyncio.gather(*jobs)

    async def _poll(self, r) -> None:
        own = r.outstanding  # what this gateway had there when vLLM counted
        try:
            status, body = await self.fetch(r, "GET", "/metrics", None, self.timeout)
        except Exception as e:  # noqa: BLE001 - no new reading: the last one ages out (STALE_S)
            log.debug("load poll of %s failed: %s", r.label, e)
            return
        reading = parse(body) if status == 200 else None
        if reading is None:  # it answers, but not as vLLM does: no reading at all
            r.load = None
            return
        r.load = (reading[0], own, reading[1], time.monotonic())

    async def run_round(self) -> None:
        await self.poll_once()
