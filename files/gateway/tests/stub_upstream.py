"""A fast, steerable OpenAI-shaped upstream (test fixture and benchmark instrument).

python stub_upstream.py --port 11403 --model smollm2-135m [--model other]
Steer it at runtime: POST /_control {"status": 503, "count": 2, "delay": 0.2, "chunks": 5,
"interval": 0.01, "break_after": 2, "stall_after": 2, "first_delay": 1, "close": true,
"health": 503, "ready_model": false, "hold_after": 1}; GET /_stats.
break_after: reset the stream after N events; stall_after: send N events, then nothing (the
connection stays open); first_delay: seconds between a stream's head and its first event;
close: read a POST and close the connection without answering; hold_after: send N events, then
wait until a control sets it to null, then send the rest (a stream the test ends when it wants);
end_delay: seconds between a stream's [DONE] event and its chunked terminator; split_done: send
[DONE] in two chunks 50 ms apart.
A stream with ``stream_options.include_usage`` ends, as vLLM's, with an event of no choices and
the usage (completion_tokens: the number of chunks); /_stats lists include_usage per stream.
--api-key KEY: /v1/* answers 401 without "Authorization: Bearer KEY" (vLLM's --api-key); every
Authorization a /v1/ request carried is in /_stats. --key-header NAME: the key is wanted bare in
that header instead (as some providers do). --prefix /p/v1: the API lives under /p/v1 instead
of /v1 (a provider's base URL); --tls-cert/--tls-key: HTTPS. /_stats counts GETs by path too.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import ssl
import time

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

DEFAULTS = {
    "status": None,
    "count": None,
    "delay": 0.0,
    "chunks": 3,
    "interval": 0.0,
    "break_after": None,
    "stall_after": None,
    "first_delay": 0.0,
    "close": False,
    "health": 200,
    "ready_model": True,
    # what /metrics reports, as vLLM's gauges: requests running and waiting there (every
    # client's, not only this gateway's), KV cache use
    "vllm_running": 0,
    "vllm_waiting": 0,
    "vllm_kv": 0.0,
    "hold_after": None,
    "end_delay": 0.0,
    "split_done": False,
}
STATE: dict = {}
_FRESH_STATS = {
    "posts": 0,
    "by_path": {},
    "gets": {},
    "request_ids": [],
    "authorizations": [],
    "include_usage": [],
    "bodies": [],
}
STATS = copy.deepcopy(_FRESH_STATS)
MODELS: list[str] = []
API_KEY: list[bytes] = []  # --api-key: /v1/* wants "Authorization: Bearer KEY", as vLLM's --api-key
KEY_HEADER = [b"authorization"]  # --key-header: where the key is wanted (bare unless Authorization)
PREFIX = ["/v1"]  # --prefix: where the API lives


def _resp(status: int, body: bytes, ctype: bytes = b"application/json", keep: bool = True) -> bytes:
    return (
        b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
        % (
            status,
            ctype,
            len(body),
            b"" if keep else b"Connection: close\r\n",
        )
        + body
    )


def _completion(model: str, chat: bool) -> bytes:
    choice = {"index": 0, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": "Paris."}
    else:
        choice["text"] = " Paris."
    return json.dumps(
        {
            "id": "cmpl-stub",
            "object": "chat.completion" if chat else "text_completion",
            "created": 1,
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }
    ).encode()


class Handler(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.p = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = []
        self.headers = {}

    def data_received(self, data):
        try:
            self.p.feed_data(data)
        except httptools.HttpParserError:
            self.t.close()

    def on_message_begin(self):
        self.url = b""
        self.body = []
        self.headers = {}

    def on_url(self, url):
        self.url += url

    def on_header(self, k, v):
        self.headers[k.lower()] = v

    def on_body(self, b):
        self.body.append(b)

    def on_message_complete(self):
        method = self.p.get_method()
        path = self.url.decode()
        body = b"".join(self.body)
        if method == b"GET":
            STATS["gets"][path] = STATS["gets"].get(path, 0) + 1
        if PREFIX[0] != "/v1":  # the API only under the prefix: a bare /v1/... is not found
            if path.startswith(PREFIX[0] + "/"):
                path = "/v1" + path[len(PREFIX[0]) :]
            elif path.startswith("/v1"):
                path = "/_" + path
        if path.startswith("/v1/"):
            auth = self.headers.get(KEY_HEADER[0])
            if auth is not None and len(STATS["authorizations"]) < 1000:
                STATS["authorizations"].append(auth.decode())
            bearer = KEY_HEADER[0] == b"authorization"
            if API_KEY and auth != (b"Bearer " + API_KEY[0] if bearer else API_KEY[0]):
                self.t.write(_resp(401, b'{"error":"Unauthorized"}'))  # what vLLM answers
                return
        if method == b"POST" and path.startswith("/v1/"):
            asyncio.get_running_loop().create_task(self.serve(path, body))
            return
        self.t.write(self.simple(method, path, body))

    def simple(self, method, path, body) -> bytes:
        if path == "/health":
            return _resp(STATE["health"], b"{}")
        if path == "/metrics":
            labels = '{engine="0",model_name="%s"}' % (MODELS[0] if MODELS else "")
            text = "".join(
                f"# TYPE vllm:{name} gauge\nvllm:{name}{labels} {float(STATE[key])}\n"
                for name, key in (("num_requests_running", "vllm_running"), ("num_requests_waiting", "vllm_waiting"),
                                  ("kv_cache_usage_perc", "vllm_kv"))
            )  # fmt: skip
            return _resp(200, text.encode())
        if path == "/v1/models":
            ids = MODELS if STATE["ready_model"] else []
            return _resp(
                200, json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in ids]}).encode()
            )
        if path == "/_control" and method == b"POST":
            new = json.loads(body or b"{}")
            if new.get("reset"):
                STATE.clear()
                STATE.update(DEFAULTS)
            STATE.update({k: v for k, v in new.items() if k in DEFAULTS})
            return _resp(200, json.dumps(STATE).encode())
        if path == "/_stats":
            return _resp(200, json.dumps(STATS).encode())
        if path == "/_reset_stats" and method == b"POST":
            STATS.update(copy.deepcopy(_FRESH_STATS))
            return _resp(200, b"{}")
        return _resp(404, b'{"error":{"message":"not found"}}')

    async def serve(self, path: str, body: bytes) -> None:
        t = self.t
        STATS["posts"] += 1
        if len(STATS["bodies"]) < 100:
            STATS["bodies"].append(body.decode("utf-8", "replace"))
        STATS["by_path"][path] = STATS["by_path"].get(path, 0) + 1
        rid = self.headers.get(b"x-request-id")
        if rid is not None and len(STATS["request_ids"]) < 1000:
            STATS["request_ids"].append(rid.decode())
        st = STATE
        if st["close"]:
            t.close()
            return
        if st["delay"]:
            await asyncio.sleep(st["delay"])
        if st["status"] is not None and (st["count"] is None or st["count"] > 0):
            if st["count"] is not None:
                st["count"] -= 1
            t.write(
                _resp(
                    st["status"],
                    json.dumps(
                        {"error": {"message": f"stub says {st['status']}", "type": "stub", "code": st["status"]}}
                    ).encode(),
                )
            )
            return
        try:
            req = json.loads(body)
        except ValueError:
            t.write(_resp(400, b'{"error":{"message":"bad json"}}'))
            return
        model = req.get("model", "")
        if model not in MODELS:
            t.write(
                _resp(
                    404,
                    json.dumps(
                        {
                            "error": {
                                "message": f"The model `{model}` does not exist.",
                                "type": "NotFoundError",
                                "code": 404,
                            }
                        }
                    ).encode(),
                )
            )
            return
        if path == "/v1/embeddings":
            inp = req.get("input")
            n = len(inp) if isinstance(inp, list) else 1
            data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]} for i in range(n)]
            t.write(
                _resp(
                    200,
                    json.dumps(
                        {
                            "object": "list",
                            "data": data,
                            "model": model,
                            "usage": {"prompt_tokens": 2 * n, "total_tokens": 2 * n},
                        }
                    ).encode(),
                )
            )
            return
        chat = path == "/v1/chat/completions"
        if not req.get("stream"):
            t.write(_resp(200, _completion(model, chat)))
            return
        t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        if st["first_delay"]:
            await asyncio.sleep(st["first_delay"])
        for i in range(st["chunks"]):
            if st["break_after"] is not None and i >= st["break_after"]:
                t.abort()
                return
            if st["stall_after"] is not None and i >= st["stall_after"]:
                await asyncio.sleep(3600)  # silent, connection open (the gateway's gap deadline ends it)
            while st["hold_after"] is not None and i >= st["hold_after"]:
                await asyncio.sleep(0.01)  # until the test releases it (under the gap deadline)
            delta = {"delta": {"content": f"tok{i} "}} if chat else {"text": f"tok{i} "}
            ev = (
                b"data: "
                + json.dumps(
                    {
                        "id": "s",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, **delta}],
                    }
                ).encode()
                + b"\n\n"
            )
            t.write(b"%x\r\n%s\r\n" % (len(ev), ev))
            if st["interval"]:
                await asyncio.sleep(st["interval"])
        so = req.get("stream_options")
        STATS["include_usage"].append(isinstance(so, dict) and so.get("include_usage") is True)
        if STATS["include_usage"][-1]:  # as vLLM: one last event, no choices, the usage
            n = st["chunks"]
            usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
            ev = (
                b"data: %s\n\n"
                % json.dumps(
                    {
                        "id": "s",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                ).encode()
            )
            t.write(b"%x\r\n%s\r\n" % (len(ev), ev))
        ev = b"data: [DONE]\n\n"
        if st["split_done"]:  # [DONE] in two chunks, apart in time
            t.write(b"9\r\ndata: [DO\r\n")
            await asyncio.sleep(0.05)
            ev = ev[9:]
        if st["end_delay"]:  # the chunked terminator in a later segment, as a busy upstream's may come
            t.write(b"%x\r\n%s\r\n" % (len(ev), ev))
            await asyncio.sleep(st["end_delay"])
            t.write(b"0\r\n\r\n")
            return
        t.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(ev), ev))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--api-key", help="require it on /v1/* (as vLLM's --api-key); /health stays open")
    ap.add_argument("--key-header", default="authorization", help="the header that carries the key")
    ap.add_argument("--prefix", default="/v1", help="where the API lives (a provider's base URL path)")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    a = ap.parse_args()
    MODELS.extend(a.model or ["stub"])
    if a.api_key:
        API_KEY.append(a.api_key.encode())
    KEY_HEADER[0] = a.key_header.lower().encode()
    PREFIX[0] = a.prefix.rstrip("/")
    tls = None
    if a.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(a.tls_cert, a.tls_key)
    STATE.update(DEFAULTS)
    if uvloop is not None:
        uvloop.install()
    loop = asyncio.new_event_loop()
    server = loop.create_server(Handler, a.host, a.port, backlog=4096, reuse_address=True, ssl=tls)
    srv = loop.run_until_complete(server)
    print(f"stub listening on {a.host}:{a.port} pid {os.getpid()}", flush=True)
    loop.run_until_complete(srv.serve_forever())


if __name__ == "__main__":
    main()
