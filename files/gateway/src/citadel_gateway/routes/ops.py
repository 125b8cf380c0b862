"""Liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: every model has at least one healthy replica; config_version: sha256 of the config in force",
)
async def ready(request: Request) -> JSONResponse:
    gw = request.app.state.gateway
    # config_version in every answer: after a reload, an operator (or the role) sees which file is
    # in force without an admin key (a digest of a file that holds only key digests).
    version = gw.config_version
    if gw.health is None or gw.health.rounds == 0:
        return JSONResponse(
            {"status": "starting: first health check not finished", "config_version": version}, status_code=503
        )
    missing = gw.state.router.missing()
    if missing:
        return JSONResponse(
            {"status": "not ready", "models_without_healthy_replica": missing, "config_version": version},
            status_code=503,
        )
    return JSONResponse({"status": "ready", "config_version": version})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    gw = request.app.state.gateway
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE)
