"""HTTPS on the gateway: a certificate and key named in the config, verified by clients that
trust its CA (the official openai SDK among them); plain HTTP is not served then."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time

import openai
import pytest
from citadel_gateway import config as C
from conftest import KEYS, Gateway, base_config, free_port


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, pki, shared_stubs):
    a, b, e = shared_stubs
    cfg = base_config([a.url, b.url], [e.url])
    cfg.setdefault("server", {}).update({"tls_cert_file": pki["cert"], "tls_key_file": pki["key"]})
    g = Gateway(tmp_path_factory.mktemp("gw-tls"), cfg)
    try:
        ctx = ssl.create_default_context(cafile=pki["ca"])
        end = time.monotonic() + 10
        while _https(g.port, ctx, "/ready")[0] != 200:
            assert time.monotonic() < end, "/ready never answered 200 over HTTPS"
            time.sleep(0.05)
        yield g, ctx
    finally:
        g.stop()


@pytest.fixture(scope="module")
def shared_stubs():
    from conftest import Stub

    made = [Stub(["chat-a"]), Stub(["chat-a"]), Stub(["embed-a"])]
    yield made
    for s in made:
        s.kill()


def _https(port: int, ctx: ssl.SSLContext, path: str, body: dict | None = None, key: str | None = None):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        c.request("POST" if body else "GET", path, body=json.dumps(body) if body else None, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    except OSError:
        return 0, b""
    finally:
        c.close()


def test_the_openai_sdk_works_over_https_trusting_the_ca(tls_cluster, pki):
    g, _ = tls_cluster
    # The SDK's own HTTP client class, told to trust the CA (as SSL_CERT_FILE would).
    with openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=pki["ca"])) as http_client:
        client = openai.OpenAI(base_url=f"https://127.0.0.1:{g.port}/v1", api_key=KEYS["ops"], max_retries=0,
                               timeout=10, http_client=http_client)  # fmt: skip
        r = client.chat.completions.create(model="chat-a", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].message.content == "Paris."
        stream = client.chat.completions.create(
            model="chat-a", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "tok0 tok1 tok2 "


def _handshake(port: int, ctx: ssl.SSLContext) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_cluster):
    g, _ = tls_cluster
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(g.port, ssl.create_default_context())


def test_plain_http_is_not_served_on_an_https_listener(tls_cluster):
    g, _ = tls_cluster
    c = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
    try:
        c.request("GET", "/ready")
        status = c.getresponse().status
    except (http.client.HTTPException, ConnectionError):
        status = None
    finally:
        c.close()
    assert status in (None, 400), status  # never a page served in the clear
    assert status != 200


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_below_1_2_is_refused(tls_cluster, pki):
    g, _ = tls_cluster
    ctx = ssl.create_default_context(cafile=pki["ca"])
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        _handshake(g.port, ctx)


def test_tls_files_are_checked_with_the_config(pki, tmp_path):
    base = {
        "models": [{"name": "m", "capabilities": ["chat"], "tier": "lightweight", "replicas": ["http://127.0.0.1:1"]}]
    }
    with pytest.raises(C.ConfigError, match="set both"):
        C.parse({**base, "server": {"tls_cert_file": pki["cert"]}})
    with pytest.raises(C.ConfigError, match="not a PEM certificate chain and its key"):
        C.parse({**base, "server": {"tls_cert_file": pki["cert"], "tls_key_file": pki["ca_key"]}})
    with pytest.raises(C.ConfigError, match=f"cannot read {tmp_path}/missing.pem"):
        C.parse({**base, "server": {"tls_cert_file": str(tmp_path / "missing.pem"), "tls_key_file": pki["key"]}})
    assert C.parse({**base, "server": {"tls_cert_file": pki["cert"], "tls_key_file": pki["key"]}}).server.tls_key_file
    assert C.parse({**base, "server": {"tls_cert_file": None, "tls_key_file": None}}).server.tls_cert_file is None


def test_the_metrics_listener_speaks_https_too(pki, shared_stubs, tmp_path):
    a, b, e = shared_stubs
    cfg = base_config([a.url, b.url], [e.url])
    mport = free_port()
    cfg["server"] = {"tls_cert_file": pki["cert"], "tls_key_file": pki["key"], "metrics_port": mport}
    g = Gateway(tmp_path, cfg)
    try:
        ctx = ssl.create_default_context(cafile=pki["ca"])
        status, body = _https(mport, ctx, "/metrics")
        assert status == 200, (status, body[:200])
        assert b"# TYPE llm_requests_total counter" in body
        assert _https(g.port, ctx, "/metrics")[0] == 404
    finally:
        g.stop()
