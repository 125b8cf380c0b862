"""Draining replicas for rolling restarts: the admin API's core (no web framework imports).

A draining replica gets no new requests (``backends.Model.pick`` skips it, retries too); its
in-flight requests and streams finish and its health checks go on, so an undrained replica is
back in the health state it really has. The flag lives on the Replica object, so it carries over
a reload (``backends.Router``: a replica keeps its flag; one new to a model is draining if its URL
was; one removed from the config drops out).

A selector names replicas by ``host`` (the replica URL's host) or ``url`` (its host and port),
optionally narrowed to one ``model`` (name or alias), or by ``model`` alone.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from .health import CIRCUIT_NAMES

log = logging.getLogger("citadel_gateway.admin")

KEYS = ("host", "url", "model")


class BadSelector(ValueError):
    """The selector is malformed (400)."""


class NoMatch(LookupError):
    """The selector names no replica (404)."""


class Selector:
    __slots__ = ("host", "addr", "model", "text")

    def __init__(self, d, require: bool) -> None:
        """``d``: the JSON body or the query parameters; ``require``: at least one key (a drain
        of everything by an empty body is refused)."""
        if not isinstance(d, dict):
            raise BadSelector("the body must be a JSON object: {host|url, model}")
        for k, v in d.items():
            if k not in KEYS:
                raise BadSelector(f"unknown key {k!r} (allowed: host, url, model)")
            if not isinstance(v, str) or not v.strip():
                raise BadSelector(f"{k!r} must be a non-empty string, got {v!r}")
        if "host" in d and "url" in d:
            raise BadSelector("give 'host' or 'url', not both")
        if require and not d:
            raise BadSelector("give 'host', 'url' or 'model'")
        self.host = d["host"].strip().lower() if "host" in d else None
        self.addr = _addr(d["url"].strip()) if "url" in d else None
        self.model = d["model"].strip() if "model" in d else None
        self.text = ", ".join(f"{k} {d[k].strip()!r}" for k in KEYS if k in d)

    def __bool__(self) -> bool:
        return bool(self.text)

    def select(self, router) -> list:
        """The replicas it names (in config order); NoMatch when none (and it names something)."""
        if self.model is not None:
            m = router.get(self.model)
            if m is None:
                raise NoMatch(f"model {self.model!r} does not exist")
            models = [m]
        else:
            models = router.models
        out = [r for m in models for r in m.replicas if self._match(r)]
        if not out and self:
            raise NoMatch(f"no replica matches {self.text}")
        return out

    def _match(self, r) -> bool:
        if self.host is not None:
            return r.host == self.host
        if self.addr is not None:
            return (r.host, r.port) == self.addr
        return True


def _addr(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    try:
        port = u.port
    except ValueError:
        port = -1
    if u.scheme != "http" or not u.hostname or port == -1 or u.path not in ("", "/"):
        raise BadSelector(f"'url' must be http://host:port, got {url!r}")
    return u.hostname, port or 80


def set_draining(replicas: list, on: bool, who: str) -> int:
    """Mark (or unmark) them; the number whose state changed (0: it was so already)."""
    changed = 0
    for r in replicas:
        if r.draining != on:
            r.draining = on
            changed += 1
            log.warning("replica %s of %s %s (admin key %s)", r.label, r.model, "draining" if on else "undrained", who)
    return changed


def describe(r) -> dict:
    return {
        "model": r.model,
        "url": r.url,
        "host": r.host,
        "replica": r.label,
        "healthy": r.healthy,
        "reason": r.reason,
        "circuit": CIRCUIT_NAMES[r.breaker.state],
        "outstanding": r.outstanding,
        "draining": r.draining,
    }


def summary(replicas: list) -> dict:
    """The replicas and their in-flight requests in all (what a rolling restart waits to see at 0)."""
    return {"outstanding": sum(r.outstanding for r in replicas), "replicas": [describe(r) for r in replicas]}
