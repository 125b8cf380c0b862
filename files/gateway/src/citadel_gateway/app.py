"""Builds the ASGI app: the hot POST endpoints are served by ``Gateway`` before FastAPI routing;
FastAPI keeps the rest (ops, models, registry, admin, OpenAPI docs) and owns the lifespan, in
which the one pooled upstream client, the health checker and the SIGHUP handler live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from . import config as C
from .context import HOT
from .errors import error_body
from .gateway import Gateway
from .routes import admin, models, ops

log = logging.getLogger("citadel_gateway")


def _err(status: int, message: str, code: str, headers=None) -> JSONResponse:
    import json

    return JSONResponse(json.loads(error_body(status, message, code)), status_code=status, headers=headers)


def build_fastapi(gw: Gateway) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.start()
        loop = asyncio.get_running_loop()
        hup = False
        if gw.config_path:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, gw.reload)
                hup = True
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            await gw.stop()

    app = FastAPI(title="citadel-gateway", version=__version__, lifespan=lifespan)
    app.state.gateway = gw
    app.include_router(ops.router)
    app.include_router(models.router)
    app.include_router(admin.router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        codes = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed"}
        return _err(
            exc.status_code, str(exc.detail), codes.get(exc.status_code, "error"), getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _err(400, f"{where}: {first.get('msg', 'invalid request')}", "invalid_request")

    # Documented in OpenAPI (served by the hot path, never reached through FastAPI).
    for path in HOT:

        async def _doc(request: Request):  # pragma: no cover - dispatched before FastAPI
            return _err(500, "hot path not dispatched", "internal_error")

        app.add_api_route(path, _doc, methods=["POST"], summary=f"OpenAI {path} (proxied to the model's replicas)")
    return app


class App:
    """The ASGI callable uvicorn serves: hot paths first, everything else to FastAPI."""

    def __init__(self, gw: Gateway) -> None:
        self.gateway = gw
        self.fastapi = build_fastapi(gw)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in HOT:
            return await self.gateway(scope, receive, send)
        return await self.fastapi(scope, receive, send)


def build_app(cfg: C.Config, config_path: str | None = None, log_stream=None, config_version: str | None = None) -> App:
    return App(Gateway(cfg, config_path, log_stream, config_version))
