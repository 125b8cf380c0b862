"""Real vLLM model servers on the lab's LLM hosts, as systemd units from the catalog."""

import json
import subprocess

import lab_inventory
import testinfra

testinfra_hosts = lab_inventory.hosts("llm_servers")

REPLICAS = lab_inventory.served_models()


def _models(host) -> list[dict]:
    return lab_inventory.models_on(host.backend.get_hostname())


def http(host, path: str, port: int, body: dict | None = None, timeout: int = 120) -> dict:
    """An HTTP request made inside the lab host (its loopback), JSON in and out."""
    script = (
        "import json,sys,urllib.request as u;"
        "d=sys.argv[3].encode() if sys.argv[3] else None;"
        "r=u.Request('http://127.0.0.1:'+sys.argv[1]+sys.argv[2],data=d,headers={'Content-Type':'application/json'});"
        f"print(u.urlopen(r,timeout={timeout}).read().decode())"
    )
    cmd = host.run("python3 -c %s %s %s %s", script, str(port), path, json.dumps(body) if body else "")
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


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
        assert host.socket(f"tcp://0.0.0.0:{model['port']}").is_listening


def test_models_endpoint_lists_each_model(host):
    for model in _models(host):
        listed = [m["id"] for m in http(host, "/v1/models", model["port"])["data"]]
        assert listed == [model["name"]]


def test_smollm2_chat_completion_returns_text(host):
    reply = http(
        host,
        "/v1/chat/completions",
        11403,
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
    reply = http(host, "/v1/embeddings", 11404, {"model": "all-minilm-l6-v2", "input": ["hello world", "bonjour"]})
    vectors = [item["embedding"] for item in reply["data"]]
    assert len(vectors) == 2
    assert all(len(v) == 384 for v in vectors)
    norm = sum(x * x for x in vectors[0]) ** 0.5
    assert abs(norm - 1.0) < 1e-3  # L2-normalised, as sentence-transformers gives
