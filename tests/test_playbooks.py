"""site.yml parses against production; preflight stops bad input with the fix named."""

import hashlib
import json

import pytest
from conftest import REVISION


def test_site_syntax_against_production(ansible):
    out = ansible("ansible-playbook", "-i", "inventory/production", "site.yml", "--syntax-check")
    assert out.returncode == 0, out.stdout + out.stderr


def _model(name: str, port: int, **fields) -> dict:
    return {
        "name": name,
        "source": {"hf_repo": f"example/{name}", "revision": REVISION},
        "group": "llm_servers",
        "port": port,
        "capabilities": ["chat"],
        "tier": "lightweight",
        "latency_ms": {"avg": 500, "p95": 900},
        **fields,
    }


VALID_CATALOG = [_model("chat-a", 11400), _model("chat-b", 11401)]


def _preflight(ansible, *extra: str, catalog: list[dict] = VALID_CATALOG):
    return ansible(
        "ansible-playbook",
        "-i",
        "tests/inventory/preflight.yml",
        "playbooks/preflight.yml",
        "-e",
        json.dumps({"citadel_models": catalog}),
        *extra,
    )


def test_preflight_passes_with_a_valid_catalog(ansible):
    out = _preflight(ansible)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "changed=0" in out.stdout


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"host_tuning_thp_mode": "sometimes"},
            ["host_tuning_thp_mode", "never, madvise, always", "sometimes"],
        ),
        (
            {"host_tuning_nr_hugepages": 10_000_000},
            ["host_tuning_nr_hugepages=10000000", "Set host_tuning_nr_hugepages to at most"],
        ),
        (
            {"host_tuning_io_scheduler": "cfq"},
            ["host_tuning_io_scheduler", "mq-deadline", "cfq"],
        ),
        (
            {"host_tuning_sysctl_host_parameters": {"vm.swappiness": {"nested": 1}}},
            ["vm.swappiness", "host_tuning_sysctl_host_parameters"],
        ),
        (
            {"citadel_gateway_tls": True},
            ["citadel_gateway_tls is true on preflight-probe", "llm_gateway_tls_key", "citadel_gateway_tls: false"],
        ),
        (
            {"firewall_admin_sources": ["10.0.0.0/8", "admin-laptop"]},
            ["firewall_admin_sources", "Not addresses: ['admin-laptop']"],
        ),
    ],
)
def test_preflight_rejects_bad_input(ansible, extra, expected):
    out = _preflight(ansible, "-e", json.dumps(extra))
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    assert "changed=0" in out.stdout
    assert "failed=1" in out.stdout
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in preflight output:\n{out.stdout[-2000:]}"


@pytest.mark.parametrize(
    ("catalog", "expected"),
    [
        (
            [_model("chat-a", 11400), _model("chat-b", 11400)],
            ["models chat-a and chat-b both use port 11400 on preflight-probe"],
        ),
        (
            [_model("chat-a", 11400, capabilities=["chat", "telepathy"])],
            ["model chat-a", "telepathy", "chat, completion, embedding, code, reasoning"],
        ),
        (
            [{k: v for k, v in _model("chat-a", 11400).items() if k != "source"}],
            ["citadel_models entry chat-a lacks a field", "source"],
        ),
        (
            [_model("chat-a", 11400, source={"hf_repo": "example/chat-a", "revision": "main"})],
            ["model chat-a", "40-character commit hash"],
        ),
        (
            [_model("chat-a", 11400), _model("chat-b", 11401, aliases=["chat-a"])],
            ["names or aliases more than once: chat-a"],
        ),
        (
            [_model("chat-a", 11400, source={"path": "/nonexistent/chat-a"})],
            ["/nonexistent/chat-a/SHA256SUMS does not exist on the controller"],
        ),
    ],
)
def test_preflight_rejects_bad_catalogs(ansible, catalog, expected):
    out = _preflight(ansible, catalog=catalog)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in preflight output:\n{out.stdout[-2000:]}"


