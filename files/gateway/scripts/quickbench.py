"""Quick overhead loop for the gateway (the real benchmark lives in loadtests/bench_gateway*).

Starts the stub upstream and a full gateway (auth, memory rate limits, routing, metrics, access
log to a file), then, interleaved over --rounds: wrk c=64 direct vs through the gateway (req/s
and the gateway's CPU seconds per request from /proc/<pid>/stat), wrk c=1 p50 and p99 direct vs gateway,
and a streamed request (10 chunks, 10 ms apart): first-chunk delay and chunk spacing.

  .cache/gateway-venv/bin/python files/gateway/scripts/quickbench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUB = HERE.parent / "tests" / "stub_upstream.py"
KEY = "bench-key"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing on {port}")


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def _ms(m) -> float:
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def wrk(port: int, conns: int, secs: int, lua: str) -> tuple[int, float, float, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{secs}s",
            "--latency",
            "-s",
            lua,
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    n = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50_ms = _ms(re.search(r"50%\s+([\d.]+)(us|ms|s)", out))
    p99_ms = _ms(re.search(r"99%\s+([\d.]+)(us|ms|s)", out))
    if "Non-2xx" in out:
        raise SystemExit("non-2xx answers in the benchmark:\n" + out)
    return n, rps, p50_ms, p99_ms


def stream_times(port: int, key: str | None) -> tuple[float, list[float]]:
    body = json.dumps({"model": "m1", "messages": [], "stream": True}).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.perf_counter()
    s.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    buf, times = b"", []
    while b"[DONE]" not in buf:
        d = s.recv(65536)
        if not d:
            break
        now = time.perf_counter()
        times += [now] * d.count(b"data: ")
        buf += d
    s.close()
    first = times[0] - t0
    gaps = [b - a for a, b in zip(times, times[1:-1], strict=False)]
    return first, gaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    sp, gp = free_port(), free_port()
    lua = tmp / "post.lua"
    lua.write_text(
        'wrk.method = "POST"\n'
        'wrk.body = \'{"model":"m1","messages":[{"role":"user","content":"hi"}],"max_tokens":8}\'\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
    )
    cfg = {
        "server": {"host": "127.0.0.1", "port": gp, "access_log": True},
        "auth": {
            "required": True,
            "keys": [
                {"name": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "rpm": 10**9, "burst": 10**8}
            ],
        },
        "health": {"interval_s": 5, "timeout_s": 2},
        "models": [{"name": "m1", "replicas": [f"http://127.0.0.1:{sp}"]}],
    }
    (tmp / "gw.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    procs = [
        subprocess.Popen([sys.executable, str(STUB), "--port", str(sp), "--model", "m1"], stdout=subprocess.DEVNULL)
    ]
    wait(sp)
    log = open(tmp / "access.log", "wb")  # noqa: SIM115 - lives as long as the gateway process
    gw = subprocess.Popen(
        [sys.executable, "-m", "citadel_gateway", "--config", str(tmp / "gw.yaml"), "--log-level", "warning"],
        stdout=log,
    )
    procs.append(gw)
    wait(gp)
    try:
        wrk(gp, 64, 1, str(lua))  # warm up
        rows = []
        for _ in range(a.rounds):
            _, d_rps, _, _ = wrk(sp, 64, a.seconds, str(lua))
            c0 = cpu_s(gw.pid)
            n, g_rps, _, _ = wrk(gp, 64, a.seconds, str(lua))
            cpu_us = (cpu_s(gw.pid) - c0) / n * 1e6
            _, _, d_p50, d_p99 = wrk(sp, 1, 2, str(lua))
            _, _, g_p50, g_p99 = wrk(gp, 1, 2, str(lua))
            subprocess.run(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-d",
                    '{"chunks":10,"interval":0.01}',
                    f"http://127.0.0.1:{sp}/_control",
                ],
                check=True,
            )
            d_first, d_gaps = stream_times(sp, None)
            g_first, g_gaps = stream_times(gp, KEY)
            subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-d", '{"reset":true}', f"http://127.0.0.1:{sp}/_control"], check=True
            )
            rows.append(
                {
                    "direct_rps": d_rps,
                    "gateway_rps": g_rps,
                    "share": g_rps / d_rps,
                    "cpu_us_per_req": cpu_us,
                    "added_p50_ms_c1": g_p50 - d_p50,
                    "added_p99_ms_c1": g_p99 - d_p99,
                    "stream_first_chunk_added_ms": (g_first - d_first) * 1000,
                    "stream_gap_ms_median": statistics.median(g_gaps) * 1000,
                    "stream_gap_ms_max": max(g_gaps) * 1000,
                }
            )
            print(json.dumps({k: round(v, 3) for k, v in rows[-1].items()}), flush=True)
        med = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
        print("median", json.dumps(med))
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        log.close()


if __name__ == "__main__":
    main()
