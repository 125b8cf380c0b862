"""A scriptable HTTP/1.1 upstream on loopback for fault tests: blocking sockets, a thread per
connection, every answer written by the test (so it can break framing on purpose).

    srv = FaultUpstream(handler)      # handler(req) answers with req.conn.send(...) / .close()
    srv.accepted, srv.requests        # connections accepted, requests read (counted before the handler runs)
    srv.conns[i].peer_closed.wait(5)  # the client closed connection i

Threads rather than asyncio: the server must not share the client's event loop, and a blocking
sendall() counts exactly what the kernel accepted (``sent``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


def response(body: bytes = b"ok", status: str = "200 OK", headers: str = "") -> bytes:
    """One Content-Length framed response; ``headers``: extra lines, each ending in CRLF."""
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    return head.encode() + body


class Request:
    __slots__ = ("conn", "head", "body", "index")

    def __init__(self, conn: Conn, head: bytes, body: bytes, index: int) -> None:
        self.conn = conn
        self.head = head  # request line + headers, without the final CRLFCRLF
        self.body = body
        self.index = index  # 0 for the connection's first request

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None


class Conn:
    def __init__(self, server: FaultUpstream, sock: socket.socket, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index  # order of accept, from 0
        self.peer_closed = threading.Event()  # the client closed (EOF or reset) while we read
        self.done = threading.Event()  # this connection's thread has finished
        self.closed = False

    def send(self, data: bytes, piece: int = 64 * 1024) -> bool:
        """Write data in pieces, counting each one the kernel took; False once the peer is gone."""
        view = memoryview(data)
        for i in range(0, len(view), piece):
            part = view[i : i + piece]
            try:
                self.sock.sendall(part)
            except OSError:
                return False
            with self.server.lock:
                self.server.sent += len(part)
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def _read_request(self, buf: bytearray) -> tuple[bytes, bytes] | None:
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if not self._recv(buf):
                return None
        head = bytes(buf[:end])
        size = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                size = int(v)
        while len(buf) < end + 4 + size:
            if not self._recv(buf):
                return None
        body = bytes(buf[end + 4 : end + 4 + size])
        del buf[: end + 4 + size]
        return head, body

    def _recv(self, buf: bytearray) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            if not self.closed:
                self.peer_closed.set()
            return False
        buf += data
        return True

    def serve(self) -> None:
        buf = bytearray()
        n = 0
        try:
            while not self.closed:
                got = self._read_request(buf)
                if got is None:
                    return
                with self.server.lock:
                    self.server.requests += 1
                self.server.handler(Request(self, got[0], got[1], n))
                n += 1
        finally:
            self.done.set()


class FaultUpstream:
    def __init__(self, handler: Callable[[Request], None], backlog: int = 64, sndbuf: int | None = None) -> None:
        self.handler = handler
        self.lock = threading.Lock()
        self.accepted = 0
        self.requests = 0
        self.sent = 0
        self.conns: list[Conn] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sndbuf is not None:  # inherited by accepted sockets: little kernel buffering on our side
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                c = Conn(self, s, self.accepted)
                self.accepted += 1
                self.conns.append(c)
            threading.Thread(target=c.serve, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        self.sock.close()
        self._thread.join(5)
        for c in list(self.conns):
            c.close()
        for c in list(self.conns):
            c.done.wait(5)
