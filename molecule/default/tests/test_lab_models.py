"""Real vLLM model servers on the lab's LLM hosts, as systemd units from the catalog."""

import json
import subprocess

import lab_inventory
import testinfra

testinfra_hosts = lab_inventory.hosts("llm_servers")

REPLICAS = lab_inventory.served_models()


def _models(host) -> list[dict]:
    return lab_inventory.models_on(host.backend.get_hostname())


# An HTTP request made inside a lab host: argv port, path, JSON body ('' for a GET), key ('' for
# none); prints the status, a space, the body. The key goes through argv: the lab's own host.
_REQUEST = (
    "import sys,urllib.request as u,urllib.error as e;"
    "d=sys.argv[3].encode() if sys.argv[3] else None;"
    "h={'Content-Type':'application/json'};"
    "h.update({'Authorization':'Bearer '+sys.argv[4]} if sys.argv[4] else {});"
    "r=u.Request('http://'+sys.argv[5]+':'+sys.argv[1]+sys.argv[2],data=d,headers=h)\n"
    "try: x=u.urlopen(r,timeout=float(sys.argv[6])); print(x.status, x.read().decode())\n"
    "except e.HTTPError as x: print(x.code, x.read().decode())"
)


def raw_http(host, path: str, port: int, body: dict | None, key: str, address: str | None = None, timeout=120):
    """(status, body text) of a request from inside lab host ``host`` to ``address``:``port`` (by
    default the host's own address, the one its model servers bind)."""
    address = address or lab_inventory.address(host.backend.get_hostname())
    cmd = host.run(
        "python3 -c %s %s %s %s %s %s %s",
        _REQUEST,
        str(port),
        path,
        json.dumps(body) if body else "",
        key,
        address,
        str(timeout),
    )
    assert cmd.rc == 0, cmd.stderr
    status, _, text = cmd.stdout.partition(" ")
    return int(status), text


def http(host, path: str, port: int, model: str, body: dict | None = None) -> dict:
    """A request to ``model``'s server on the host itself, with the model's key; JSON out."""
    status, text = raw_http(host, path, port, body, lab_inventory.model_api_key(model))
    assert status == 200, text
    return json.loads(text)


def test_catalog_places_replicas_as_declared():
    placed = sorted((host, model["name"]) for host, model in REPLICAS)
    assert placed == [
        ("citadel-llm-01", "smollm2-135m"),
        ("citadel-llm-02", "all-minilm-l6-v2"),
        ("citadel-llm-02", "smollm2-135m"),
    ]


def test_service_user(host):
    user = host.user("vllm")
    assert user.exists
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000


def test_weights_readable_only_by_service_group(host):
    for model in _models(host):
        d = host.file(f"/opt/models/{model['name']}")
        assert (d.user, d.group, d.mode) == ("root", "vllm", 0o750)
        sums = host.run(f"cd /opt/models/{model['name']} && sha256sum --check --quiet SHA256SUMS")
        assert sums.rc == 0, sums.stdout


def test_units_active_as_service_user_with_hardening(host):
    for model in _models(host):
        svc = host.service(f"vllm-{model['name']}.service")
        assert svc.is_enabled
        assert svc.is_running
        props = svc.systemd_properties
        assert props["User"] == "vllm"
        pid = props["MainPID"]
        assert host.run(f"ps -o user= -p {pid}").stdout.strip() == "vllm"
        assert props["Restart"] == "always"
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectControlGroups": "yes",
            "RestrictNamespaces": "yes",
            "SystemCallArchitectures": "native",
        }.items():
            assert props[key] == value, key
        assert props["TimeoutStartUSec"] == "15min"
        memory_max = {"4G": 4 * 1024**3, "2G": 2 * 1024**3}[model["resources"]["memory_max"]]
        assert int(props["MemoryMax"]) == memory_max
        assert props["CPUQuotaPerSecUSec"] == {"200%": "2s", "100%": "1s"}[model["resources"]["cpu_quota"]]


