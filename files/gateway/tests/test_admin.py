"""The admin API: list, drain and undrain replicas (rolling restarts), its auth, and draining
across a reload. Replicas on distinct loopback hosts (127.0.0.1, 127.0.0.2) so a host selector
means something; every wait is on a condition, never a fixed sleep."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time

import pytest
from conftest import Stub, base_config, module_cluster, sha, wait_ready
from test_streams import raw_stream

ADMIN = "admin-key-4444"
H1, H2 = "127.0.0.1", "127.0.0.2"


def _config(chat_urls, embed_urls, **over) -> dict:
    cfg = base_config(chat_urls, embed_urls, **over)
    cfg["auth"]["keys"].append({"name": "admin", "sha256": sha(ADMIN), "models": ["*"], "admin": True})
    return cfg


def call(g, method: str, path: str, body=None, key: str | None = ADMIN) -> tuple[int, dict]:
    s, _, data = g.request(method, path, body, key=key)
    return s, json.loads(data)


def wait_for(what, timeout: float = 15.0):
    """``what()`` once it is truthy (polled), else TimeoutError."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = what()
        if v:
            return v
        time.sleep(0.02)
    raise TimeoutError(f"condition never held: {what}")


def outstanding(g, url: str) -> int:
    return call(g, "GET", f"/admin/replicas?url={url}")[1]["outstanding"]


def upstream_ids(stub: Stub) -> int:
    """Proxied requests the stub got (health probes carry no X-Request-Id, so they don't count)."""
    return len(stub.stats()["request_ids"])


