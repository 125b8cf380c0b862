#!/usr/bin/env python3
"""The reference proxy the issue's targets were set against (it made 0.21 of direct at c=64
there), the floor the gateway must beat: FastAPI on one uvicorn worker (uvloop + httptools)
and one shared aiohttp session, no auth, limits, metrics or log.

    bare_proxy.py --port PORT --upstream http://127.0.0.1:STUB
"""

from __future__ import annotations

import argparse
import contextlib

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse


def build(upstream: str) -> FastAPI:
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await state["session"].close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/models")
    async def models():
        async with state["session"].get(f"{upstream}/v1/models") as r:
            return Response(await r.read(), status_code=r.status, media_type=r.content_type)

    @app.post("/v1/{path:path}")
    async def proxy(path: str, request: Request):
        r = await state["session"].post(
            f"{upstream}/v1/{path}", data=await request.body(), headers={"Content-Type": "application/json"}
        )
        if r.content_type == "text/event-stream":

            async def relay():
                async for chunk in r.content.iter_any():
                    yield chunk
                r.release()

            return StreamingResponse(relay(), status_code=r.status, media_type="text/event-stream")
        data = await r.read()
        return Response(data, status_code=r.status, media_type=r.content_type)

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    a = p.parse_args()
    uvicorn.run(
        build(a.upstream.rstrip("/")),
        host="127.0.0.1",
        port=a.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
