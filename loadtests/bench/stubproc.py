"""For the bench's tests: the real stub upstream (stub_upstream.py), started on a free port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import pytest

STUB = Path(__file__).resolve().parent.parent / "stub_upstream.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_stub(python: str, server: str, models: list[str], *extra: str):
    """The stub (stub_upstream.py) with ``python``; yields its port, stops it after."""
    port = free_port()
    cmd = [python, str(STUB), "--port", str(port), "--server", server, *extra]
    for m in models:
        cmd += ["--model", m]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            proc.kill()
            pytest.fail(f"stub did not listen: {proc.stdout.read()!r}")
        yield port
    finally:
        proc.terminate()
        proc.wait(5)
