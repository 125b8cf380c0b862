"""A second server kind behind the gateway: llama.cpp's own server (roles/llama_cpp_server) on
citadel-llm-01, serving SmolLM2's GGUF as the catalog's smollm2-gguf, a model at a base_url.
Software we did not write, reached as any OpenAI-compatible server would be: its key from the
catalog's keys, a /v1/models probe, its own retry bound, and SmolLM2 on vLLM as its fallback."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import lab_inventory
import lab_ops
import openai
import pytest
from lab_ops import API_KEY
from probe import Probe

MODEL = "smollm2-gguf"
FALLBACK = "smollm2-135m"
HOST = "citadel-llm-01"
GATEWAYS = lab_inventory.names("llm_gateway")
ENTRY = next(m for m in lab_inventory.models() if m["name"] == MODEL)
SERVER = next(s for s in lab_inventory.hostvars(HOST)["llama_cpp_server_models"] if s["name"] == MODEL)
UNIT = f"citadel-llama-{MODEL}.service"
KEY = lab_inventory.model_api_key(MODEL)


@pytest.fixture(scope="module")
def client() -> openai.OpenAI:
    return openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=API_KEY, timeout=60, max_retries=0)


def _direct(path: str, key: str | None) -> int:
    """Status of a GET to the llama.cpp server itself, from this machine (the lab controller may)."""
    req = urllib.request.Request(ENTRY["base_url"].removesuffix("/v1") + path)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_catalog_entry_is_served_by_llama_cpp_not_vllm():
    assert ENTRY["kind"] == "external"
    assert ENTRY["replicas"] == []  # installed by no vllm role, dialled at its base_url
    llm = lab_ops.host(HOST)
    assert llm.service(UNIT).is_running
    assert llm.file(f"/etc/systemd/system/vllm-{MODEL}.service").exists is False
    out = llm.run("systemctl show -p ExecStart --value %s", UNIT).stdout
    assert "/opt/citadel/llama-cpp/bin/llama-server" in out
    assert KEY not in out  # a file, never the key on the command line
    # the real server wants its key: without it 401, with it its model list
    assert _direct("/v1/models", None) == 401
    assert _direct("/v1/models", KEY) == 200


def test_chat_and_streamed_chat_through_the_gateway(client):
    answer = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert "x-citadel-model" not in answer.headers  # set only when another model answered: llama.cpp did
    body = answer.parse()
    assert body.choices[0].message.content.strip()
    assert body.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("name", GATEWAYS)
def test_the_key_is_in_no_rendered_config_and_no_log(name):
    gw = lab_ops.host(name)
    config = gw.file("/etc/citadel/gateway/config.yml").content_string
    assert KEY not in config
    assert f"upstream_api_key_file: /etc/citadel/gateway/upstream-keys/{MODEL}" in config
    key_file = gw.file(f"/etc/citadel/gateway/upstream-keys/{MODEL}")
    assert (key_file.user, key_file.mode) == ("root", 0o640)
    assert KEY not in gw.run("journalctl -u citadel-gateway --no-pager -n 5000").stdout
    llm = lab_ops.host(HOST)
    assert KEY not in llm.run("journalctl -u %s --no-pager -n 5000", UNIT).stdout


def test_backend_down_fails_over_to_the_vllm_model_under_load():
    """llama.cpp stopped under a probe load of smollm2-gguf: every request that starts after it is
    gone succeeds (the gateway's fallback, SmolLM2 on vLLM, answers). Only a request in flight when
    the server died may fail, and never as a complete answer. Once it is back the gateway uses it
    again."""
    llm = lab_ops.host(HOST)
    try:
        with Probe(API_KEY, model=MODEL, max_s=120, max_requests=400) as probe:
            time.sleep(3)
            stopping = time.monotonic() - probe._t0
            # llama-server lets its requests finish; systemd kills it at TimeoutStopSec (10 s)
            assert llm.run("systemctl stop %s", UNIT).rc == 0
            stopped = time.monotonic() - probe._t0
            time.sleep(12)  # past a health round (5 s): the gateway knows it is gone
        print(f"llama.cpp down under load: {probe.report}")
        r = probe.report
        assert min(r.ok.values()) > 0, str(r)
        # Only what was in flight when systemd killed it (one request per probe worker) may fail,
        # and visibly: a 502 (both its attempts, the model's retry_attempts, reached the dying
        # server before the fallback was due; seen in CI) or a stream cut (never a clean end).
        assert len(r.failed) <= 2, str(r)
        for t, kind, what in r.failed:
            assert stopping <= t <= stopped + 5, str(r)  # + the retry backoff on a busy machine
            visible = what.startswith("HTTP 502") or (
                kind == "stream" and ("IncompleteRead" in what or "error event" in what)
            )
            assert visible, str(r)
        assert _gateway_chat() == (200, FALLBACK)
    finally:
        llm.run("systemctl start %s", UNIT)
    deadline = time.monotonic() + 60
    while _gateway_chat() != (200, None):
        assert time.monotonic() < deadline, "the gateway never went back to llama.cpp"
        time.sleep(2)


def _gateway_chat() -> tuple[int, str | None]:
    """The status of a chat of MODEL, and the model that answered if it was another one."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    req = urllib.request.Request(
        "http://127.0.0.1:8000/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return r.status, r.headers.get("x-citadel-model")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-citadel-model")
