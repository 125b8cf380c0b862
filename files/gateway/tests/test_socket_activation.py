"""Socket activation: the gateway serves the listening socket it is given, and a restart on that
socket refuses nothing. The test process owns the socket, as systemd does for
citadel-gateway.socket, and starts gateway processes on it through tests/sd_launch.py."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import yaml
from conftest import HERE, KEYS, Gateway, base_config, free_port, wait_ready

LAUNCH = [sys.executable, str(HERE / "sd_launch.py")]
GATEWAY = [sys.executable, "-m", "citadel_gateway"]
CHAT = json.dumps({"model": "chat-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
AUTH = {"Authorization": f"Bearer {KEYS['ops']}", "Content-Type": "application/json"}


def listening_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    return s


def activated(tmp, cfg: dict, sock: socket.socket, name: str) -> Gateway:
    """A gateway process on ``sock`` (which stays open here when the process ends)."""
    fd = sock.fileno()
    return Gateway(tmp, cfg, name, port=sock.getsockname()[1], launcher=[*LAUNCH, str(fd), "--"], pass_fds=(fd,))


def _holds(g: Gateway, sock: socket.socket) -> bool:
    """Whether process ``g`` has the listening socket ``sock`` open (in /proc/PID/fd)."""
    inode = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    fds = f"/proc/{g.proc.pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(f"{fds}/{fd}") == inode:
                return True
        except FileNotFoundError:
            continue
    return False


def _wait_until_released(g: Gateway, sock: socket.socket, timeout: float = 15.0) -> None:
    """Until process ``g`` has closed the listening socket (it stopped accepting): watched, not
    guessed with a sleep, so a busy machine only makes it slower."""
    end = time.monotonic() + timeout
    while _holds(g, sock):
        assert time.monotonic() < end, f"process {g.proc.pid} still listens {timeout} s after SIGTERM"
        time.sleep(0.01)


def access_lines(g: Gateway) -> list[dict]:
    """The requests a stopped gateway process served (its JSON access log)."""
    return [json.loads(line) for line in g.log_path.read_text().splitlines() if line.startswith('{"ts":')]


def configured_port(g: Gateway) -> int:
    return yaml.safe_load(g.cfg_path.read_text())["server"]["port"]


def test_serves_the_socket_systemd_socket_activate_passes(stubs, gateway):
    exe = shutil.which("systemd-socket-activate")
    assert exe, "systemd-socket-activate is not installed (it ships with systemd)"
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    port = free_port()
    g = gateway(base_config([a.url], [e.url]), port=port, launcher=[exe, "-l", f"127.0.0.1:{port}"])
    wait_ready(g)
    assert g.chat()[0] == 200
    status, _, body = g.request("GET", "/ready", key=None)
    assert status == 200
    version = hashlib.sha256(g.cfg_path.read_bytes()).hexdigest()
    assert json.loads(body) == {"status": "ready", "config_version": version}
    # the inherited socket is served instead of binding server.host/port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", configured_port(g)), timeout=1).close()


def test_reads_and_unsets_the_listen_variables():
    sock = listening_socket()
    probe = (
        "import os; from citadel_gateway.server import inherited_sockets as f; s = f(); "
        "print(len(s), s[0].getsockname()[1], s[0].fileno(), os.get_inheritable(3), "
        "[os.environ.get(v) for v in ('LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES')])"
    )
    out = subprocess.run(
        [*LAUNCH, str(sock.fileno()), "--", sys.executable, "-c", probe],
        pass_fds=(sock.fileno(),),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.split(" ", 4) == ["1", str(sock.getsockname()[1]), "3", "False", "[None, None, None]\n"]
    sock.close()


def test_variables_of_another_process_are_ignored(stubs, gateway):
    """LISTEN_PID names another process (a parent that did not unset them): bind as usual."""
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    sock = listening_socket()
    fd = sock.fileno()
    g = gateway(base_config([a.url], [e.url]), launcher=[*LAUNCH, str(fd), "--pid", "1", "--"], pass_fds=(fd,))
    wait_ready(g)
    assert g.port == configured_port(g)
    assert g.chat()[0] == 200
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        sock.accept()  # nothing was queued here: fd 3 was left alone
    sock.close()


def _not_listening_tcp(kind: str):
    if kind == "closed":
        return None
    if kind == "pipe":
        return os.pipe()[0]
    s = {
        "udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        "tcp-not-listening": socket.socket,
        "unix-listening": lambda: socket.socket(socket.AF_UNIX),
    }[kind]()
    if kind == "unix-listening":
        s.bind(f"\0citadel-gateway-test-{id(s)}")
        s.listen()
    return s


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("closed", "it is not open"),
        ("pipe", "it is not a socket"),
        ("udp", "it is a datagram socket"),
        ("tcp-not-listening", "it is not listening"),
        ("unix-listening", "it is an AF_UNIX socket"),
    ],
)
def test_a_bad_fd_3_is_a_one_line_error(tmp_path, kind, why):
    obj = _not_listening_tcp(kind)
    fd = obj if isinstance(obj, int) else obj.fileno() if obj is not None else None
    cfg_path = tmp_path / "gw.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config(["http://127.0.0.1:9"], ["http://127.0.0.1:9"])))
    run = subprocess.run(
        [*LAUNCH, str(fd) if fd is not None else "none", "--", *GATEWAY, "--config", str(cfg_path)],
        pass_fds=(fd,) if fd is not None else (),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 4, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"citadel-gateway: socket activation: LISTEN_FDS=1 but fd 3 is not a listening TCP socket: {why}"
    ]


def _connect(port: int) -> http.client.HTTPConnection:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    c.connect()
    return c


def _answer(c: http.client.HTTPConnection) -> tuple[int, str | None]:
    r = c.getresponse()
    r.read()
    return r.status, r.getheader("connection")


def test_a_stopping_process_answers_what_reached_it_and_the_next_one_what_queued(stubs, tmp_path):
    """What a restart must not lose, each at its deterministic moment: a connection process 1
    accepted but that sent nothing before SIGTERM, an idle keep-alive connection, one opened while
    process 1 drains (queued: no process accepts), and the in-flight stream that is drained."""
    a, e = stubs(["chat-a"]), stubs(["embed-a"])
    sock = listening_socket()
    port = sock.getsockname()[1]
    cfg = base_config([a.url], [e.url], server={"drain_seconds": 20})
    g1 = activated(tmp_path, cfg, sock, "gw1")
    wait_ready(g1)
    keep = _connect(port)
    keep.request("POST", "/v1/chat/completions", CHAT, AUTH)
    assert _answer(keep) == (200, None)  # kept alive
    fresh = _connect(port)
    silent = socket.create_connection(("127.0.0.1", port))
    a.control(hold_after=1)  # the stream below stays in flight until released
    held: list = []
    stream = threading.Thread(target=lambda: held.append(g1.chat(stream=True, headers={"x-request-id": "held"})))
    stream.start()
    time.sleep(0.5)  # all of them accepted by process 1, the stream in flight

    assert _holds(g1, sock)
    g1.signal(signal.SIGTERM)
    _wait_until_released(g1, sock)  # process 1 has stopped accepting and drains the stream
    queued = _connect(port)  # not refused: the socket is still open (here, as in systemd)
    queued.request("POST", "/v1/chat/completions", CHAT, {**AUTH, "x-request-id": "queued"})
    fresh.request("POST", "/v1/chat/completions", CHAT, {**AUTH, "x-request-id": "fresh"})
    keep.request("POST", "/v1/chat/completions", CHAT, {**AUTH, "x-request-id": "keep"})
    assert _answer(fresh) == (200, "close"), "a connection accepted before the stop is answered"
    assert _answer(keep) == (200, "close"), "an idle keep-alive connection's next request within the grace too"
    silent.settimeout(5)
    assert silent.recv(1) == b"", "a connection that sends nothing is closed after the grace"
    assert g1.proc.poll() is None, "process 1 still drains the held stream"
    a.control(hold_after=None)
    stream.join(15)
    assert [status for status, _, _ in held] == [200]
    assert held[0][2].endswith(b"data: [DONE]\n\n"), "the drained stream is complete"
    assert g1.proc.wait(10) in (0, -signal.SIGTERM)
    assert select.select([queued.sock], [], [], 0.5)[0] == [], "no process accepted the queued connection"

    g2 = activated(tmp_path, cfg, sock, "gw2")
    try:
        assert _answer(queued)[0] == 200
        wait_ready(g2)
    finally:
        g2.stop()
        g1.stop()
        sock.close()
    assert {r["request_id"] for r in access_lines(g1)} >= {"held", "fresh", "keep"}
    assert "queued" not in {r["request_id"] for r in access_lines(g1)}
    assert "queued" in {r["request_id"] for r in access_lines(g2)}


def test_restart_under_load_refuses_no_connection(stubs, tmp_path):
    """As ``systemctl restart`` with citadel-gateway.socket: SIGTERM, the drain, the process
    exits, a new one starts on the same socket; a client load on new connections throughout."""
    a, b, e = stubs(["chat-a"]), stubs(["chat-a"]), stubs(["embed-a"])
    for s in (a, b):
        s.control(delay=0.02)
    sock = listening_socket()
    cfg = base_config([a.url, b.url], [e.url], server={"drain_seconds": 10})
    g1 = activated(tmp_path, cfg, sock, "gw1")
    wait_ready(g1)
    threads_n, per_thread = 8, 40
    total = threads_n * per_thread
    results: dict[str, tuple[float, object]] = {}  # request id: (start, status or the exception)

    def client(i: int) -> None:
        for j in range(per_thread):
            rid, t0 = f"load-{i}-{j}", time.monotonic()
            try:
                status = g1.chat(headers={"x-request-id": rid})[0]  # a new connection each
            except Exception as ex:  # noqa: BLE001 - every failure is counted, none may happen
                status = repr(ex)
            results[rid] = (t0, status)
            time.sleep(0.005)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    end = time.monotonic() + 30
    while len(results) < total // 3 and time.monotonic() < end:
        time.sleep(0.01)
    g1.signal(signal.SIGTERM)
    assert g1.proc.wait(15) in (0, -signal.SIGTERM)
    time.sleep(0.3)  # no gateway process at all: connections wait in the backlog
    restarted = time.monotonic()
    g2 = activated(tmp_path, cfg, sock, "gw2")
    try:
        for t in threads:
            t.join(60)
    finally:
        g2.stop()
        g1.stop()
        sock.close()
    assert len(results) == total
    assert Counter(str(s) for _, s in results.values()) == {"200": total}
    by = [[r["request_id"] for r in access_lines(g) if r["request_id"].startswith("load-")] for g in (g1, g2)]
    assert sorted(by[0] + by[1]) == sorted(results), "every request served once, by one of the two"
    assert by[0], "process 1 served"
    assert by[1], "process 2 served"
    # served by process 2 but sent before it existed: queued while no process accepted
    assert [rid for rid in by[1] if results[rid][0] < restarted], "no request waited for the next process"
