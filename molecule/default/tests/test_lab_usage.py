"""Usage through the lab gateway, from the real vLLM servers: every request's access-log line
carries the tokens vLLM reported, and a streamed client that did not ask for usage gets none."""

import json
import time
import uuid

import lab_inventory
import lab_ops
import openai
from lab_ops import API_KEY, CACHE

# the plain-HTTP gateway (the HTTPS one's clients are test_gateway_tls.py's)
GATEWAY = next(n for n in lab_inventory.names("llm_gateway") if lab_inventory.gateway_tls(n) is None)
LIMITED_KEY = (CACHE / "lab-gateway-limited-key").read_text().strip()  # may use all-minilm-l6-v2 only
PROMPT = [{"role": "user", "content": "Name three colours."}]


def _client(key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lab_inventory.gateway_url(GATEWAY)}/v1", api_key=key, timeout=120, max_retries=0)


def _rid() -> dict:
    return {"X-Request-Id": f"usage-{uuid.uuid4().hex[:12]}"}


def _log_lines(rids: set[str], timeout: float = 15) -> dict[str, dict]:
    """The gateway's access-log lines (journald) of these request ids."""
    on = lab_ops.host(GATEWAY)
    deadline = time.monotonic() + timeout
    while True:
        out = on.run("journalctl -u citadel-gateway.service -o cat --no-pager -n 5000 --grep usage-").stdout
        found = {}
        for ln in out.splitlines():
            if ln.startswith('{"ts"') and (rec := json.loads(ln))["request_id"] in rids:
                found[rec["request_id"]] = rec
        if len(found) == len(rids) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_every_request_logs_the_tokens_vllm_reported():
    """Two keys, two models, streamed and not: each request's line has the usage the client saw
    (a stream without include_usage: the same as the identical stream that asked for it)."""
    lab, limited = _client(API_KEY), _client(LIMITED_KEY)
    want: dict[str, tuple[str, str, int, int]] = {}  # rid -> (key, model, prompt, completion)

    h = _rid()
    r = lab.chat.completions.create(model="smollm2", messages=PROMPT, max_tokens=12, temperature=0, extra_headers=h)
    want[h["X-Request-Id"]] = ("lab", "smollm2-135m", r.usage.prompt_tokens, r.usage.completion_tokens)
    for client, name in ((lab, "lab"), (limited, "lab-limited")):
        h = _rid()
        e = client.embeddings.create(model="all-minilm-l6-v2", input=["one", "two"], extra_headers=h)
        want[h["X-Request-Id"]] = (name, "all-minilm-l6-v2", e.usage.prompt_tokens, 0)

    asked, plain = _rid(), _rid()
    chunks = list(
        lab.chat.completions.create(
            model="smollm2-135m",
            messages=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=asked,
        )
    )
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1, "a client that asked for usage gets it once"
    u = usages[0]
    want[asked["X-Request-Id"]] = ("lab", "smollm2-135m", u.prompt_tokens, u.completion_tokens)
    chunks = list(
        lab.chat.completions.create(
            model="smollm2-135m", messages=PROMPT, max_tokens=12, temperature=0, stream=True, extra_headers=plain
        )
    )
    assert chunks, "the stream arrived"
    assert all(c.usage is None for c in chunks), "the client did not ask for usage: it gets no usage chunk"
    assert all(c.choices for c in chunks), "no chunk without choices (the usage event) reached the client"
    want[plain["X-Request-Id"]] = ("lab", "smollm2-135m", u.prompt_tokens, u.completion_tokens)

    lines = _log_lines(set(want))
    assert set(lines) == set(want), f"lines for {sorted(lines)} of {sorted(want)}"
    got = {
        rid: (rec["key"], rec["model"], rec.get("prompt_tokens"), rec.get("completion_tokens"))
        for rid, rec in lines.items()
    }
    assert got == want
    assert all(lines[r]["ttft_ms"] > 0 for r in (asked["X-Request-Id"], plain["X-Request-Id"]))
    assert {rec["status"] for rec in lines.values()} == {200}
