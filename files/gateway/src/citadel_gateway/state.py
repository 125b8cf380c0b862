"""State: everything derived from one config, swapped whole on reload (runtime.py).

A request keeps the State it started with, so a reload never disturbs it; the model queues
carry over so in-flight and queued requests keep counting against the same limits.
"""

from __future__ import annotations

from . import config as C
from .auth import KeyRing
from .backends import Router
from .limits import Admission
from .retry import RetryPolicy


class State:
    """Everything derived from one config; replaced whole on reload."""

    def __init__(self, cfg: C.Config, previous: State | None = None) -> None:
        self.cfg = cfg
        self.router = Router(cfg, previous.router if previous else None)
        self.retry = RetryPolicy(cfg.retry)
        self.keys = KeyRing(cfg.auth.keys)
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
        return frozenset(m.name for n in names if (m := self.router.get(n)) is not None)

    def models_for(self, key) -> list:
        """The models a key may use (all without auth)."""
        allowed = self.allowed.get(key.name) if key is not None else None
        return [m for m in self.router.models if allowed is None or m.name in allowed]
