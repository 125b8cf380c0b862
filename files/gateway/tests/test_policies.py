"""The retry policy and the failed-auth throttle as units (no server)."""

from __future__ import annotations

import hashlib

from citadel_gateway import auth
from citadel_gateway import config as C
from citadel_gateway.retry import RetryPolicy


def test_every_send_counts_and_only_5xx_worth_another_replica_are_retried():
    p = RetryPolicy(C.Retry(attempts=3, backoff_base_s=0.1, backoff_max_s=0.3), rand=lambda: 1.0)
    assert [p.may_send(n) for n in range(5)] == [True, True, True, False, False]
    assert p.retry_status(500, 1)
    assert p.retry_status(502, 2)
    assert p.retry_status(503, 1)
    assert not p.retry_status(503, 3), "no attempt left: the answer goes to the client"
    for status in (200, 400, 404, 429, 504):
        assert not p.retry_status(status, 1)
    assert [p.backoff(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]


def test_backoff_is_jittered_between_half_and_all_of_the_step():
    low = RetryPolicy(C.Retry(attempts=3, backoff_base_s=0.2, backoff_max_s=1), rand=lambda: 0.0)
    assert low.backoff(1) == 0.1


def _cfg(**kw) -> tuple[C.Auth, auth.KeyRing]:
    key = C.ApiKey("k", hashlib.sha256(b"good-key-123456789").hexdigest())
    a = C.Auth(required=True, keys=(key,), **kw)
    return a, auth.KeyRing(a.keys)


def test_a_key_ring_remembers_only_tokens_that_matched_a_key():
    _, keys = _cfg()
    assert keys.find(b"good-key-123456789").name == "k"
    assert keys.find(b"good-key-123456789").name == "k"  # now by its bytes, unhashed
    for i in range(100):
        assert keys.find(b"wrong-%d" % i) is None
    assert list(keys.matched) == [b"good-key-123456789"], "a wrong token is never remembered"
    assert keys.find(b"good-key-12345678") is None
    assert keys.find(b"good-key-1234567890") is None


def test_failed_authentications_are_throttled_per_address_and_refill():
    now = [0.0]
    t = auth.FailedAuthThrottle(clock=lambda: now[0])
    cfg, keys = _cfg(failed_rpm=60, failed_burst=3)
    bad = [(b"authorization", b"Bearer wrong")]
    good = [(b"x-api-key", b"good-key-123456789")]
    assert [auth.authenticate(cfg, keys, t, bad, "10.0.0.9").status for _ in range(3)] == [401, 401, 401]
    blocked = auth.authenticate(cfg, keys, t, bad, "10.0.0.9")
    assert blocked.status == 429
    assert blocked.headers == ((b"retry-after", b"1"),)
    assert auth.authenticate(cfg, keys, t, good, "10.0.0.9").status == 429, "blocked means blocked"
    assert auth.authenticate(cfg, keys, t, good, "10.0.0.8").name == "k", "other addresses are unaffected"
    now[0] += 1.0  # 60/min: one more try a second
    assert auth.authenticate(cfg, keys, t, good, "10.0.0.9").name == "k"


def test_keys_are_read_the_same_from_either_header_and_compared_as_bytes():
    cfg, keys = _cfg()
    t = auth.FailedAuthThrottle()
    assert auth.authenticate(cfg, keys, t, [(b"authorization", b"bearer  good-key-123456789 ")], None).name == "k"
    assert auth.authenticate(cfg, keys, t, [(b"authorization", b"Basic abc")], None) is auth.MISSING
    assert auth.authenticate(C.Auth(), auth.KeyRing(()), t, [], None) is None, "auth off"
    u = "ключ-0123456789abcdef"
    k = C.ApiKey("u", hashlib.sha256(u.encode()).hexdigest())
    assert auth.KeyRing([k]).find(u.encode()) is k
