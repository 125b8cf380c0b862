"""Socket activation: serve on the listening sockets systemd passes instead of binding one.

systemd (``citadel-gateway.socket``) owns the socket and keeps it open while the gateway restarts,
so a connection that arrives between one process and the next waits in the kernel's backlog and
is accepted by the next process instead of being refused. The protocol of sd_listen_fds(3): the
sockets are fds 3 … 3 + LISTEN_FDS - 1, meant for us when LISTEN_PID is our pid; the variables
are unset once read (as ``sd_listen_fds(1)``), so nothing this process starts takes them for its own.
"""

from __future__ import annotations

import errno
import os
import socket

SD_LISTEN_FDS_START = 3

_ERRNO = {errno.EBADF: "it is not open", errno.ENOTSOCK: "it is not a socket"}
_KINDS = {socket.SOCK_DGRAM: "a datagram socket", socket.SOCK_SEQPACKET: "a seqpacket socket"}


class ListenError(Exception):
    """What systemd passed cannot be served (a one-line message; cli exits 4)."""


def inherited_sockets(environ=None) -> list[socket.socket] | None:
    """The listening TCP sockets passed to this process, or None when it was not socket-activated
    (no LISTEN_PID/LISTEN_FDS, another process' LISTEN_PID, or LISTEN_FDS=0: bind as usual)."""
    env = os.environ if environ is None else environ
    pid = env.pop("LISTEN_PID", None)
    fds = env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if pid is None or fds is None:
        return None
    try:
        if int(pid) != os.getpid():
            return None  # meant for another process (a parent that did not unset them)
        n = int(fds)
    except ValueError:
        raise ListenError(f"socket activation: LISTEN_PID={pid!r} LISTEN_FDS={fds!r} are not numbers") from None
    if n < 0:
        raise ListenError(f"socket activation: LISTEN_FDS={fds!r} is negative")
    return [_listening_tcp(fd, n) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n)] or None


def _listening_tcp(fd: int, n: int) -> socket.socket:
    def refuse(what: str) -> ListenError:
        return ListenError(f"socket activation: LISTEN_FDS={n} but fd {fd} is not a listening TCP socket: {what}")

    try:
        s = socket.socket(fileno=fd)  # family and type read from the fd
    except OSError as e:
        raise refuse(_ERRNO.get(e.errno, e.strerror or str(e))) from None
    if s.family not in (socket.AF_INET, socket.AF_INET6):
        raise refuse(f"it is an {getattr(s.family, 'name', s.family)} socket")
    if s.type != socket.SOCK_STREAM:
        raise refuse(f"it is {_KINDS.get(s.type, getattr(s.type, 'name', s.type))}")
    if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise refuse("it is not listening")
    s.set_inheritable(False)  # as sd_listen_fds: nothing this process might start gets it
    return s


def listening_sockets(
    inherited: list[socket.socket] | None, host: str, port: int, metrics_port: int | None
) -> list[socket.socket] | None:
    """What uvicorn serves: the inherited sockets (None: it binds host:port itself), plus, with a
    metrics port, a socket of ours on host:metrics_port (then the API socket is ours too unless
    systemd passed it). The metrics socket is not socket-activated: a scrape that falls in a
    restart fails, and Prometheus takes the next one."""
    if metrics_port is None:
        return inherited
    api = inherited or [_bind(host, port)]
    return [*api, _bind(host, metrics_port)]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        s = socket.create_server((host.strip("[]"), port), family=family, backlog=4096)
    except OSError as e:
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    s.set_inheritable(False)
    return s


def describe(socks: list[socket.socket]) -> str:
    """Their addresses, for the start-up log line."""
    out = []
    for s in socks:
        host, port = s.getsockname()[:2]
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return ", ".join(out)
