"""/v1/models (OpenAI list) and /v1/models/registry (catalog, live health, recommendation)."""

from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import APIRouter, HTTPException, Query, Request

from .. import selection

router = APIRouter()
_CREATED = int(time.time())


def require_key(request: Request):
    """Same key check as the hot path (sha256, constant-time compare)."""
    st = request.app.state.gateway.state
    if not st.cfg.auth.required:
        return None
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "").strip()
    if not token:
        raise HTTPException(401, "missing API key (Authorization: Bearer or X-API-Key)")
    digest = hashlib.sha256(token.encode()).hexdigest()
    key = st.keys.get(digest)
    if key is None or not hmac.compare_digest(key.sha256, digest):
        raise HTTPException(401, "invalid API key")
    return key


@router.get("/v1/models", summary="Every routable model and alias (OpenAI list shape)")
async def list_models(request: Request) -> dict:
    key = require_key(request)
    st = request.app.state.gateway.state
    allowed = st.allowed.get(key.name) if key else None
    data = []
    for m in st.router.models:
        if allowed is not None and m.name not in allowed:
            continue
        for n in (m.name, *m.aliases):
            data.append({"id": n, "object": "model", "created": _CREATED, "owned_by": "citadel", "root": m.name})
    return {"object": "list", "data": data}


@router.get("/v1/models/registry", summary="Catalog, live replica health, observed latency, recommendation")
async def registry(
    request: Request,
    priority: str | None = Query(None, pattern="^(speed|quality|balanced)$"),
    task: str | None = Query(None, pattern="^(chat|completion|code|embedding|reasoning)$"),
) -> dict:
    require_key(request)
    st = request.app.state.gateway.state
    models = []
    for m in st.router.models:
        models.append(
            {
                "name": m.name,
                "aliases": list(m.aliases),
                "capabilities": list(m.capabilities),
                "tier": m.tier,
                "latency_ms": {"avg": m.cfg.latency_ms.avg, "p95": m.cfg.latency_ms.p95},
                "observed_latency_ms": round(m.ewma_ms, 1) if m.ewma_ms is not None else None,
                "observed_tokens_per_s": round(m.tps, 1) if m.tps is not None else None,
                "fallbacks": list(m.fallbacks),
                "healthy": m.healthy_count() > 0,
                "replicas": [
                    {
                        "url": r.url,
                        "healthy": r.healthy,
                        "reason": r.reason,
                        "circuit": ("closed", "half-open", "open")[r.breaker.state],
                        "outstanding": r.outstanding,
                    }
                    for r in m.replicas
                ],
            }
        )
    out: dict = {"object": "registry", "models": models}
    if priority or task:
        out["recommendation"] = selection.recommend(st.router.models, task or "chat", priority or "balanced")
    return out
