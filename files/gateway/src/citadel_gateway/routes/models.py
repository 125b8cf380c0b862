"""/v1/models (OpenAI list) and /v1/models/registry (the key's models, live health, recommendation)."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Query, Request

from .. import auth, selection
from ..health import CIRCUIT_NAMES

router = APIRouter()
_CREATED = int(time.time())


def require_key(request: Request):
    """The same check as the hot path (auth.py on the raw header bytes), failed-auth throttle included."""
    gw = request.app.state.gateway
    st = gw.state
    client = request.client.host if request.client else None
    verdict = auth.authenticate(st.cfg.auth, st.keys, gw.failed_auth, request.headers.raw, client)
    if isinstance(verdict, auth.Denied):
        raise HTTPException(
            verdict.status, verdict.message, headers={k.decode(): v.decode() for k, v in verdict.headers}
        )
    return verdict


@router.get("/v1/models", summary="Every model and alias the key may use (OpenAI list shape)")
async def list_models(request: Request) -> dict:
    key = require_key(request)
    st = request.app.state.gateway.state
    data = []
    for m in st.models_for(key):
        for n in (m.name, *m.aliases):
            data.append({"id": n, "object": "model", "created": _CREATED, "owned_by": "citadel", "root": m.name})
    return {"object": "list", "data": data}


def _replica(r, admin: bool) -> dict:
    out = {
        "healthy": r.healthy,
        "circuit": CIRCUIT_NAMES[r.breaker.state],
        "outstanding": r.outstanding,
    }
    if admin:  # where the replicas are, why they failed, whether they drain: for operators only
        out = {"url": r.url, **out, "reason": r.reason, "draining": r.draining}
    return out


@router.get(
    "/v1/models/registry", summary="The key's models: catalog, live replica health, observed latency, recommendation"
)
async def registry(
    request: Request,
    priority: str | None = Query(None, pattern="^(speed|quality|balanced)$"),
    task: str | None = Query(None, pattern="^(chat|completion|code|embedding|reasoning)$"),
) -> dict:
    key = require_key(request)
    st = request.app.state.gateway.state
    admin = key is None or key.admin  # without auth the operator is the only client
    mine = st.models_for(key)
    models = [
        {
            "name": m.name,
            "aliases": list(m.aliases),
            "capabilities": list(m.capabilities),
            "tier": m.tier,
            "latency_ms": {"avg": m.cfg.latency_ms.avg, "p95": m.cfg.latency_ms.p95},
            "observed_latency_ms": round(m.ewma_ms, 1) if m.ewma_ms is not None else None,
            "observed_tokens_per_s": round(m.tps, 1) if m.tps is not None else None,
            "fallbacks": [f for f in m.fallbacks if any(x.name == f for x in mine)],
            "healthy": m.healthy_count() > 0,
            "replicas": [_replica(r, admin) for r in m.replicas],
        }
        for m in mine
    ]
    out: dict = {"object": "registry", "models": models}
    if priority or task:
        out["recommendation"] = selection.recommend(mine, task or "chat", priority or "balanced")
    return out
