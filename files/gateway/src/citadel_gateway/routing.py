"""Replica choice for one model's request (no web framework imports): the model's ``routing.policy``.

``least_outstanding`` (the default): the available replica with the fewest requests in flight,
random tie-break (with 2-3 replicas as good as power-of-two choices, and cheaper).
``prefix_affinity``: requests whose prompts start alike go to the same replica, so vLLM's prefix
cache holds their common start once and hits: a 64-bit affinity key (the ``X-Session-Id``
header, else the body's ``user``, else the first ``prefix_chars`` characters of the prompt up to
its first user turn) ranks the replicas by rendezvous hashing; the first in that order takes the
request unless it would then hold more than ``load_factor`` x the mean of requests in flight
(consistent hashing with bounded loads), else the next one that would not. The key and the ranking depend on nothing
but the request and the replica URLs, so every gateway sends a prompt to the same replica, and a
replica that leaves moves only its own keys. A draining, unhealthy or open-circuit replica is never
chosen by either policy.
"""

from __future__ import annotations

import hashlib
import math
import random

# How a replica was chosen: the label `how` of llm_replica_picks_total (Replica.picks' indexes).
HOW = ("least_outstanding", "affinity", "overflow")
LEAST, AFFINITY, OVERFLOW = range(3)
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


def bounded_affinity(replicas, exclude, key: int, load_factor: float):
    """The first replica in ``key``'s rendezvous order whose requests in flight, with this one,
    stay within ``load_factor`` x the mean (ceiling): the least loaded always does, so there is
    an answer whenever a replica is choosable."""
    cands = [r for r in replicas if _choosable(r, exclude)]
    if not cands:
        return None, AFFINITY
    cap = math.ceil(load_factor * (sum(r.outstanding for r in cands) + 1) / len(cands))
    if len(cands) > 1:
        cands.sort(key=lambda r: _mix(key ^ r.salt), reverse=True)
    for i, r in enumerate(cands):
        if r.outstanding + 1 <= cap:
            return r, AFFINITY if i == 0 else OVERFLOW
    return min(cands, key=lambda r: r.outstanding), OVERFLOW  # unreachable (see above): a guard
