"""Models served by an OpenAI-compatible server the gateway did not start (a provider, Ollama,
llama.cpp, a cluster run elsewhere): a base URL with its own path, HTTPS verified by a CA, the
key in the header that server wants, a health probe that costs nothing, its own retry bound."""

from __future__ import annotations

import time

import openai
import pytest
from conftest import KEYS, base_config, wait_ready

KEY = "provider-key-0123456789abcdef"


def _config(tmp_path, chat_urls, embed_urls, **model) -> dict:
    cfg = base_config(chat_urls, embed_urls)
    f = tmp_path / "chat-a.upstream-key"
    f.write_text(KEY + "\n")
    cfg["models"][0].update({"upstream_api_key_file": str(f), **model})
    return cfg


@pytest.fixture
def provider(stubs, gateway, tmp_path):
    """chat-a at a provider-shaped URL: its API under /openai/v1, the key bare in `api-key`."""
    p = stubs(["chat-a"], api_key=KEY, extra=("--prefix", "/openai/v1", "--key-header", "api-key"))
    e = stubs(["embed-a"])
    g = gateway(_config(tmp_path, [p.url + "/openai/v1"], [e.url], upstream_api_key_header="api-key", probe="models"))
    wait_ready(g)
    return g, p


def test_a_base_url_with_a_path_and_a_key_header_serves_chat_and_streams(provider):
    g, p = provider
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{g.port}/v1", api_key=KEYS["ops"], max_retries=0)
    answer = client.chat.completions.create(model="chat-a", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    chunks = list(
        client.chat.completions.create(model="chat-a", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    st = p.stats()
    assert set(st["authorizations"]) == {KEY}  # bare, in api-key: what this server takes
    assert st["posts"] == 2  # under /openai/v1 (the stub answers nothing under /v1)
    assert "/health" not in st["gets"]


def test_the_models_probe_sends_no_request_to_the_model(provider):
    g, p = provider
    time.sleep(1.0)  # three probe rounds or more
    st = p.stats()
    assert st["gets"].get("/openai/v1/models", 0) >= 3
    assert st["posts"] == 0  # listing only: a paid provider is not charged for health checks
    assert g.chat()[0] == 200


def test_the_request_probe_sends_one_token_without_health(stubs, gateway, tmp_path):
    p = stubs(["chat-a"], api_key=KEY)
    g = gateway(_config(tmp_path, [p.url], [stubs(["embed-a"]).url], probe="request"))
    wait_ready(g)
    st = p.stats()
    assert st["posts"] >= 1
    assert "/v1/models" in st["gets"]
    assert "/health" not in st["gets"]


def test_a_wrong_key_header_leaves_the_backend_unready(stubs, gateway, tmp_path):
    p = stubs(["chat-a"], api_key=KEY, extra=("--key-header", "x-api-key"))
    g = gateway(_config(tmp_path, [p.url], [stubs(["embed-a"]).url], probe="models"))  # sends Authorization
    wait_ready(g, want=503)
    assert g.chat()[0] == 503


def test_the_models_retry_bound_counts_every_send(stubs, gateway, tmp_path):
    p = stubs(["chat-a"], api_key=KEY)
    g = gateway(_config(tmp_path, [p.url], [stubs(["embed-a"]).url], probe="models", retry_attempts=2))
    wait_ready(g)
    p.control(close=True)  # reads each request and closes without an answer
    status, _, body = g.chat()
    assert status == 502, body
    assert p.stats()["posts"] == 2  # the model's bound, not retry.attempts (3)


@pytest.fixture
def https_provider(stubs, pki):
    host = "127.0.0.1"
    return stubs(["chat-a"], host=host, api_key=KEY, extra=("--tls-cert", pki["cert"], "--tls-key", pki["key"]))


def test_an_https_backend_verified_by_its_ca(https_provider, stubs, gateway, tmp_path, pki):
    url = f"https://localhost:{https_provider.port}"  # the certificate names localhost and 127.0.0.1
    g = gateway(_config(tmp_path, [url], [stubs(["embed-a"]).url], probe="request", upstream_ca_file=pki["ca"]))
    wait_ready(g)
    assert g.chat()[0] == 200
    status, _, body = g.chat(stream=True)
    assert status == 200
    assert body.rstrip().endswith(b"data: [DONE]")


def test_an_https_backend_whose_certificate_is_not_trusted_is_never_used(https_provider, stubs, gateway, tmp_path):
    url = f"https://localhost:{https_provider.port}"  # no CA file: the system's CAs did not sign it
    g = gateway(_config(tmp_path, [url], [stubs(["embed-a"]).url], probe="models"))
    wait_ready(g, want=503)
    status, _, body = g.chat()
    assert status == 503, body
    assert "CERTIFICATE_VERIFY_FAILED" in g.logs()  # the replica's reason, in the gateway's log