REDIS_PASSWORD = "preflight-redis-secret-0123456789"
TEST_KEY = {"name": "test", "key": "preflight-test-key-0123456789", "models": ["*"]}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"llm_gateway_api_keys": []},
            ["llm_gateway_auth_required=True with 0 API keys", "llm_gateway_auth_required: false"],
        ),
        (
            {"llm_gateway_api_keys": [{"name": "ops", "key": "short"}]},
            ["llm_gateway_api_keys entry ops", "at least 16 characters"],
        ),
        (
            {"llm_gateway_api_keys": [TEST_KEY, TEST_KEY]},
            ["llm_gateway_api_keys entry test needs a unique `name`", "Names in use: test, test"],
        ),
        (
            {"llm_gateway_api_keys": [{**TEST_KEY, "models": ["chat-a", "chat-z"]}]},
            ["API key test allows unknown models chat-z"],
        ),
        (
            {"llm_gateway_api_keys": [TEST_KEY]},
            ["preflight-probe has no admin key", "rolling restarts drain replicas", "admin: true"],
        ),
        (
            {"llm_gateway_rate_limit_backend": "redis"},
            ["llm_gateway_rate_limit_backend=redis", "redis://"],
        ),
        (
            {"llm_gateway_rate_limit_backend": "redis", "llm_gateway_redis_url": "redis://redis-host:6379/0"},
            ["set llm_gateway_redis_password", "from vault"],
        ),
        (
            {
                "llm_gateway_rate_limit_backend": "redis",
                "llm_gateway_redis_url": f"redis://:{REDIS_PASSWORD}@redis-host:6379/0",
                "llm_gateway_redis_password": REDIS_PASSWORD,
            },
            ["keep credentials out of llm_gateway_redis_url (now 'redis://***@redis-host:6379/0')"],
        ),
        (
            {"redis_password": "shortpw"},
            ["redis_password must be set, at least 16 characters", "llm_gateway_redis_password"],
        ),
        (
            {"postgresql_gateway_password": "shortpw"},
            ["postgresql_gateway_password must be set, at least 16 characters", "vault_postgresql_gateway_password"],
        ),
        (
            {"postgresql_report_password": "a password with spaces"},
            ["postgresql_report_password must be set", "without whitespace"],
        ),
        (
            {"postgresql_gateway_user": "Citadel-Gateway", "postgresql_usage_retention_days": 0},
            [
                "Citadel-Gateway, citadel_report) lower-case identifiers",
                "postgresql_usage_retention_days (0) at least 1 day",
            ],
        ),
        (
            {"llm_gateway_usage_password": ""},
            [
                "Usage rows go to 'postgresql://***@127.0.0.1:5432/citadel_usage'",
                "llm_gateway_usage_password must hold",
            ],
        ),
        (
            {"llm_gateway_usage_database_url": "postgresql://citadel_gateway:shortpw@db:5432/citadel_usage"},
            ["Usage rows go to 'postgresql://***@db:5432/citadel_usage'", "no password in it"],
        ),
        (
            {"postgresql_report_sources": ["admin-host.example"]},
            ["postgresql_report_sources has entries that are not IP addresses", "admin-host.example"],
        ),
    ],
)
def test_gateway_preflight_rejects_bad_settings(ansible, extra, expected):
    out = _preflight(ansible, "-e", json.dumps(extra))
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in preflight output:\n{out.stdout[-2000:]}"
    # No secret ever reaches the output.
    for secret in ("preflight-test-key-0123456789", REDIS_PASSWORD, "preflight-redis-password-0123", "shortpw",
                   "a password with spaces", "preflight-pg-gateway-password-0123"):  # fmt: skip
        assert secret not in out.stdout + out.stderr


def test_gateway_preflight_rejects_unknown_fallbacks(ansible):
    catalog = [_model("chat-a", 11400, gateway={"fallbacks": ["chat-z"]}), _model("chat-b", 11401)]
    out = _preflight(ansible, catalog=catalog)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    assert "model chat-a: gateway.fallbacks ['chat-z'] must name other models" in text


