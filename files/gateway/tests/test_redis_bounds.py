"""RedisLimiter is bounded: a blackholed Redis (connects but never answers, or connects hang)
costs a take() about connect_timeout_s + timeout_s and raises, so rate_limit.on_redis_error
decides; a real redis-server still works with the timeouts set.

Elapsed times are asserted only as upper bounds (5 s, against 0.2-0.4 s bounds): an unbounded
client would wait for ever (the kernel never answers for a blackhole).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest
from citadel_gateway.limits import LimiterTimeout, RedisLimiter
from conftest import base_config, wait_ready

UPPER = 5.0


@pytest.fixture
def full_backlog():
    """A listener that never accepts, with listen(0) and its accept queue filled, so that a new
    connect() hangs (SYNs dropped). Skipped, saying why, on a kernel where the connect does not hang."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fill: list[socket.socket] = []
    try:
        for _ in range(2):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fill.append(s)
        probe = socket.socket()
        probe.settimeout(1.0)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            pass  # the connect hangs: what the test needs
        except OSError as e:
            pytest.skip(f"connect to a full-backlog listener failed at once ({e}) instead of hanging")
        else:
            pytest.skip("this kernel completes connects beyond a full listen(0) backlog: cannot blackhole the connect")
        finally:
            probe.close()
        yield port
    finally:
        for s in fill:
            s.close()
        lsock.close()


def take_timed(url: str, connect_timeout_s: float, timeout_s: float, n: int = 1):
    """n takes on one limiter: [(exception or result, seconds)]."""

    async def main():
        lim = RedisLimiter(url, connect_timeout_s=connect_timeout_s, timeout_s=timeout_s)
        out = []
        try:
            for _ in range(n):
                t = time.monotonic()
                try:
                    res = await lim.take("k", 1, 3)
                except Exception as e:  # noqa: BLE001 - the test looks at what it was
                    res = e
                out.append((res, time.monotonic() - t))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lim.close(), UPPER)
        return out

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_redis_that_accepts_and_never_answers_times_out(silent):
    results = take_timed(f"redis://127.0.0.1:{silent.port}/0", 0.2, 0.2, n=3)
    for res, took in results:
        assert isinstance(res, LimiterTimeout), res
        assert isinstance(res, TimeoutError)
        assert took < UPPER, f"take() waited {took:.1f} s"
    assert silent.held, "the connect succeeded: this was the reply timeout"


def test_redis_whose_connects_hang_times_out(full_backlog):
    results = take_timed(f"redis://127.0.0.1:{full_backlog}/0", 0.2, 0.2, n=2)
    for res, took in results:
        assert isinstance(res, LimiterTimeout), res
        assert took < UPPER, f"take() waited {took:.1f} s"


def test_real_redis_still_works_with_the_timeouts_set(redis_server):
    # 2 s, not the 0.25 s default: the assertion is on the answers, on a machine that may be busy
    results = take_timed(redis_server, 2.0, 2.0, n=4)
    waits = [res for res, _ in results]
    assert waits[:3] == [0.0, 0.0, 0.0], waits
    assert isinstance(waits[3], float), waits[3]
    assert waits[3] > 0, "burst 3 at 1 rpm: the fourth take waits"


@pytest.mark.parametrize("policy", ["reject", "allow"])
def test_gateway_with_a_blackholed_redis_answers_at_once(stubs, gateway, silent, policy):
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    rl = {
        "backend": "redis",
        "redis_url": f"redis://127.0.0.1:{silent.port}/0",
        "on_redis_error": policy,
        "timeout_s": 0.2,
        "connect_timeout_s": 0.2,
    }
    g = gateway(base_config([a.url], [e.url], rate_limit=rl))
    wait_ready(g)
    for _ in range(2):
        t = time.monotonic()
        status, headers, body = g.chat(key="limited")  # http.client gives up after 10 s
        took = time.monotonic() - t
        assert took < UPPER, f"answered after {took:.1f} s"
        if policy == "reject":
            assert status == 503, body
            assert json.loads(body)["error"]["code"] == "rate_limiter_unavailable"
        else:
            assert status == 200, body
    assert "redis did not answer" in g.logs()


def test_redis_password_comes_from_the_password_file(stubs, gateway, redis_server_with_password, tmp_path):
    """The redis role sets requirepass; the gateway reads the password from
    rate_limit.redis_password_file (never from the config itself): with it, a real gateway enforces
    the key's limit through Redis; without it Redis refuses and on_redis_error: reject answers."""
    from conftest import REDIS_PASSWORD

    [(refused, _)] = take_timed(redis_server_with_password, 2.0, 2.0)
    assert "auth" in str(refused).lower(), refused
    secret = tmp_path / "redis-password"
    secret.write_text(REDIS_PASSWORD + "\n")
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    rl = {"backend": "redis", "redis_url": redis_server_with_password, "on_redis_error": "reject", "timeout_s": 2.0}
    g = gateway(base_config([a.url], [e.url], rate_limit={**rl, "redis_password_file": str(secret)}))
    wait_ready(g)
    assert [g.chat(key="limited")[0] for _ in range(4)] == [200, 200, 200, 429]  # burst 3
    assert REDIS_PASSWORD not in g.cfg_path.read_text() + g.logs()
    without = gateway(base_config([a.url], [e.url], rate_limit=rl), name="without")
    wait_ready(without)
    status, _, body = without.chat(key="limited")
    assert status == 503, body
    assert json.loads(body)["error"]["code"] == "rate_limiter_unavailable"


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ({"redis_password_file": "/nonexistent/redis-password"}, "cannot read /nonexistent/redis-password"),
        ({"redis_url": "redis://:hunter2-secret@127.0.0.1:6379/0"}, "holds credentials"),
    ],
)
def test_redis_credentials_are_checked(tmp_path, setting, error):
    from citadel_gateway.config import ConfigError, parse

    cfg = base_config(["http://127.0.0.1:9"], ["http://127.0.0.1:9"])
    cfg["rate_limit"] = {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0", **setting}
    with pytest.raises(ConfigError, match=error) as e:
        parse(cfg)
    assert "hunter2" not in str(e.value)
