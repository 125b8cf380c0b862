"""Liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: every model has at least one healthy replica")
async def ready(request: Request) -> JSONResponse:
    gw = request.app.state.gateway
    if gw.health is None or gw.health.rounds == 0:
        return JSONResponse({"status": "starting: first health check not finished"}, status_code=503)
    missing = gw.state.router.missing()
    if missing:
        return JSONResponse({"status": "not ready", "models_without_healthy_replica": missing}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    gw = request.app.state.gateway
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE)
