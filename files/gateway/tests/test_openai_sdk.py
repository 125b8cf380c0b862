"""The official openai SDK (pinned in requirements-test.lock), unmodified, against the gateway."""

from __future__ import annotations

import openai
import pytest
from conftest import KEYS


@pytest.fixture
def client(cl):
    g, *_ = cl
    return openai.OpenAI(base_url=f"http://127.0.0.1:{g.port}/v1", api_key=KEYS["ops"], max_retries=0, timeout=10)


def test_chat(client):
    r = client.chat.completions.create(
        model="chat-a", messages=[{"role": "user", "content": "capital of France?"}], max_tokens=4
    )
    assert r.choices[0].message.content == "Paris."
    assert r.usage.completion_tokens == 3


def test_streaming(client):
    stream = client.chat.completions.create(model="chat-a", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "tok0 tok1 tok2 "


def test_embeddings(client):
    r = client.embeddings.create(model="embed-a", input=["a", "b", "c"])
    assert len(r.data) == 3
    assert len(r.data[0].embedding) == 4


def test_models_list(client):
    assert {m.id for m in client.models.list()} == {"chat-a", "chatty", "embed-a"}


def test_errors_are_sdk_exceptions(client, cl):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="chat-a", messages=[{"role": "user", "content": "x"}])
