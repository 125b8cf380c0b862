"""Per-key token budgets per day and month: what a key spends is charged from the upstream's
usage, a spent budget is refused with OpenAI's insufficient_quota, across gateways through Redis,
and the admin API shows and resets it."""

from __future__ import annotations

import json
import time

import pytest
from citadel_gateway import budgets
from conftest import base_config, request, sha, wait_ready
from test_streams import raw_stream

ADMIN = "admin-key-budget-5555"


def _config(chat, embed, **over) -> dict:
    cfg = base_config([chat.url], [embed.url], **over)
    keys = cfg["auth"]["keys"]
    keys[1]["rpm"], keys[1]["burst"] = 100000, 10000  # "limited": the budget is what stops it here
    keys[1]["daily_tokens"] = 25  # a chat of the stub costs 7 + 3 tokens
    keys.append({"name": "monthly", "sha256": sha("monthly-key-6"), "monthly_tokens": 15})
    keys.append({"name": "admin", "sha256": sha(ADMIN), "models": [], "admin": True})
    return cfg


def _admin(g, method: str, path: str, body=None):
    s, _, raw = request(g.port, method, path, body, {"Authorization": f"Bearer {ADMIN}"})
    return s, json.loads(raw)


def _refused(g, key="limited") -> dict:
    s, h, body = g.chat(key=key)
    assert s == 429, (s, body)
    assert 1 <= int(h["retry-after"]) <= 31 * 86400
    return json.loads(body)["error"]


def test_a_spent_daily_budget_is_refused_with_insufficient_quota_and_can_be_reset(stubs, gateway):
    chat, embed = stubs(["chat-a"]), stubs(["embed-a"])
    g = gateway(_config(chat, embed))
    wait_ready(g)
    assert [g.chat(key="limited")[0] for _ in range(2)] == [200, 200]  # 20 of 25 tokens
    status, events, clean = raw_stream(g.port, {"model": "chat-a", "messages": [], "stream": True}, key="limited")
    assert (status, clean) == (200, True)  # a stream is charged too (its usage was asked for): 20 + 7 + 3
    err = _refused(g)
    assert err == {
        "message": "key 'limited' has used its daily token budget (30 of 25 tokens); it renews at 00:00 UTC",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
    assert g.chat(key="ops")[0] == 200, "a key without a budget is not limited"
    posts = chat.stats()["posts"]
    _refused(g)
    assert chat.stats()["posts"] == posts, "a refused request never reaches the upstream"
    metrics = g.request("GET", "/metrics", key=None)[2].decode()
    assert 'llm_rejections_total{model="chat-a",reason="budget_exhausted"} 2' in metrics

    s, view = _admin(g, "GET", "/admin/budgets")
    assert s == 200
    assert view["day"] == budgets.period().day
    by_key = {b["key"]: b for b in view["budgets"]}
    assert by_key["limited"] == {"key": "limited", "daily_tokens": 25, "used_today": 30, "monthly_tokens": None,
                                 "used_this_month": 30, "exhausted": True}  # fmt: skip
    assert set(by_key) == {"limited", "monthly"}, "only keys with a budget"
    assert _admin(g, "POST", "/admin/budgets/reset", {"key": "ops"})[0] == 404
    assert _admin(g, "POST", "/admin/budgets/reset", {"key": "limited"})[1]["used_today"] == 0
    assert g.chat(key="limited")[0] == 200
    s, _, _ = request(g.port, "GET", "/admin/budgets", None, {"Authorization": "Bearer ops-key-1"})
    assert s == 403, "not for a key without admin: true"


def test_a_monthly_budget(stubs, gateway):
    chat, embed = stubs(["chat-a"]), stubs(["embed-a"])
    g = gateway(_config(chat, embed))
    wait_ready(g)
    assert g.chat(key="monthly-key-6")[0] == 200  # 10 of 15
    assert g.chat(key="monthly-key-6")[0] == 200  # 20: the request in flight may overshoot once
    assert "monthly token budget (20 of 15 tokens)" in _refused(g, "monthly-key-6")["message"]


def test_a_budget_spent_on_one_gateway_is_refused_on_the_other(stubs, gateway, redis_server):
    chat, embed = stubs(["chat-a"]), stubs(["embed-a"])
    shared = {"backend": "redis", "redis_url": redis_server}
    g1 = gateway(_config(chat, embed, rate_limit=shared), "gw1")
    g2 = gateway(_config(chat, embed, rate_limit=shared), "gw2")
    wait_ready(g1)
    wait_ready(g2)
    assert [g1.chat(key="limited")[0] for _ in range(3)] == [200, 200, 200]  # 30 of 25, all through gw1
    deadline = time.monotonic() + 5  # the charges reach Redis just after each answer
    while g2.chat(key="limited")[0] == 200:
        assert time.monotonic() < deadline, "gw2 never saw what gw1 charged"
    assert "daily token budget" in _refused(g2)["message"]
    s, view = _admin(g2, "GET", "/admin/budgets")
    assert {b["key"]: b["used_today"] for b in view["budgets"]}["limited"] >= 30
    assert _admin(g1, "POST", "/admin/budgets/reset", {"key": "limited"})[0] == 200
    assert g2.chat(key="limited")[0] == 200, "a reset on one gateway is a reset on all"


@pytest.mark.parametrize("bad", [-1, "lots", 1.5])
def test_a_bad_budget_is_a_config_error(stubs, gateway, bad):
    chat, embed = stubs(["chat-a"]), stubs(["embed-a"])
    cfg = _config(chat, embed)
    cfg["auth"]["keys"][1]["daily_tokens"] = bad
    from citadel_gateway import config

    with pytest.raises(config.ConfigError, match=r"auth.keys\[1\].daily_tokens"):
        config.parse(cfg)


def test_periods_renew_at_utc_midnight_and_on_the_first():
    p = budgets.period(1798761599.5)  # 2026-12-31 23:59:59.5 UTC
    assert (p.day, p.month, p.day_ends, p.month_ends) == ("20261231", "202612", 1798761600, 1798761600)
    p = budgets.period(1798761600)  # 2027-01-01 00:00
    assert (p.day, p.month) == ("20270101", "202701")
    assert p.month_ends - 1798761600 == 31 * 86400
