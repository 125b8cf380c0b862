"""Replica choice for one model's request (no web framework imports): the model's ``routing.policy``.

``least_outstanding`` (the default): the available replica with the fewest requests in flight,
random tie-break (with 2-3 replicas as good as power-of-two choices, and cheaper).

``prefix_affinity``: requests whose prompts start alike go to the same replica, so vLLM's prefix
cache holds their common start once and hits. A request's 64-bit affinity key is its
``X-Session-Id`` header, else the body's ``user``, else the first ``prefix_chars`` characters of
the prompt up to its first user turn (so every turn of a conversation has its key). A key seen
for the first time is *placed* on the least loaded replica, ties broken by the key's rendezvous
order over the replica URLs (idle gateways agree); the model remembers where (the ``MEMORY``
keys used last), and later requests of the key go there while that replica, with the request,
holds at most ``load_factor`` x the mean in flight (rounded up: consistent hashing with bounded
loads), else to the least loaded (``overflow``). A key is placed by load, not by hash alone, because
its first request has no cache to win anywhere: prompts that share nothing are spread exactly as
``least_outstanding`` spreads them.

``load_aware``: least outstanding, where a replica's load also counts the requests other clients
have there, as vLLM reports them (load.py polls ``/metrics``), with its KV cache use breaking ties.

A draining, unhealthy or open-circuit replica is never chosen.
"""

from __future__ import annotations

import hashlib
import math
import random
import time

from .load import STALE_S

# How a replica was chosen: the label `how` of llm_replica_picks_total (Replica.picks' indexes).
HOW = ("least_outstanding", "placed", "affinity", "overflow", "load_aware")
LEAST, PLACED, AFFINITY, OVERFLOW, LOAD = range(5)
MEMORY = 65536  # keys remembered per model (their replica): ~7 MB
SESSION_HEADER = b"x-session-id"
_M64 = (1 << 64) - 1


def stable_hash(data: bytes) -> int:
    """64 bits of ``data``, the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _mix(x: int) -> int:
    """splitmix64's finaliser: a key XOR a replica's salt, scrambled into a rendezvous score."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _text(value, room: int) -> str:
    """The text of a message's ``content`` or a prompt (a string, text parts, or token ids)."""
    if isinstance(value, str):
        return value[:room]
    if isinstance(value, list):
        out, n = [], 0
        for part in value:
            if n >= room:
                break
            if isinstance(part, dict):
                s = part.get("text") if isinstance(part.get("text"), str) else ""
            elif isinstance(part, (str, int)):
                s = f"{part} " if isinstance(part, int) else part
            else:
                s = ""
            out.append(s)
            n += len(s)
        return "".join(out)[:room]
    return ""


def prompt_start(obj: dict, chars: int) -> str:
    """The first ``chars`` characters of what every turn of a conversation starts with: chat
    messages up to the first user turn (the system prompt, then that turn), with their roles; or
    the prompt / input of the other endpoints. Later turns are left out so that a conversation
    keeps its key, and so its replica, as it grows."""
    messages = obj.get("messages")
    if isinstance(messages, list):
        out, n = [], 0
        for m in messages:
            if n >= chars or not isinstance(m, dict):
                break
            s = f"{m.get('role')}\x1f{_text(m.get('content'), chars - n)}\x1e"
            out.append(s)
            n += len(s)
            if m.get("role") == "user":
                break
        return "".join(out)[:chars]
    for field in ("prompt", "input"):
        if field in obj:
            value = obj[field]
            # a batch: its first prompt (a list of strings, or of token-id lists)
            if isinstance(value, list) and value and isinstance(value[0], (str, list)):
                value = value[0]
            return _text(value, chars)
    return ""


def affinity_key(obj: dict, headers, chars: int) -> int:
    """The request's affinity key: its session header, else ``user``, else its prompt's start."""
    for k, v in headers:
        if k == SESSION_HEADER and v:
            return stable_hash(b"s\x00" + v)
    user = obj.get("user")
    if isinstance(user, str) and user:
        return stable_hash(b"u\x00" + user.encode("utf-8", "surrogatepass"))
    return stable_hash(b"p\x00" + prompt_start(obj, chars).encode("utf-8", "surrogatepass"))


def salt(url: str) -> int:
    """A replica's rendezvous salt: from its URL, so every gateway ranks replicas alike."""
    return stable_hash(url.encode())


def _choosable(r, exclude) -> bool:
    return not r.draining and r not in exclude and r.healthy and r.breaker.available()


def least_outstanding(replicas, exclude):
    best = None
    ties = 0
    for r in replicas:
        if r.draining or r in exclude or not r.healthy or not r.breaker.available():
            continue
        if best is None or r.outstanding < best.outstanding:
            best, ties = r, 1
        elif r.outstanding == best.outstanding:
            ties += 1
            if random.random() * ties < 1.0:
                best = r
    return best, LEAST


def bounded_affinity(replicas, exclude, key: int, load_factor: float, memory: dict):
    """The replica ``memory`` holds for ``key`` while it stays within ``load_factor`` x the mean
    in flight (with this request, rounded up), else the least loaded, ties broken by the key's
    rendezvous order. A key seen for the first time is remembered where it goes."""
    cands = [r for r in replicas if _choosable(r, exclude)]
    if not cands:
        return None, PLACED
    known = memory.get(key)
    if known is not None:
        cap = math.ceil(load_factor * (sum(r.outstanding for r in cands) + 1) / len(cands))
        if known in cands and known.outstanding + 1 <= cap:
            memory[key] = memory.pop(key)  # recently used: evicted last
            return known, AFFINITY
    fewest = min(r.outstanding for r in cands)
    best = max((r for r in cands if r.outstanding == fewest), key=lambda r: _mix(key ^ r.salt))
    if known is not None:
        return best, OVERFLOW  # the key stays with its replica: the cache is there
    if len(memory) >= MEMORY:
        del memory[next(iter(memory))]  # the least recently used
    memory[key] = best
    return best, PLACED


def load_aware(replicas, exclude):
    """The least loaded replica: this gateway's requests in flight there now, plus the others'
    (vLLM's running + waiting at the last poll, less this gateway's share of them then) and the
    KV cache use (0..1: a tie-break); random among equals. Without a fresh reading, its own count."""
    now = time.monotonic()
    best = None
    best_score = 0.0
    ties = 0
    for r in replicas:
        if r.draining or r in exclude or not r.healthy or not r.breaker.available():
            continue
        score = float(r.outstanding)
        load = r.load
        if load is not None and now - load[3] <= STALE_S:
            score += max(0.0, load[0] - load[1]) + load[2]
        if best is None or score < best_score:
            best, best_score, ties = r, score, 1
        elif score == best_score:
            ties += 1
            if random.random() * ties < 1.0:
                best = r
    return best, LOAD