def _in_unit_namespace(host, pid: str, command: str) -> subprocess.CompletedProcess:
    # Entering another process's namespaces needs more privilege than a plain
    # `podman exec` carries; the probe itself only touches files.
    return subprocess.run(
        [
            "podman",
            "exec",
            "--privileged",
            host.backend.get_hostname(),
            "nsenter",
            "-t",
            pid,
            "-m",
            "-S",
            "0",
            "sh",
            "-c",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_sandbox_is_applied_not_only_configured(host):
    # systemctl show prints ProtectSystem=strict even where systemd could not
    # build the namespace (podman without SYS_ADMIN): look from inside the running unit.
    for model in _models(host):
        name = model["name"]
        pid = host.service(f"vllm-{name}.service").systemd_properties["MainPID"]
        outside = _in_unit_namespace(host, pid, "touch /opt/citadel/sandbox-probe")
        assert outside.returncode != 0
        assert "Read-only file system" in outside.stderr
        cache = _in_unit_namespace(
            host, pid, f"touch /var/cache/citadel/vllm/{name}/probe && rm /var/cache/citadel/vllm/{name}/probe"
        )
        assert cache.returncode == 0, cache.stderr
        # PrivateTmp: the unit's /tmp is not the host's.
        host.run("touch /tmp/host-side-probe")
        assert _in_unit_namespace(host, pid, "test ! -e /tmp/host-side-probe").returncode == 0
        # Empty capability bounding set, in effect.
        status = host.file(f"/proc/{pid}/status").content_string
        assert "CapBnd:\t0000000000000000" in status


def test_ports_listen(host):
    for model in _models(host):
        # on the replica's address only (the host's citadel_address), not on every interface
        address = lab_inventory.replica(host.backend.get_hostname(), model)["address"]
        assert host.socket(f"tcp://{address}:{model['port']}").is_listening
        assert not host.socket(f"tcp://127.0.0.1:{model['port']}").is_listening


def test_models_endpoint_lists_each_model(host):
    for model in _models(host):
        listed = [m["id"] for m in http(host, "/v1/models", model["port"], model["name"])["data"]]
        assert listed == [model["name"]]


def test_smollm2_chat_completion_returns_text(host):
    reply = http(
        host,
        "/v1/chat/completions",
        11403,
        "smollm2-135m",
        {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16,
            "temperature": 0,
        },
    )
    text = reply["choices"][0]["message"]["content"]
    assert text.strip(), reply
    assert reply["usage"]["completion_tokens"] > 0


def test_minilm_embeddings_are_384_dimensional():
    (embedding_host,) = lab_inventory.hosts("embedding_servers")
    host = testinfra.get_host(embedding_host)
    body = {"model": "all-minilm-l6-v2", "input": ["hello world", "bonjour"]}
    reply = http(host, "/v1/embeddings", 11404, "all-minilm-l6-v2", body)
    vectors = [item["embedding"] for item in reply["data"]]
    assert len(vectors) == 2
    assert all(len(v) == 384 for v in vectors)
    norm = sum(x * x for x in vectors[0]) ** 0.5
    assert abs(norm - 1.0) < 1e-3  # L2-normalised, as sentence-transformers gives


def test_a_model_server_refuses_requests_without_its_key():
    """From the monitoring host (neither gateway nor model host): no key, a wrong key and another
    model's key are all 401 on /v1/*, the model's own key is served; /metrics stays open for
    Prometheus."""
    (monitor,) = lab_inventory.names("monitoring")
    probe = testinfra.get_host(f"podman://{monitor}")
    for host, model in REPLICAS:
        address = lab_inventory.replica(host, model)["address"]  # what the gateways and Prometheus dial
        path = "/v1/embeddings" if "embedding" in model["capabilities"] else "/v1/completions"
        body = (
            {"model": model["name"], "input": "hi"}
            if "embedding" in model["capabilities"]
            else {"model": model["name"], "prompt": "hi", "max_tokens": 1}
        )
        others = [m["name"] for _, m in REPLICAS if m["name"] != model["name"]]
        for key in ("", "not-the-key", lab_inventory.model_api_key(others[0])):
            status, text = raw_http(probe, path, model["port"], body, key, address, timeout=30)
            assert status == 401, (host, model["name"], key[:4], text)
        status, text = raw_http(probe, path, model["port"], body, lab_inventory.model_api_key(model["name"]), address)
        assert status == 200, text
        status, text = raw_http(probe, "/metrics", model["port"], None, "", address, timeout=30)
        assert status == 200
        assert "vllm:" in text
