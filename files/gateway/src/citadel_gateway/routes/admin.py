"""The admin API for keys with ``admin: true``: list replicas, drain and undrain them (drain.py).

Built for rolling restarts: drain a host on every gateway, poll until its ``outstanding`` is 0,
restart, undrain. While auth is off these routes answer 403: draining takes capacity away, and
without keys the gateway cannot tell an operator from anyone else who reaches the port (a
loopback-only rule would let in every client of a proxy on the same host).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .. import auth, drain
from ..errors import Denied, error_body

router = APIRouter(prefix="/admin", tags=["admin"])

_SELECTOR_DOC = (
    'JSON body {"host": "citadel-llm-01"} or {"url": "http://citadel-llm-01:11403"}, optionally with '
    '"model" (name or alias) to narrow, or {"model": ...} alone. 404 when nothing matches. Idempotent.'
)


def _error(status: int, message: str, code: str, headers=()) -> Response:
    h = {k.decode(): v.decode() for k, v in headers}
    return Response(error_body(status, message, code), status, headers=h, media_type="application/json")


def _admin(request: Request):
    """The admin key, or the error answer: 401 no or unknown key (429 for an address that keeps
    failing, as everywhere), 403 not an admin key or auth off."""
    gw = request.app.state.gateway
    st = gw.state
    if not st.cfg.auth.required:
        return _error(
            403, "the admin API is off while auth is off: configure auth.keys with an admin key", "admin_requires_auth"
        )
    client = request.client.host if request.client else None
    verdict = auth.authenticate(st.cfg.auth, st.keys, gw.failed_auth, request.headers.raw, client)
    if isinstance(verdict, Denied):
        return _error(verdict.status, verdict.message, verdict.code, verdict.headers)
    if not verdict.admin:
        return _error(403, f"key {verdict.name!r} is not an admin key", "admin_required")
    return verdict


def _select(router, d, require: bool):
    """The replicas ``d`` names, or the error answer (400 malformed, 404 no match)."""
    try:
        return drain.Selector(d, require).select(router)
    except drain.BadSelector as e:
        return _error(400, str(e), "invalid_request")
    except drain.NoMatch as e:
        return _error(404, str(e), "replica_not_found")


@router.get(
    "/replicas",
    summary="Every replica (or those ?host=, ?url=, ?model= name): health, circuit, outstanding, draining",
)
async def replicas(request: Request) -> Response:
    key = _admin(request)
    if isinstance(key, Response):
        return key
    gw = request.app.state.gateway
    reps = _select(gw.state.router, dict(request.query_params), require=False)
    if isinstance(reps, Response):
        return reps
    return JSONResponse({"config_version": gw.config_version, **drain.summary(reps)})


async def _set(request: Request, on: bool) -> Response:
    key = _admin(request)
    if isinstance(key, Response):
        return key
    try:
        body = json.loads((await request.body()).decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _error(400, "request body is not valid JSON", "invalid_json")
    reps = _select(request.app.state.gateway.state.router, body, require=True)
    if isinstance(reps, Response):
        return reps
    changed = drain.set_draining(reps, on, key.name)
    return JSONResponse({"action": "drain" if on else "undrain", "changed": changed, **drain.summary(reps)})


@router.post("/drain", summary="Drain replicas: no new requests, in-flight ones finish", description=_SELECTOR_DOC)
async def drain_replicas(request: Request) -> Response:
    return await _set(request, True)


@router.post("/undrain", summary="Undrain replicas: back in the replica choice", description=_SELECTOR_DOC)
async def undrain_replicas(request: Request) -> Response:
    return await _set(request, False)
