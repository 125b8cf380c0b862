"""The admin API for keys with ``admin: true``: list replicas, drain and undrain them (drain.py);
the keys' token budgets and what they spent, and resetting them (budgets.py).

Built for rolling restarts: drain a host on every gateway, poll until its ``outstanding`` is 0,
restart, undrain. While auth is off these routes answer 403: draining takes capacity away, and
without keys the gateway cannot tell an operator from anyone else who reaches the port (a
loopback-only rule would let in every client of a proxy on the same host).
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .. import auth, budgets, drain
from ..errors import Denied, error_body

log = logging.getLogger("citadel_gateway")
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


async def _admin_with_body(request: Request):
    """(the admin key, the request's JSON body), or the error answer (``_admin``'s, or 400)."""
    key = _admin(request)
    if isinstance(key, Response):
        return key
    try:
        return key, json.loads((await request.body()).decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _error(400, "request body is not valid JSON", "invalid_json")


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
    got = await _admin_with_body(request)
    if isinstance(got, Response):
        return got
    key, body = got
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


def _budget(key, today: int, month: int, p: budgets.Period) -> dict:
    return {
        "key": key.name,
        "daily_tokens": key.daily_tokens or None,
        "used_today": today,
        "monthly_tokens": key.monthly_tokens or None,
        "used_this_month": month,
        "exhausted": budgets.verdict(key, today, month, p) is not None,
    }


@router.get("/budgets", summary="Every key with a token budget: its budgets and what it spent today and this month")
async def list_budgets(request: Request) -> Response:
    admin = _admin(request)
    if isinstance(admin, Response):
        return admin
    gw = request.app.state.gateway
    p = budgets.period()
    out = []
    try:
        for key in (k for k in gw.state.cfg.auth.keys if budgets.budgeted(k)):
            out.append(_budget(key, *await gw.ledger.spent(key.name, p), p))
    except Exception as e:  # noqa: BLE001 - Redis down or slow
        return _error(503, f"budget store unavailable: {e}", "rate_limiter_unavailable")
    return JSONResponse({"day": p.day, "month": p.month, "budgets": out})


@router.post(
    "/budgets/reset",
    summary="Forget what a key spent today and this month",
    description='JSON body {"key": "<key name>"}. 404 when no key of that name has a budget.',
)
async def reset_budget(request: Request) -> Response:
    got = await _admin_with_body(request)
    if isinstance(got, Response):
        return got
    admin, body = got
    name = body.get("key") if isinstance(body, dict) else None
    if not isinstance(name, str):
        return _error(400, 'expected {"key": "<key name>"}', "invalid_request")
    gw = request.app.state.gateway
    key = next((k for k in gw.state.cfg.auth.keys if k.name == name and budgets.budgeted(k)), None)
    if key is None:
        return _error(404, f"no key named {name!r} has a token budget", "key_not_found")
    try:
        await gw.ledger.reset(name)
    except Exception as e:  # noqa: BLE001
        return _error(503, f"budget store unavailable: {e}", "rate_limiter_unavailable")
    log.warning("budget of key %r reset by %r", name, admin.name)
    p = budgets.period()
    return JSONResponse(_budget(key, 0, 0, p))
