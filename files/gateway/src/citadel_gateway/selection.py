"""``model: "auto"``: pick a model by task (capability) and priority (no web framework imports).

speed    → best observed latency (EWMA) or tokens/s, configured avg latency until observed
quality  → heavyweight tier first, then latency
balanced → lightweight tier first, then latency
Only models with at least one available, not draining replica are candidates. Microseconds: a
scan over the (small) model table, no allocation beyond the result.
"""

from __future__ import annotations

from .backends import Model

TASKS = {"chat": "chat", "code": "code", "embedding": "embedding", "reasoning": "reasoning", "completion": "completion"}
PRIORITIES = ("speed", "quality", "balanced")
_TIER_BONUS = {
    "quality": {"heavyweight": 1.0, "lightweight": 0.3},
    "balanced": {"lightweight": 1.0, "heavyweight": 0.5},
    "speed": {},
}


def _latency(m: Model) -> float:
    return m.ewma_ms if m.ewma_ms is not None else float(m.cfg.latency_ms.avg)


def score(m: Model, priority: str) -> float:
    """Higher is better, in [0, 1]."""
    speed = 1000.0 / (1000.0 + _latency(m))  # 1 s → 0.5
    if priority == "speed":
        if m.tps is not None:
            return round(0.5 * speed + 0.5 * (m.tps / (m.tps + 20.0)), 4)
        return round(speed, 4)
    return round(0.7 * _TIER_BONUS[priority].get(m.tier, 0.0) + 0.3 * speed, 4)


def candidates(models: list[Model], task: str) -> list[Model]:
    cap = TASKS.get(task, "chat")
    out = []
    for m in models:
        caps = m.capabilities
        ok = cap in caps or (cap == "reasoning" and "chat" in caps) or (cap == "code" and "chat" in caps)
        if ok and m.routable():
            out.append(m)
    # An exact capability match beats the chat stand-in for code/reasoning.
    exact = [m for m in out if cap in m.capabilities]
    return exact or out


def hints(headers, endpoint: str) -> tuple[str, str]:
    """(task, priority) of a request: the task from the endpoint or ``x-task`` (chat by default),
    the priority from ``x-priority`` (balanced by default or when unknown)."""
    task = priority = None
    for k, v in headers:
        if k == b"x-task":
            task = v.decode("latin-1").strip().lower()
        elif k == b"x-priority":
            priority = v.decode("latin-1").strip().lower()
    if endpoint == "embeddings":
        task = "embedding"
    return task or "chat", priority if priority in PRIORITIES else "balanced"


def choose(models: list[Model], task: str, priority: str) -> Model | None:
    best, best_s = None, -1.0
    for m in candidates(models, task):
        s = score(m, priority)
        if s > best_s:
            best, best_s = m, s
    return best


def recommend(models: list[Model], task: str, priority: str) -> dict:
    """The choice with score, reasoning and up to two alternatives (for /v1/models/registry)."""
    if priority not in PRIORITIES:
        priority = "balanced"
    if task not in TASKS:
        task = "chat"
    ranked = sorted(((score(m, priority), m) for m in candidates(models, task)), key=lambda t: -t[0])
    if not ranked:
        return {"task": task, "priority": priority, "model": None, "reasoning": f"no healthy model offers {task}"}
    s, m = ranked[0]
    lat = _latency(m)
    src = "observed" if m.ewma_ms is not None else "configured"
    why = {
        "speed": f"lowest latency ({src} {lat:.0f} ms)" + (f", {m.tps:.1f} tokens/s" if m.tps else ""),
        "quality": f"tier {m.tier} preferred for quality ({src} latency {lat:.0f} ms)",
        "balanced": f"tier {m.tier} preferred for balanced ({src} latency {lat:.0f} ms)",
    }[priority]
    return {
        "task": task,
        "priority": priority,
        "model": m.name,
        "score": s,
        "reasoning": f"{m.name}: {why}; {m.healthy_count()}/{len(m.replicas)} replicas healthy",
        "alternatives": [{"model": a.name, "score": sa} for sa, a in ranked[1:3]],
    }
