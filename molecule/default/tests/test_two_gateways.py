"""Two gateways behind a balancer enforce one key's rate limit and token budget together: their
token buckets and budget counts live in the lab's Redis (on citadel-monitor-01)."""

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from email.message import Message

import lab_inventory
import lab_ops
from lab_ops import CACHE

GATEWAYS = lab_inventory.names("llm_gateway")

LIMITED_KEY = (CACHE / "lab-gateway-limited-key").read_text().strip()
BUDGET_KEY = (CACHE / "lab-gateway-budget-key").read_text().strip()  # lab-budget: 100 tokens a day
REDIS_PASSWORD = (CACHE / "lab-redis-password").read_text().strip()
# The lab-limited key (inventory/lab/group_vars/llm_gateway/gateway.yml).
RPM, BURST = 6, 10


def embed(gateway: str, key: str = LIMITED_KEY, text: str = "hello") -> tuple[int, Message, dict]:
    return call(gateway, "/v1/embeddings", key, {"model": "all-minilm-l6-v2", "input": text})


def call(gateway: str, path: str, key: str, body: dict | None = None) -> tuple[int, Message, dict]:
    req = urllib.request.Request(
        f"{lab_inventory.gateway_url(gateway)}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30, context=lab_inventory.gateway_tls(gateway)) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_a_budget_spent_through_one_gateway_is_refused_by_the_other():
    """lab-budget spends its 100 tokens a day through the first gateway, and the second (HTTPS,
    another host) refuses it with OpenAI's insufficient_quota; the admin view shows it spent on
    both; a reset on one gives it back on both."""
    first, second = GATEWAYS
    assert call(first, "/admin/budgets/reset", lab_ops.ADMIN_KEY, {"key": "lab-budget"})[0] == 200
    text = "The quick brown fox jumps over the lazy dog."
    answers = []
    while not answers or answers[-1][0] == 200:
        assert len(answers) < 40, "100 tokens never ran out"
        answers.append(embed(first, BUDGET_KEY, text))
    spent = sum(body["usage"]["prompt_tokens"] for status, _, body in answers if status == 200)
    assert spent >= 100, answers
    assert len(answers) > 1, answers
    status, headers, body = answers[-1]
    assert (status, body["error"]["code"], body["error"]["type"]) == (429, "insufficient_quota", "insufficient_quota")
    status, headers, body = embed(second, BUDGET_KEY, text)
    assert (status, body["error"]["code"]) == (429, "insufficient_quota"), body
    # the count it names: at least the budget, at most what was spent (a charge lands just after its answer)
    used = int(body["error"]["message"].split("daily token budget (")[1].split(" of 100 tokens)")[0])
    assert 100 <= used <= spent, body
    assert 1 <= int(headers["Retry-After"]) <= 86400
    status, _, view = call(second, "/admin/budgets", lab_ops.ADMIN_KEY)
    assert status == 200
    (budget,) = [b for b in view["budgets"] if b["key"] == "lab-budget"]
    assert budget["exhausted"] is True
    assert 100 <= budget["used_today"] <= spent, budget
    assert call(second, "/admin/budgets/reset", lab_ops.ADMIN_KEY, {"key": "lab-budget"})[0] == 200
    assert embed(first, BUDGET_KEY, text)[0] == 200


def redis(*command: str) -> str:
    """redis-cli on the Redis host; the password goes in through the environment only."""
    (host,) = lab_inventory.names("redis")
    run = subprocess.run(
        ["podman", "exec", "--env", "REDISCLI_AUTH", host, "redis-cli", "--no-auth-warning", *command],
        env={**os.environ, "REDISCLI_AUTH": REDIS_PASSWORD},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return run.stdout.strip()


def test_one_keys_limit_is_enforced_across_both_gateways():
    """40 requests of one key, alternating between the gateways: together they get the key's
    burst plus what refilled meanwhile — one bucket — where two in-memory limiters would give
    twice the burst. Both gateways answer, the rest are OpenAI-shaped 429s with Retry-After."""
    assert len(GATEWAYS) == 2, GATEWAYS
    redis("DEL", "citadel:rl:lab-limited")  # a full bucket to start from
    t0 = time.monotonic()
    answers = [(gw, *embed(gw)) for _ in range(20) for gw in GATEWAYS]
    elapsed = time.monotonic() - t0
    ok = [gw for gw, status, _, _ in answers if status == 200]
    limited = [(gw, h, b) for gw, status, h, b in answers if status == 429]
    allowed = BURST + math.ceil(elapsed * RPM / 60)
    print(f"40 requests over two gateways in {elapsed:.1f} s: {len(ok)} x 200, {len(limited)} x 429 (bucket {allowed})")
    assert len(ok) + len(limited) == len(answers), [a[:2] for a in answers]
    assert BURST <= len(ok) <= allowed, f"{len(ok)} requests passed; one shared bucket allows {BURST}-{allowed}"
    assert set(ok) == set(GATEWAYS), f"200s came from {set(ok)} only"
    assert {gw for gw, _, _ in limited} == set(GATEWAYS)
    for _, headers, body in limited:
        assert int(headers["Retry-After"]) >= 1
        assert (body["error"]["type"], body["error"]["code"]) == ("rate_limit_error", "rate_limited"), body
    assert redis("EXISTS", "citadel:rl:lab-limited") == "1"


def test_redis_refuses_clients_without_the_password_and_no_config_holds_it():
    """Redis refuses a client without the password; each gateway's config names the password file,
    which only root and the gateway's group read, and never holds the password."""
    (host,) = lab_inventory.names("redis")
    anonymous = subprocess.run(
        ["podman", "exec", host, "redis-cli", "GET", "x"], capture_output=True, text=True, timeout=30
    )
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr
    for gw in GATEWAYS:
        on = lab_ops.host(gw)
        config = on.file("/etc/citadel/gateway/config.yml").content_string
        assert "redis_password_file: /etc/citadel/gateway/secrets/redis-password" in config
        assert REDIS_PASSWORD not in config
        secret = on.file("/etc/citadel/gateway/secrets/redis-password")
        assert (secret.user, secret.group, secret.mode) == ("root", "citadel-gateway", 0o640)
