"""Client mistakes are 4xx, a queued client that leaves gives its place up, attempts are
bounded and counted, and upstream request ids are the gateway's own."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

from conftest import KEYS, base_config, wait_ready


def test_pathological_json_is_a_400_not_a_500(cl):
    g, *_ = cl
    for body in (b"[" * 200000, b'{"model": "chat-a", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", b"\xff\xfe{}"):
        s, _, data = g.request("POST", "/v1/chat/completions", body)
        assert s == 400, data[:200]
        assert json.loads(data)["error"]["code"] == "invalid_json"
    assert g.chat()[0] == 200


def _log_line(g, rid: str) -> dict:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        for x in g.logs().splitlines():
            if f'"{rid}"' in x:
                return json.loads(x)
        time.sleep(0.1)
    raise AssertionError(f"no access log line for {rid}")


def test_a_queued_client_that_resets_gives_its_place_up(stubs, gateway):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    cfg = base_config([a.url], [e.url], health={"interval_s": 60, "timeout_s": 2})
    cfg["models"][0].update(max_inflight=1, max_waiting=1)
    g = gateway(cfg)
    wait_ready(g)
    a.control(delay=1.5)
    first = []
    t = threading.Thread(target=lambda: first.append(g.chat()[0]))
    t.start()
    while a.stats()["posts"] < 2:  # the probe + the first request hold the only slot
        time.sleep(0.05)
    body = json.dumps({"model": "chat-a", "messages": []}).encode()
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['ops']}\r\n"
            f"X-Request-Id: queued-then-gone\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    time.sleep(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    s.close()
    assert _log_line(g, "queued-then-gone")["status"] == 499  # it left the queue at once
    status, _, data = g.chat()  # the queue's one place is free again: waits, then served
    assert status == 200, data
    t.join()
    assert first == [200]


def test_an_upstream_that_closes_before_answering_gets_exactly_the_configured_attempts(stubs, gateway):
    a, b, e = stubs(["chat-a"]), stubs(["chat-a"]), stubs(["embed-a"])
    cfg = base_config([a.url, b.url], [e.url], health={"interval_s": 60, "timeout_s": 2})
    cfg["retry"] = {"attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.02}
    cfg["circuit"] = {"failures": 100, "cooldown_s": 60}
    g = gateway(cfg)
    wait_ready(g)
    for s_ in (a, b):
        s_.reset()
        s_.control(close=True)
    status, _, data = g.chat(headers={"X-Request-Id": "closing-upstream"})
    assert status == 502, data
    assert a.stats()["posts"] + b.stats()["posts"] == 3
    assert _log_line(g, "closing-upstream")["attempts"] == 3


def test_upstream_request_ids_are_the_gateways_own_one_per_attempt(stubs, gateway):
    a, b, e = stubs(["chat-a"]), stubs(["chat-a"]), stubs(["embed-a"])
    g = gateway(base_config([a.url, b.url], [e.url], health={"interval_s": 60, "timeout_s": 2}))
    wait_ready(g)
    for s_ in (a, b):
        s_.reset()
    a.control(status=503, count=1)
    b.control(status=503, count=1)
    status, h, _ = g.chat(headers={"X-Request-Id": "client-chosen-1"})
    assert status == 200
    assert h["x-request-id"] == "client-chosen-1", "the client's id is echoed"
    sent = a.stats()["request_ids"] + b.stats()["request_ids"]
    assert len(sent) == 3
    assert len(set(sent)) == 3, "one id per attempt"
    assert "client-chosen-1" not in sent
    rec = _log_line(g, "client-chosen-1")
    assert rec["upstream_request_id"] in sent
    assert rec["attempts"] == 3