def metric(g, name: str, **labels) -> float | None:
    for ln in g.request("GET", "/metrics", key=None)[2].decode().splitlines():
        if ln.startswith(f"{name}{{") and all(f'{k}="{v}"' in ln for k, v in labels.items()):
            return float(ln.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def admin_cluster(tmp_path_factory):
    a, b, e = made = [Stub(["chat-a"], host=H1), Stub(["chat-a"], host=H2), Stub(["embed-a"], host=H2)]
    # one health round (wait_ready): no probe takes a steered answer meant for a request
    cfg = _config([a.url, b.url], [e.url], health={"interval_s": 60, "timeout_s": 2})
    yield from module_cluster(tmp_path_factory, made, cfg)


@pytest.fixture
def ac(admin_cluster):
    g, *stubs = admin_cluster
    for s in stubs:
        s.reset()
    for m in ("chat-a", "embed-a"):
        assert call(g, "POST", "/admin/undrain", {"model": m})[0] == 200
    return admin_cluster


def test_list_names_every_replica_and_the_config_version(ac):
    g, a, b, e = ac
    s, d = call(g, "GET", "/admin/replicas")
    assert s == 200, d
    assert d["config_version"] == hashlib.sha256(g.cfg_path.read_bytes()).hexdigest(), "what sha256sum prints"
    assert d["outstanding"] == 0
    assert [(r["model"], r["url"], r["host"]) for r in d["replicas"]] == [
        ("chat-a", a.url, H1),
        ("chat-a", b.url, H2),
        ("embed-a", e.url, H2),
    ]
    first = d["replicas"][0]
    assert first == {
        "model": "chat-a",
        "url": a.url,
        "host": H1,
        "replica": f"{H1}:{a.port}",
        "healthy": True,
        "reason": None,
        "circuit": "closed",
        "outstanding": 0,
        "draining": False,
    }
    # filters: the same selector as drain (an alias names its model)
    assert [r["url"] for r in call(g, "GET", f"/admin/replicas?host={H2}")[1]["replicas"]] == [b.url, e.url]
    assert [r["url"] for r in call(g, "GET", "/admin/replicas?model=chatty")[1]["replicas"]] == [a.url, b.url]
    s, d = call(g, "GET", "/admin/replicas?host=citadel-llm-99")
    assert s == 404, "a typo in a poll must not read as 'nothing outstanding'"
    assert d["error"]["code"] == "replica_not_found"


def test_only_admin_keys_may_call_it(ac):
    g, a, b, e = ac
    for method, path, body in (
        ("GET", "/admin/replicas", None),
        ("POST", "/admin/drain", {"host": H2}),
        ("POST", "/admin/undrain", {"host": H2}),
    ):
        s, d = call(g, method, path, body, key=None)
        assert (s, d["error"]["type"], d["error"]["code"]) == (401, "authentication_error", "missing_api_key")
        s, d = call(g, method, path, body, key="not-a-key")
        assert (s, d["error"]["code"]) == (401, "invalid_api_key")
        s, d = call(g, method, path, body, key="ops")
        assert (s, d["error"]["type"], d["error"]["code"]) == (403, "permission_error", "admin_required")
        assert "'ops' is not an admin key" in d["error"]["message"]
    assert not any(r["draining"] for r in call(g, "GET", "/admin/replicas")[1]["replicas"])


def test_bad_bodies_are_400_and_no_match_404(ac):
    g, *_ = ac
    for body in (
        b"{not json",
        b"[]",
        {},
        {"hots": H1},
        {"host": H1, "url": f"http://{H1}:1"},
        {"host": 7},
        {"host": " "},
        {"url": "citadel-llm-01:11403"},
        {"url": "http://citadel-llm-01:99999"},
    ):
        s, d = call(g, "POST", "/admin/drain", body)
        assert s == 400, body
        assert d["error"]["type"] == "invalid_request_error"
    for body, msg in (
        ({"host": "citadel-llm-99"}, "no replica matches host 'citadel-llm-99'"),
        ({"url": f"http://{H1}:1"}, "no replica matches url"),
        ({"host": H1, "model": "embed-a"}, "no replica matches host '127.0.0.1', model 'embed-a'"),
        ({"model": "nope"}, "model 'nope' does not exist"),
    ):
        s, d = call(g, "POST", "/admin/undrain", body)
        assert s == 404, body
        assert msg in d["error"]["message"]
    assert g.request("GET", "/admin/drain", key=ADMIN)[0] == 405
    assert not any(r["draining"] for r in call(g, "GET", "/admin/replicas")[1]["replicas"])


def test_drain_lets_an_inflight_stream_finish_and_sends_the_rest_elsewhere(ac):
    g, a, b, e = ac
    a.control(hold_after=1)  # a stream sends one event, then waits until released
    b.control(hold_after=1)
    assert call(g, "POST", "/admin/drain", {"url": b.url})[0] == 200  # so the first stream lands on a
    held = [_stream_in_background(g)]
    try:
        wait_for(lambda: outstanding(g, a.url) == 1)
        assert call(g, "POST", "/admin/undrain", {"url": b.url})[1]["changed"] == 1
        s, d = call(g, "POST", "/admin/drain", {"host": H1})
        assert s == 200, d
        assert (d["action"], d["changed"], d["outstanding"]) == ("drain", 1, 1), "the stream is in flight"
        assert [(r["url"], r["draining"], r["outstanding"]) for r in d["replicas"]] == [(a.url, True, 1)]
        on_a = upstream_ids(a)
        # two held streams on b: least-outstanding alone would now choose a (1 < 2)
        held += [_stream_in_background(g), _stream_in_background(g)]
        wait_for(lambda: outstanding(g, b.url) == 2)
        statuses = [g.chat()[0] for _ in range(20)]
        assert statuses == [200] * 20
        b.control(hold_after=None)
        streams = [raw_stream(g.port, _stream_body()) for _ in range(3)]
        assert [(st, ev[-1], clean) for st, ev, clean in streams] == [(200, b"[DONE]", True)] * 3
        assert upstream_ids(a) == on_a, "nothing new went to the draining replica"
        assert upstream_ids(b) == 2 + 20 + 3
        assert outstanding(g, a.url) == 1, "the held stream is still in flight"
    finally:
        a.control(hold_after=None)
        b.control(hold_after=None)
        for t, _ in held:
            t.join(30)
    for _, result in held:
        status, events, clean = result[0]
        assert (status, clean, events[-1], len(events)) == (200, True, b"[DONE]", 3 + 1), "finished cleanly"
    wait_for(lambda: outstanding(g, a.url) == 0)  # what a rolling restart polls for
    assert metric(g, "llm_requests_total", model="chat-a", status="502") is None
    assert metric(g, "llm_requests_total", model="chat-a", status="503") is None


def _stream_in_background(g) -> tuple[threading.Thread, list]:
    result: list = []
    t = threading.Thread(target=lambda: result.append(raw_stream(g.port, _stream_body())))
    t.start()
    return t, result


def _stream_body() -> dict:
    return {"model": "chat-a", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_drain_every_replica_of_a_model_answers_503_until_undrained(ac):
    g, a, b, e = ac
    s, d = call(g, "POST", "/admin/drain", {"host": H2})  # a host with replicas of two models
    assert (s, d["changed"]) == (200, 2)
    assert [(r["model"], r["url"], r["draining"]) for r in d["replicas"]] == [
        ("chat-a", b.url, True),
        ("embed-a", e.url, True),
    ]
    assert call(g, "POST", "/admin/drain", {"host": H2})[1]["changed"] == 0, "idempotent"
    s, h, body = g.request("POST", "/v1/embeddings", {"model": "embed-a", "input": "x"})
    err = json.loads(body)["error"]
    assert (s, err["message"], err["type"], err["code"]) == (
        503,
        "all replicas of embed-a are draining",
        "service_unavailable",
        "model_draining",
    )
    assert h["retry-after"] == "5"
    assert [g.chat()[0] for _ in range(5)] == [200] * 5, "chat-a still has a"
    s, d = call(g, "POST", "/admin/drain", {"host": H1, "model": "chatty"})  # narrowed to one model
    assert [r["url"] for r in d["replicas"]] == [a.url]
    s, _, body = g.chat(model="chatty")
    assert (s, json.loads(body)["error"]["message"]) == (503, "all replicas of chat-a are draining")
    assert g.request("GET", "/ready", key=None)[0] == 200, "draining is not ill health: /ready stays up"
    assert metric(g, "llm_rejections_total", model="chat-a", reason="draining") >= 1
    assert (upstream_ids(a), upstream_ids(b), upstream_ids(e)) == (5, 0, 0)

    s, d = call(g, "POST", "/admin/undrain", {"model": "chat-a"})
    assert (s, d["action"], d["changed"]) == (200, "undrain", 2)
    assert all(r["healthy"] and not r["draining"] for r in d["replicas"])
    assert [g.chat()[0] for _ in range(4)] == [200] * 4
    assert call(g, "POST", "/admin/undrain", {"url": e.url + "/"})[1]["changed"] == 1
    assert g.request("POST", "/v1/embeddings", {"model": "embed-a", "input": "x"})[0] == 200


def test_retries_skip_a_draining_replica(ac):
    g, a, b, e = ac
    call(g, "POST", "/admin/drain", {"url": b.url})
    a.control(status=503, count=1)  # the first send fails; the retry must not go to b
    before = metric(g, "llm_retries_total", model="chat-a") or 0
    assert g.chat()[0] == 200
    assert metric(g, "llm_retries_total", model="chat-a") == before + 1
    assert (upstream_ids(a), upstream_ids(b)) == (2, 0)


def test_metrics_and_registry_show_draining(ac):
    g, a, b, e = ac
    lb = f"{H2}:{b.port}"
    assert metric(g, "llm_replica_draining", model="chat-a", replica=lb) == 0
    call(g, "POST", "/admin/drain", {"url": b.url})
    assert metric(g, "llm_replica_draining", model="chat-a", replica=lb) == 1
    assert metric(g, "llm_replica_draining", model="chat-a", replica=f"{H1}:{a.port}") == 0
    assert metric(g, "llm_replica_draining", model="embed-a", replica=f"{H2}:{e.port}") == 0
    reg = {m["name"]: m for m in call(g, "GET", "/v1/models/registry")[1]["models"]}
    assert [(r["url"], r["draining"]) for r in reg["chat-a"]["replicas"]] == [(a.url, False), (b.url, True)]
    plain = {m["name"]: m for m in call(g, "GET", "/v1/models/registry", key="ops")[1]["models"]}
    assert all("draining" not in r and "url" not in r for r in plain["chat-a"]["replicas"]), "admin view only"
    call(g, "POST", "/admin/undrain", {"url": b.url})
    assert metric(g, "llm_replica_draining", model="chat-a", replica=lb) == 0


def test_draining_survives_a_reload(stubs, gateway):
    a = stubs(["chat-a", "chat-r"], host=H1)
    b = stubs(["chat-a", "chat-r"], host=H2)
    e = stubs(["embed-a"], host=H2)
    cfg = _config([a.url, b.url], [e.url])
    g = gateway(cfg)
    wait_ready(g)

    def reload(edit) -> None:
        edit(cfg)
        g.write(cfg)
        want = hashlib.sha256(g.cfg_path.read_bytes()).hexdigest()
        g.signal(signal.SIGHUP)
        wait_for(lambda: call(g, "GET", "/admin/replicas")[1]["config_version"] == want)

    def draining() -> dict:
        return {(r["model"], r["url"]): r["draining"] for r in call(g, "GET", "/admin/replicas")[1]["replicas"]}

    assert call(g, "POST", "/admin/drain", {"url": b.url})[1]["changed"] == 1
    b.control(health=503)  # health checks go on while it drains, so an undrain finds the truth
    wait_for(lambda: not call(g, "GET", f"/admin/replicas?url={b.url}")[1]["replicas"][0]["healthy"])
    b.control(health=200)
    wait_for(lambda: call(g, "GET", f"/admin/replicas?url={b.url}")[1]["replicas"][0]["healthy"])
    reload(lambda c: c["models"][0].update(aliases=["chatty", "new-alias"]))
    assert draining()[("chat-a", b.url)] is True
    assert [g.chat(model="new-alias")[0] for _ in range(5)] == [200] * 5, "the reload took effect"
    assert upstream_ids(b) == 0

    version = call(g, "GET", "/admin/replicas")[1]["config_version"]
    g.cfg_path.write_text("health: {interval_s: soon}\n")
    g.signal(signal.SIGHUP)
    wait_for(lambda: "config reload failed" in g.logs())
    assert call(g, "GET", "/admin/replicas")[1]["config_version"] == version, "an invalid file changes nothing"
    assert draining()[("chat-a", b.url)] is True

    reload(lambda c: c["models"][0].update(name="chat-r"))  # renamed: its replicas are new to it
    assert draining() == {("chat-r", a.url): False, ("chat-r", b.url): True, ("embed-a", e.url): False}
    reload(lambda c: c["models"][0].update(replicas=[a.url]))  # b leaves the config …
    assert draining() == {("chat-r", a.url): False, ("embed-a", e.url): False}
    reload(lambda c: c["models"][0].update(replicas=[a.url, b.url]))  # … and comes back as new
    assert draining()[("chat-r", b.url)] is False


def test_admin_api_is_refused_while_auth_is_off(stubs, gateway):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    g = gateway(base_config([a.url], [e.url], auth={"required": False, "keys": []}))
    wait_ready(g)
    for key in (None, ADMIN):
        s, d = call(g, "POST", "/admin/drain", {"host": H1}, key=key)
        assert (s, d["error"]["code"]) == (403, "admin_requires_auth")
        assert call(g, "GET", "/admin/replicas", key=key)[0] == 403
    assert g.chat(key=None)[0] == 200


def test_a_model_whose_replicas_all_drain_goes_to_its_fallback(stubs, gateway):
    a, f, e = stubs(["chat-a"], host=H1), stubs(["chat-b"], host=H2), stubs(["embed-a"], host=H2)
    cfg = _config([a.url], [e.url])
    cfg["models"][0]["fallbacks"] = ["chat-b"]
    cfg["models"].append({"name": "chat-b", "capabilities": ["chat"], "replicas": [f.url]})
    g = gateway(cfg)
    wait_ready(g)
    call(g, "POST", "/admin/drain", {"host": H1})
    s, h, _ = g.chat()
    assert (s, h["x-citadel-model"]) == (200, "chat-b")
    assert upstream_ids(a) == 0
    call(g, "POST", "/admin/drain", {"model": "chat-b"})
    s, _, body = g.chat()
    assert (s, json.loads(body)["error"]["message"]) == (503, "all replicas of chat-a are draining")
    assert upstream_ids(f) == 1
