"""Tiny typed field checkers: each returns the value or raises ConfigError naming the key path."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .schema import ConfigError


def _num(path: str, v: Any, *, integer: bool = False, minimum: float | None = 0, exclusive: bool = False) -> Any:
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok:
        raise ConfigError(f"{path}: expected {'an integer' if integer else 'a number'}, got {v!r}")
    if minimum is not None and (v <= minimum if exclusive else v < minimum):
        raise ConfigError(f"{path}: must be {'>' if exclusive else '>='} {minimum}, got {v!r}")
    return v


def _str(path: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{path}: expected a non-empty string, got {v!r}")
    return v


def _bool(path: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{path}: expected true or false, got {v!r}")
    return v


def _list(path: str, v: Any) -> list:
    if not isinstance(v, list):
        raise ConfigError(f"{path}: expected a list, got {type(v).__name__}")
    return v


def _map(path: str, v: Any, allowed: tuple[str, ...]) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(v).__name__}")
    for k in v:
        if k not in allowed:
            where = f"{path}.{k}" if path else str(k)
            raise ConfigError(f"{where}: unknown key (allowed: {', '.join(allowed)})")
    return v


def _url(path: str, v: Any) -> str:
    """A replica's base URL: http(s)://host[:port][/prefix]. The prefix stands in for the
    client's ``/v1`` (``https://api.example.com/openai/v1``: ``/v1/chat/completions`` goes to
    ``/openai/v1/chat/completions``); no query, fragment or credentials (the key has its own file)."""
    s = _str(path, v)
    u = urlsplit(s)
    if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment or "@" in u.netloc:
        raise ConfigError(f"{path}: expected a URL http(s)://host[:port][/path], got {v!r}")
    try:
        u.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise ConfigError(f"{path}: bad port in {v!r}") from e
    return s.rstrip("/")


def _optional_positive(path: str, v: Any) -> float | None:
    return None if v is None else _num(path, v, exclusive=True)
