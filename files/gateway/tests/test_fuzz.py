"""Hypothesis over malformed inputs: the gateway never answers 500 to a client mistake."""

from __future__ import annotations

import json

from conftest import request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["model", "stream", "messages", "input", "prompt", "max_tokens"]),
        json_values | st.sampled_from(["chat-a", "embed-a", "auto", "chatty", ""]),
        max_size=5,
    ).map(lambda d: json.dumps(d).encode()),
)
paths = st.sampled_from(
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/models/registry", "/ready", "/x"]
)
methods = st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH"])
header_values = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=methods,
    path=paths,
    body=bodies,
    auth=st.one_of(st.none(), st.just("Bearer ops-key-1"), header_values.map(lambda v: "Bearer " + v)),
    task=st.one_of(st.none(), header_values),
    priority=st.one_of(st.none(), st.sampled_from(["speed", "quality", "balanced"]), header_values),
    rid=st.one_of(st.none(), header_values),
)
def test_never_500(cl, method, path, body, auth, task, priority, rid):
    g, *_ = cl
    h = {}
    for k, v in (("Authorization", auth), ("X-Task", task), ("X-Priority", priority), ("X-Request-Id", rid)):
        if v is not None:
            h[k] = v
    s, headers, data = request(g.port, method, path, body if method != "GET" else None, h)
    assert s < 500 or s in (502, 503, 504), (s, data)
    if s >= 400:
        assert "error" in json.loads(data), data