@pytest.mark.parametrize(
    "route",
    [{"first_byte_timout_s": 30}, {"chunk_gap_timeout_s": "soon"}, {"tokens_per_s": -1}],
    ids=["typo", "not-a-number", "negative"],
)
def test_gateway_preflight_rejects_bad_catalog_gateway_settings(ansible, route):
    out = _preflight(ansible, catalog=[_model("chat-a", 11400, gateway=route), _model("chat-b", 11401)])
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    assert "model chat-a: gateway:" in text
    assert "allowed keys are fallbacks, cache, routing, timeout_s" in text


@pytest.mark.parametrize(
    "keys",
    [
        {"chat-a": "preflight-model-key-chat-a-0123456789abcdef"},  # chat-b has none
        {"chat-a": "preflight-model-key-chat-a-0123456789abcdef", "chat-b": "too-short"},
        {"chat-a": "preflight-model-key-chat-a-0123456789abcdef", "chat-b": "has a space in it 0123456789abcdef"},
    ],
)
def test_preflight_names_the_models_without_an_api_key_never_a_key(ansible, keys):
    out = _preflight(ansible, "-e", json.dumps({"citadel_model_api_keys": keys}))
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "for: chat-b." in text  # the vllm role's check names the model ...
    assert "vault_citadel_model_api_keys" in text  # ... and the fix
    for key in keys.values():
        assert key not in text


EXTERNAL = {"name": "gguf", "base_url": "http://127.0.0.1:11405/v1", "capabilities": ["chat"], "tier": "lightweight",
            "latency_ms": {"avg": 500, "p95": 900}}  # fmt: skip


def test_preflight_passes_a_model_at_a_base_url_served_by_llama_cpp(ansible, tmp_path):
    binary, gguf = tmp_path / "llama-server", tmp_path / "m.gguf"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    gguf.write_bytes(b"GGUF")
    server = {"name": "gguf", "port": 11405, "gguf": str(gguf), "sha256": hashlib.sha256(b"GGUF").hexdigest()}
    extra = {"llama_cpp_server_models": [server], "llama_cpp_server_binary": str(binary)}
    out = _preflight(ansible, "-e", json.dumps(extra), catalog=[*VALID_CATALOG, EXTERNAL])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({"name": "nameless"}, "llama_cpp_server_models entry nameless on preflight-probe: it needs a catalog entry"),
        ({"port": 11400}, "that no catalog replica on this host uses (11400, 11401)"),
        ({"port": 11406}, "with base_url http://127.0.0.1:11406/v1"),
        ({"sha256": "0" * 64}, "GGUF files missing or not matching their sha256: gguf"),
    ],
)
def test_preflight_refuses_a_llama_cpp_server_that_does_not_match_the_catalog(ansible, tmp_path, server, expected):
    binary, gguf = tmp_path / "llama-server", tmp_path / "m.gguf"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    gguf.write_bytes(b"GGUF")
    good = {"name": "gguf", "port": 11405, "gguf": str(gguf), "sha256": hashlib.sha256(b"GGUF").hexdigest()}
    extra = {"llama_cpp_server_models": [{**good, **server}], "llama_cpp_server_binary": str(binary)}
    out = _preflight(ansible, "-e", json.dumps(extra), catalog=[*VALID_CATALOG, EXTERNAL])
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    assert expected in text, text[-3000:]


def test_preflight_names_a_base_url_model_without_a_key(ansible):
    keys = {m["name"]: f"preflight-model-key-{m['name']}-0123456789abcdef" for m in VALID_CATALOG}
    out = _preflight(ansible, "-e", json.dumps({"citadel_model_api_keys": {**keys, "gguf": "has space"}}),
                     catalog=[*VALID_CATALOG, EXTERNAL])  # fmt: skip
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    assert "has no usable key for gguf" in text
    assert "has space" not in text
