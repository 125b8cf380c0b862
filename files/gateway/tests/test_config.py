"""Config validation: the schema the llm_gateway role renders; errors name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from citadel_gateway import config as C

GOOD = """
server: {host: 0.0.0.0, port: 8000, max_body_bytes: 4194304, access_log: true, drain_seconds: 30}
auth:
  required: true
  keys:
    - {name: ops, sha256: "%s", models: ["*"], rpm: 1000, burst: 100}
rate_limit: {backend: memory, redis_url: null}
health: {interval_s: 30, timeout_s: 5}
circuit: {failures: 5, cooldown_s: 60}
retry: {attempts: 3, backoff_base_s: 0.05, backoff_max_s: 1.0}
upstream: {connect_timeout_s: 10, total_timeout_s: 30}
queue: {max_inflight: 64, max_waiting: 256, wait_timeout_s: 10}
models:
  - name: smollm2-135m
    aliases: [smollm2]
    capabilities: [chat, completion]
    tier: lightweight
    latency_ms: {avg: 1500, p95: 3000}
    timeout_s: 120
    max_inflight: 16
    max_waiting: 64
    fallbacks: []
    replicas: [http://citadel-llm-01:11403, http://citadel-llm-02:11403]
  - name: all-minilm-l6-v2
    capabilities: [embedding]
    tier: embedding
    replicas: [http://citadel-llm-02:11404]
""" % ("a" * 64)


def doc(**patch):
    d = yaml.safe_load(GOOD)
    for path, value in patch.items():
        node = d
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if value is KeyError:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return d


def test_documented_example_parses():
    cfg = C.parse(yaml.safe_load(GOOD))
    m = cfg.models[0]
    assert m.replicas == ("http://citadel-llm-01:11403", "http://citadel-llm-02:11403")
    assert (m.timeout_s, m.max_inflight, m.max_waiting, m.aliases) == (120, 16, 64, ("smollm2",))
    assert cfg.auth.required
    assert cfg.auth.keys[0].rpm == 1000
    assert cfg.models[1].tier == "embedding"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"server__prot": 1}, "server.prot: unknown key"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"server__port": "8000"}, "server.port: expected an integer"),
        ({"health__interval_s": 0}, "health.interval_s: must be > 0"),
        ({"server__access_log": "yes"}, "server.access_log: expected true or false"),
        ({"models__0__replicas": ["citadel-llm-01:11403"]}, "models[0].replicas[0]: expected a URL"),
        ({"models__0__replicas": []}, "models[0].replicas: at least one"),
        ({"models__0__capabilities": ["chat", "vision"]}, "models[0].capabilities[1]: 'vision' is not one of"),
        ({"models__0__tier": "medium"}, "models[0].tier"),
        ({"models__0__fallbacks": ["nope"]}, "models[0].fallbacks[0]: 'nope' is not another configured model"),
        ({"models__0__latency_ms": {"avg": 1, "p99": 2}}, "models[0].latency_ms.p99: unknown key"),
        ({"models__1__name": "smollm2"}, "alias 'smollm2' already used"),
        ({"models__0__name": KeyError}, "models[0].name: required"),
        ({"auth__keys": []}, "auth.required: true but auth.keys is empty"),
        ({"auth__keys__0__sha256": "secret-key"}, "auth.keys[0].sha256: expected 64 hex"),
        ({"auth__keys__0__models": ["gpt-4"]}, "auth.keys[0].models[0]: unknown model 'gpt-4'"),
        ({"rate_limit__backend": "redis"}, "rate_limit.redis_url: required"),
        ({"rate_limit__backend": "memcached"}, "rate_limit.backend: 'memcached' is not one of"),
        ({"rate_limit__on_redis_error": "maybe"}, "rate_limit.on_redis_error: 'maybe' is not one of allow, reject"),
        ({"queue__max_inflight": 0}, "queue.max_inflight: must be >= 1"),
        ({"models": []}, "models: at least one model"),
    ],
)
def test_errors_name_the_key(patch, message):
    with pytest.raises(C.ConfigError) as e:
        C.parse(doc(**patch))
    assert message in str(e.value)


def test_auth_off_only_without_keys():
    d = doc(auth={"required": False, "keys": []})
    assert C.parse(d).auth.required is False
    with pytest.raises(C.ConfigError, match="auth.required: false only when auth.keys is empty"):
        C.parse(doc(auth__required=False))


def test_backends_flag_infers_embedding_and_replicas():
    cfg = C.from_backends(
        [
            "smollm2-135m=http://127.0.0.1:11403",
            "smollm2-135m=http://127.0.0.1:11413",
            "all-minilm-l6-v2=http://127.0.0.1:11404",
        ],
        [],
    )
    chat, emb = cfg.models
    assert len(chat.replicas) == 2
    assert chat.capabilities == ("chat", "completion")
    assert emb.capabilities == ("embedding",)
    assert emb.tier == "embedding"
    assert cfg.auth.required is False
    with pytest.raises(C.ConfigError, match="expected MODEL=URL"):
        C.from_backends(["smollm2"], [])


def test_check_config_cli(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("interval_s: 30", "interval_s: thirty"))
    ok = subprocess.run(
        [sys.executable, "-m", "citadel_gateway", "--check-config", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    ko = subprocess.run(
        [sys.executable, "-m", "citadel_gateway", "--check-config", str(bad)], capture_output=True, text=True
    )
    assert ko.returncode == 1
    assert "health.interval_s: expected a number" in ko.stderr
    nope = subprocess.run(
        [sys.executable, "-m", "citadel_gateway", "--check-config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert nope.returncode == 1
    assert "cannot read" in nope.stderr
