#!/usr/bin/env python3
"""A fast OpenAI-shaped stub upstream: the measuring instrument of bench_gateway.py.

It answers like a vLLM OpenAI server (/health, /v1/models, /v1/chat/completions,
/v1/completions; JSON with `usage`, or SSE chunks spaced by a fixed interval) but
does no work, so that what a benchmark measures in front of it is the proxy.
Two servers for the same answers:
- ``--server raw`` (default here): a raw asyncio protocol (uvloop when installed), ~30 k req/s
  on one core, 2-3x faster than the stub the benchmark's targets were set against;
- ``--server aiohttp``: aiohttp.web, ~11-14 k req/s and p50 ~0.17 ms at one connection, the
  stub those targets were set against; bench_gateway.py uses it by default so that its shares
  of direct throughput stay comparable (its bare-proxy row checks that calibration every run).

    python loadtests/stub_upstream.py --port 18001 --model bench-model --chunk-interval-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

# ~50 words: a realistic short chat answer (the response is ~0.7 KB, like vLLM's).
ANSWER = (
    "The capital of France is Paris. It sits on the Seine in the north of the country, "
    "has been the seat of French government for most of the last thousand years, and is "
    "known for its museums, its cafes and the Eiffel Tower, built for the 1889 World's Fair."
)
ANSWER_TOKENS = len(ANSWER.split())
PROMPT_TOKENS = 24

REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


class Config:
    def __init__(self, models: list[str], chunks: int, interval_s: float) -> None:
        self.models = models
        self.chunks = chunks
        self.interval_s = interval_s
        self.open: set[StubProtocol] = set()
        self.models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": "stub", "max_model_len": 8192}
                    for m in models
                ],
            }
        ).encode()
        self.chat_body = {m: self._chat(m) for m in models}
        self.completion_body = {m: self._completion(m) for m in models}

    @staticmethod
    def _usage() -> dict:
        return {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": ANSWER_TOKENS,
            "total_tokens": PROMPT_TOKENS + ANSWER_TOKENS,
        }

    def _chat(self, model: str) -> bytes:
        return json.dumps(
            {
                "id": "chatcmpl-stub0000000000000000000000",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ANSWER, "tool_calls": []},
                        "logprobs": None,
                        "finish_reason": "stop",
                        "stop_reason": None,
                    }
                ],
                "usage": self._usage(),
                "prompt_logprobs": None,
            }
        ).encode()

    def answer(self, chat: bool, body: bytes) -> tuple[int, bytes, tuple[str, bool] | None]:
        """A completion request's answer: (status, JSON body, None), or (200, b"", (model,
        include_usage)) when it asks for a stream. Parses only what is needed (~5 us)."""
        try:
            req = json.loads(body)
            model = req.get("model", self.models[0])
            stream = bool(req.get("stream"))
            usage = bool((req.get("stream_options") or {}).get("include_usage"))
        except (ValueError, AttributeError):
            return 400, b'{"error":"invalid JSON"}', None
        if stream:
            return 200, b"", (model, usage)
        out = (self.chat_body if chat else self.completion_body).get(model)
        if out is None:
            return 404, b'{"error":{"message":"model not found"}}', None
        return 200, out, None

    def _completion(self, model: str) -> bytes:
        return json.dumps(
            {
                "id": "cmpl-stub0000000000000000000000",
                "object": "text_completion",
                "created": 1700000000,
                "model": model,
                "choices": [{"index": 0, "text": ANSWER, "logprobs": None, "finish_reason": "stop"}],
                "usage": self._usage(),
            }
        ).encode()


def response(status: int, body: bytes, keep_alive: bool, ctype: bytes = b"application/json") -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")),
            b"content-type: " + ctype + b"\r\n",
            b"content-length: %d\r\n" % len(body),
            b"" if keep_alive else b"connection: close\r\n",
            b"\r\n",
            body,
        )
    )


class StubProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive; Content-Length or chunked request bodies; pipelining-safe."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task | None = None
        self.pending: list[tuple[bytes, bytes, bytes, bool]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.cfg.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming:
            self.streaming.cancel()
        self.transport = None
        self.cfg.open.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, path, version = lines[0].split(" ", 2)
            except ValueError:
                self._close_with(400)
                return
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            start = end + 4
            if headers.get("transfer-encoding", "").lower() == "chunked":
                parsed = self._dechunk(start)
                if parsed is None:
                    return  # wait for more bytes
                body, start = parsed
            else:
                n = int(headers.get("content-length", "0") or 0)
                if len(self.buf) - start < n:
                    return
                body = self.buf[start : start + n]
                start += n
            self.buf = self.buf[start:]
            conn = headers.get("connection", "").lower()
            keep_alive = conn != "close" and (version == "HTTP/1.1" or conn == "keep-alive")
            self.pending.append((method.encode(), path.split("?", 1)[0].encode(), body, keep_alive))
            if self.streaming is None:
                self._drain_pending()

    def _dechunk(self, pos: int) -> tuple[bytes, int] | None:
        out = []
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(self.buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                trailer_end = self.buf.find(b"\r\n", pos)
                if trailer_end < 0:
                    return None
                return b"".join(out), trailer_end + 2
            if len(self.buf) < pos + size + 2:
                return None
            out.append(self.buf[pos : pos + size])
            pos += size + 2

    def _close_with(self, status: int) -> None:
        if self.transport:
            self.transport.write(response(status, b"{}", False))
            self.transport.close()

    def _drain_pending(self) -> None:
        # Requests on one connection are answered in order; a stream holds the line.
        while self.pending and self.streaming is None and self.transport:
            method, path, body, keep_alive = self.pending.pop(0)
            self._handle(method, path, body, keep_alive)

    def _handle(self, method: bytes, path: bytes, body: bytes, keep_alive: bool) -> None:
        t = self.transport
        assert t is not None
        if path == b"/health":
            t.write(response(200, b"{}", keep_alive))
        elif path == b"/v1/models":
            t.write(response(200, self.cfg.models_body, keep_alive))
        elif path in (b"/v1/chat/completions", b"/v1/completions"):
            if method != b"POST":
                t.write(response(405, b'{"error":"POST only"}', keep_alive))
            else:
                self._completion(path, body, keep_alive)
        else:
            t.write(response(404, b'{"error":"not found"}', keep_alive))
        if not keep_alive and not self.streaming:
            t.close()

    def _completion(self, path: bytes, body: bytes, keep_alive: bool) -> None:
        t = self.transport
        assert t is not None
        chat = path == b"/v1/chat/completions"
        status, out, stream = self.cfg.answer(chat, body)
        if stream is None:
            t.write(response(status, out, keep_alive))
            return
        model, usage = stream
        self.streaming = asyncio.get_running_loop().create_task(self._stream(model, chat, usage, keep_alive))

    async def _stream(self, model: str, chat: bool, usage: bool, keep_alive: bool) -> None:
        t = self.transport
        cfg = self.cfg
        try:
            assert t is not None
            t.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"transfer-encoding: chunked\r\n" + (b"" if keep_alive else b"connection: close\r\n") + b"\r\n"
            )
            async for event in stream_events(cfg, model, chat, usage):
                if t.is_closing():
                    return
                _write_event(t, event)
            t.write(b"0\r\n\r\n")
            if not keep_alive:
                t.close()
        finally:
            self.streaming = None
        self._drain_pending()


async def stream_events(cfg: Config, model: str, chat: bool, usage: bool):
    """The SSE events of one stream, as vLLM sends them: cfg.chunks deltas cfg.interval_s
    apart, then at once an optional usage event and [DONE]."""
    words = ANSWER.split()
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"
    for i in range(cfg.chunks):
        if i:
            await asyncio.sleep(cfg.interval_s)
        word = words[i % len(words)] + " "
        if chat:
            delta = {"role": "assistant", "content": ""} if i == 0 else {"content": word}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": 0, "text": word, "logprobs": None, "finish_reason": None}
        if i == cfg.chunks - 1:
            choice["finish_reason"] = "stop"
        event = {"id": "chatcmpl-stub", "object": obj, "created": created, "model": model, "choices": [choice]}
        yield b"data: " + json.dumps(event).encode() + b"\n\n"
    if usage:
        n = max(cfg.chunks - 1, 0)
        u = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n, "total_tokens": PROMPT_TOKENS + n}
        event = {"id": "chatcmpl-stub", "object": obj, "created": created, "model": model, "choices": []}
        event["usage"] = u
        yield b"data: " + json.dumps(event).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def _write_event(t: asyncio.Transport, data: bytes) -> None:
    t.write(b"%x\r\n%s\r\n" % (len(data), data))


async def serve(args: argparse.Namespace) -> None:
    cfg = Config(args.model or ["bench-model"], args.chunks, args.chunk_interval_ms / 1000)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StubProtocol(cfg), args.host, args.port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"stub upstream on http://{args.host}:{args.port} models={cfg.models}", flush=True)
    async with server:
        await stop.wait()
        # Drop idle keep-alive connections too: the server's close waits for every one of them.
        server.close()
        for proto in list(cfg.open):
            if proto.transport:
                proto.transport.abort()


async def serve_aiohttp(args: argparse.Namespace) -> None:
    from aiohttp import web  # noqa: PLC0415 - only this server needs it

    cfg = Config(args.model or ["bench-model"], args.chunks, args.chunk_interval_ms / 1000)

    async def models(request: web.Request) -> web.Response:
        return web.Response(body=cfg.models_body, content_type="application/json")

    async def completion(request: web.Request) -> web.StreamResponse:
        chat = request.path == "/v1/chat/completions"
        status, out, stream = cfg.answer(chat, await request.read())
        if stream is None:
            return web.Response(status=status, body=out, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        model, usage = stream
        async for event in stream_events(cfg, model, chat, usage):
            await resp.write(event)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/health", lambda r: web.Response(body=b"{}", content_type="application/json"))
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completion)
    app.router.add_post("/v1/completions", completion)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=4096, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"stub upstream (aiohttp) on http://{args.host}:{args.port} models={cfg.models}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18001)
    p.add_argument("--model", action="append", help="served model name (repeatable; default bench-model)")
    p.add_argument("--chunks", type=int, default=20, help="SSE data events per stream (before [DONE])")
    p.add_argument("--chunk-interval-ms", type=float, default=10.0, help="time between SSE events")
    p.add_argument("--server", choices=("raw", "aiohttp"), default="raw", help="see the module docstring")
    args = p.parse_args()
    try:
        import uvloop  # optional: ~1.5x the requests/s of the default loop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    run(serve(args) if args.server == "raw" else serve_aiohttp(args))


if __name__ == "__main__":
    main()
