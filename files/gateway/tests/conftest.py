"""Fixtures: real processes on free loopback ports (steerable stub upstreams, the gateway, redis)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
KEYS = {"ops": "ops-key-1", "limited": "limited-key-2", "embed-only": "embed-key-3"}


def _port_range() -> range | None:
    """``CITADEL_TEST_PORTS=lo-hi`` (the Makefile gives each suite run side by side its own
    range, below the kernel's ephemeral ports): a port handed out here is then never one that
    another suite, or any process's outgoing connection, takes between our bind test and the
    child's bind. Unset: the kernel picks (fine for one suite alone)."""
    spec = os.environ.get("CITADEL_TEST_PORTS")
    if not spec:
        return None
    lo, hi = (int(p) for p in spec.split("-"))
    return range(lo, hi + 1)


_PORTS = iter(_port_range() or ())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        if _port_range() is None:
            s.bind((host, 0))
            return s.getsockname()[1]
        for port in _PORTS:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
        raise RuntimeError(f"CITADEL_TEST_PORTS={os.environ['CITADEL_TEST_PORTS']} has no free port left")


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def request(port: int, method: str, path: str, body=None, headers=None, timeout: float = 10.0, host="127.0.0.1"):
    """One HTTP request; returns (status, headers dict (lower-case), body bytes)."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = body if isinstance(body, bytes | type(None)) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


class Stub:
    def __init__(
        self,
        models: list[str],
        port: int | None = None,
        host: str = "127.0.0.1",
        api_key: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.models = models
        self.api_key = api_key
        self.extra = extra  # more stub_upstream.py options (--prefix, --key-header, --tls-*)
        self.host = host  # any 127.x address: replicas on distinct hosts of one machine
        self.port = port or free_port(host)
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        args = [sys.executable, str(HERE / "stub_upstream.py"), "--host", self.host, "--port", str(self.port)]
        for m in self.models:
            args += ["--model", m]
        if self.api_key:
            args += ["--api-key", self.api_key]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, host=self.host)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def control(self, **kw) -> dict:
        return json.loads(request(self.port, "POST", "/_control", kw, host=self.host)[2])

    def reset(self) -> None:
        self.control(reset=True)
        request(self.port, "POST", "/_reset_stats", {}, host=self.host)

    def stats(self) -> dict:
        return json.loads(request(self.port, "GET", "/_stats", host=self.host)[2])


class Gateway:
    def __init__(
        self, tmp: Path, cfg: dict, name: str = "gw", port: int | None = None, launcher=(), pass_fds=()
    ) -> None:
        """``port``, ``launcher``: socket activation (tests/sd_launch.py, systemd-socket-activate):
        the gateway is reached on ``port``, a socket the launcher passes; its config names another
        port, which nothing may bind."""
        self.port = port or free_port()
        cfg.setdefault("server", {})
        cfg["server"].update({"host": "127.0.0.1", "port": free_port() if port else self.port})
        self.cfg_path = tmp / f"{name}.yaml"
        self.write(cfg)
        self.log_path = tmp / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                *launcher,
                *[sys.executable, "-m", "citadel_gateway", "--config", str(self.cfg_path), "--log-level", "warning"],
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
        )
        wait_port(self.port, self.proc)

    def write(self, cfg: dict) -> None:
        self.cfg_path.write_text(yaml.safe_dump(cfg))

    def request(self, method, path, body=None, key: str | None = "ops", headers=None, timeout=10.0):
        h = dict(headers or {})
        if key:
            h["Authorization"] = f"Bearer {KEYS.get(key, key)}"
        return request(self.port, method, path, body, h, timeout)

    def chat(self, model="chat-a", key="ops", headers=None, **kw):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kw}
        return self.request("POST", "/v1/chat/completions", body, key=key, headers=headers)

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def base_config(chat_urls, embed_urls, **over) -> dict:
    cfg = {
        "auth": {
            "required": True,
            "keys": [
                {"name": "ops", "sha256": sha(KEYS["ops"]), "models": ["*"], "rpm": 100000, "burst": 10000},
                {"name": "limited", "sha256": sha(KEYS["limited"]), "models": ["*"], "rpm": 60, "burst": 3},
                {
                    "name": "embed-only",
                    "sha256": sha(KEYS["embed-only"]),
                    "models": ["embed-a"],
                    "rpm": 1000,
                    "burst": 100,
                },
            ],
        },
        # timeout 2 s: on a loaded 2-core machine a 1 s probe can time out and flap replicas
        "health": {"interval_s": 0.3, "timeout_s": 2},
        "circuit": {"failures": 3, "cooldown_s": 0.5},
        "retry": {"attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
        "upstream": {"connect_timeout_s": 1, "total_timeout_s": 5},
        "models": [
            {
                "name": "chat-a",
                "aliases": ["chatty"],
                "capabilities": ["chat", "completion"],
                "tier": "lightweight",
                "latency_ms": {"avg": 500, "p95": 900},
                "replicas": list(chat_urls),
            },
            {
                "name": "embed-a",
                "capabilities": ["embedding"],
                "tier": "embedding",
                "latency_ms": {"avg": 50, "p95": 100},
                "replicas": list(embed_urls),
            },
        ],
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


def module_cluster(tmp_path_factory, stubs: list, config: dict):
    """Generator body of a module-scoped cluster fixture: a gateway with ``config`` in front of
    ``stubs`` (two chat replicas and an embedding replica); everything is stopped afterwards."""
    g = None
    try:
        g = Gateway(tmp_path_factory.mktemp("gw"), config)
        wait_ready(g)
        yield (g, *stubs)
    finally:
        if g is not None:
            g.stop()
        for s in stubs:
            s.kill()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """Like ``cluster`` but started once per module; tests must not kill its processes."""
    a, b, e = made = [Stub(["chat-a"]), Stub(["chat-a"]), Stub(["embed-a"])]
    yield from module_cluster(tmp_path_factory, made, base_config([a.url, b.url], [e.url]))


@pytest.fixture
def cl(shared_cluster):
    for s in shared_cluster[1:]:
        s.reset()
    return shared_cluster


@pytest.fixture
def stubs():
    made: list[Stub] = []

    def make(models, port=None, host="127.0.0.1", api_key=None, extra=()) -> Stub:
        s = Stub(models, port, host, api_key, extra)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


@pytest.fixture
def gateway(tmp_path):
    made: list[Gateway] = []

    def make(cfg, name="gw", **kw) -> Gateway:
        g = Gateway(tmp_path, cfg, name, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


@pytest.fixture
def cluster(stubs, gateway):
    """Two chat replicas, one embedding replica, a gateway in front (fast health checks)."""
    a, b, e = stubs(["chat-a"]), stubs(["chat-a"]), stubs(["embed-a"])
    g = gateway(base_config([a.url, b.url], [e.url]))
    wait_ready(g)
    return g, a, b, e


def wait_ready(g: Gateway, timeout: float = 10.0, want: int = 200) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if g.request("GET", "/ready", key=None)[0] == want:
            return
        time.sleep(0.05)
    raise TimeoutError(f"/ready never answered {want}")


@pytest.fixture
def redis_server(tmp_path):
    yield from _redis(tmp_path)


REDIS_PASSWORD = "test-redis-password-0123456789"


@pytest.fixture
def redis_server_with_password(tmp_path):
    """A redis-server with requirepass REDIS_PASSWORD (as the redis role configures it)."""
    yield from _redis(tmp_path, "--requirepass", REDIS_PASSWORD)


def _redis(tmp_path, *args: str):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run `make setup` (scripts/bootstrap.sh installs it)")
    port = free_port()
    p = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
        + list(args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, p)
    yield f"redis://127.0.0.1:{port}/0"
    p.terminate()
    p.wait()


os.environ.setdefault("PYTHONUNBUFFERED", "1")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and a server certificate for 127.0.0.1 and localhost that it signed (as lab/tls.sh makes)."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca), "-days", "2", "-subj", "/CN=test CA")  # fmt: skip
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", "/CN=gateway")  # fmt: skip
    ext = d / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return {"ca": str(ca), "cert": str(cert), "key": str(key), "ca_key": str(ca_key)}


class SilentListener:
    """Accepts TCP connections and never says a word (a Redis that hangs after the connect)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(s)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5.0)
        for s in self.held:
            s.close()


@pytest.fixture
def silent():
    s = SilentListener()
    yield s
    s.close()
