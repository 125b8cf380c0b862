"""The retry policy: which failures another attempt may fix, how many sends, how long to back off.

Every send to a replica is an attempt (``retry.attempts``, or the model's ``retry_attempts``,
bounds them, pool reconnects included).
Only failures before anything reached the client are retried: transport errors (refused, reset,
closed before an answer), upstream 500/502/503 (vLLM answers 500 when its engine dies under a
request, 502/503 when busy or starting) and upstream 401/403 (the replica refused the gateway's
key). Inference has no side effects, so a request that may
have reached a replica can be sent to another one.
"""

from __future__ import annotations

import random

from . import config as C

RETRY_STATUSES = frozenset((500, 502, 503))
# The upstream refused the gateway's own key (the client's is never sent): never the client's
# fault, so never relayed as its 401; another replica may still hold the key (a rotation in
# progress), so it is retried like a 5xx and, when none takes it, answered 502.
KEY_REFUSED = frozenset((401, 403))


class RetryPolicy:
    __slots__ = ("attempts", "base", "cap", "rand")

    def __init__(self, cfg: C.Retry, rand=random.random) -> None:
        self.attempts = cfg.attempts
        self.base = cfg.backoff_base_s
        self.cap = cfg.backoff_max_s
        self.rand = rand

    def may_send(self, sent: int, limit: int | None = None) -> bool:
        """May attempt number ``sent + 1`` go out? ``limit``: the model's own bound, if it has one."""
        return sent < (limit or self.attempts)

    def retry_status(self, status: int, sent: int, limit: int | None = None) -> bool:
        """Is an upstream answer with ``status`` worth another attempt (one is left)?"""
        return status in RETRY_STATUSES and sent < (limit or self.attempts)

    def backoff(self, sent: int) -> float:
        """Pause before the next round over a model's replicas: jittered exponential (50–100 %)."""
        return min(self.cap, self.base * (2 ** max(0, sent - 1))) * (0.5 + self.rand() / 2)
