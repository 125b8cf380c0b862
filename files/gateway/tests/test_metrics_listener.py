"""server.metrics_port: /metrics on a listener of its own (which a firewall can open to the
monitoring hosts alone) and nowhere else; nothing but /metrics on it."""

from __future__ import annotations

import json

import pytest
from citadel_gateway import config as C
from conftest import KEYS, Gateway, base_config, free_port, request, wait_port, wait_ready
from test_socket_activation import activated, listening_socket

BASE = {"models": [{"name": "m", "capabilities": ["chat"], "tier": "lightweight", "replicas": ["http://127.0.0.1:1"]}]}


def _metrics_gateway(tmp, stubs, **launch) -> tuple[Gateway, int, object]:
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    cfg = base_config([a.url], [e.url])
    mport = free_port()
    cfg["server"] = {"metrics_port": mport}
    g = activated(tmp, cfg, launch["sock"], "gw") if launch else Gateway(tmp, cfg)
    wait_port(mport, g.proc)
    wait_ready(g)
    return g, mport, a


def _not_found(status: int, body: bytes, path: str) -> None:
    assert status == 404, (status, body)
    err = json.loads(body)["error"]
    assert err["code"] == "not_found", err
    assert path in err["message"], err


def test_metrics_are_served_on_the_metrics_port_and_nowhere_else(stubs, tmp_path):
    g, mport, upstream = _metrics_gateway(tmp_path, stubs)
    try:
        assert g.chat()[0] == 200
        status, headers, body = request(mport, "GET", "/metrics")
        assert status == 200, (status, body)
        assert headers["content-type"].startswith("text/plain"), headers
        assert 'llm_requests_total{endpoint="chat",model="chat-a",status="200"} 1' in body.decode()

        # The API port no longer shows them, to any key.
        _not_found(*[g.request("GET", "/metrics")[i] for i in (0, 2)], "/metrics")
        _not_found(*[g.request("GET", "/metrics", key=None)[i] for i in (0, 2)], "/metrics")

        # The metrics port serves nothing else: no model call, no admin or health route, and the
        # request never reaches an upstream.
        served = upstream.stats()["posts"]
        chat = {"model": "chat-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        auth = {"Authorization": f"Bearer {KEYS['ops']}"}
        for method, path, body in (
            ("POST", "/v1/chat/completions", chat),
            ("GET", "/v1/models", None),
            ("GET", "/ready", None),
            ("POST", "/admin/drain", {"host": "127.0.0.1"}),
        ):
            status, _, answer = request(mport, method, path, body, auth)
            _not_found(status, answer, path)
        assert upstream.stats()["posts"] == served
        assert g.chat()[0] == 200  # the API port still serves
    finally:
        g.stop()


def test_under_socket_activation_the_metrics_listener_is_the_gateways_own(stubs, tmp_path):
    sock = listening_socket()
    try:
        g, mport, _ = _metrics_gateway(tmp_path, stubs, sock=sock)
        try:
            assert g.chat()[0] == 200
            assert request(mport, "GET", "/metrics")[0] == 200
            assert g.request("GET", "/metrics")[0] == 404
        finally:
            g.stop()
    finally:
        sock.close()


def test_a_metrics_port_already_taken_is_a_one_line_error(stubs, tmp_path):
    taken = listening_socket()
    try:
        a, e = stubs(["chat-a"]), stubs(["embed-a"])
        cfg = base_config([a.url], [e.url])
        cfg["server"] = {"metrics_port": taken.getsockname()[1]}
        with pytest.raises(RuntimeError, match="process exited with 4"):
            Gateway(tmp_path, cfg)
        log = (tmp_path / "gw.log").read_text()
        assert f"citadel-gateway: cannot listen on 127.0.0.1:{taken.getsockname()[1]}: " in log, log
    finally:
        taken.close()


def test_metrics_port_is_checked_with_the_config():
    with pytest.raises(C.ConfigError, match=r"server.metrics_port: 8000 must be a TCP port .* other than server.port"):
        C.parse({**BASE, "server": {"port": 8000, "metrics_port": 8000}})
    with pytest.raises(C.ConfigError, match="server.metrics_port: 70000 must be a TCP port"):
        C.parse({**BASE, "server": {"metrics_port": 70000}})
    with pytest.raises(C.ConfigError, match="server.metrics_port"):
        C.parse({**BASE, "server": {"metrics_port": "x"}})
    assert C.parse({**BASE, "server": {"metrics_port": 8001}}).server.metrics_port == 8001
    assert C.parse({**BASE, "server": {"metrics_port": None}}).server.metrics_port is None
