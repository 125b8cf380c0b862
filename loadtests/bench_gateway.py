#!/usr/bin/env python3
"""Gateway overhead benchmark: direct stub vs citadel-gateway vs LiteLLM proxy.

Starts a fast stub upstream (stub_upstream.py), the gateway with every hot-path feature
on (auth, limits, routing, metrics, access log) and, if installed
(loadtests/install-litellm.sh), a one-process LiteLLM proxy in front of the same stub.
Then one interleaved run: for each round, for each concurrency, for each target, a short
wrk run (POST JSON), plus SSE streams measured by a small client. Medians over rounds are
compared with the issue's targets; exit 1 if one fails (--no-gate: only print).

    python loadtests/bench_gateway.py [--rounds 3] [--duration 5] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("CITADEL_CACHE", ROOT / ".cache"))
MODEL = "bench-model"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The issue's targets. Each is checked on the medians over rounds.
TARGET_SHARE_C64 = 0.30  # gateway req/s >= 30 % of direct at c=64
TARGET_CPU_US = 250.0  # gateway CPU per request (c=64, all its processes)
TARGET_ADDED_P50_MS = 0.5  # gateway p50 - direct p50 at c=1
TARGET_VS_LITELLM = 20.0  # gateway req/s >= 20x LiteLLM's at c=64
TARGET_TTFC_ADDED_MS = 2.0  # first SSE chunk, gateway - direct, c=1
TARGET_GAP_TOL_MS = 1.0  # median inter-chunk gap through the gateway vs as sent (direct)
LAB_BARE_SHARE = 0.21  # LAB.md: the bare FastAPI + aiohttp proxy's share of direct at c=64


# ---------------------------------------------------------------- processes, CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    kids = _children_map()
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, []))
    return found


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # the process ended meanwhile
        return None


def cpu_seconds(pid: int) -> float:
    """utime+stime of pid and all its live descendants, plus reaped children (cutime+cstime)."""
    total = 0
    for stat in filter(None, (_read(f"/proc/{p}/stat") for p in _tree(pid))):
        fields = stat[stat.rindex(b")") + 2 :].split()
        # fields[11..14] = utime stime cutime cstime (stat fields 14-17)
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def rss_mib(pid: int) -> float:
    page = os.sysconf("SC_PAGE_SIZE")
    statms = filter(None, (_read(f"/proc/{p}/statm") for p in _tree(pid)))
    return sum(int(statm.split()[1]) * page for statm in statms) / 2**20


class Service:
    def __init__(self, name: str, cmd: list[str], cpus: str | None, logdir: Path, env: dict | None = None) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        full = (["taskset", "-c", cpus] if cpus else []) + cmd
        self.proc = subprocess.Popen(
            full,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stopped as a whole, by id
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def http(method: str, url: str, key: str | None = None, body: dict | None = None, timeout: float = 5) -> tuple:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError) as e:
        return 0, str(e).encode()


def wait_ready(svc: Service, base: str, key: str | None, timeout: float) -> None:
    """Ready = /v1/models lists the model and a 1-token chat answers 200 (as the gateway probes vLLM)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not svc.alive():
            raise SystemExit(f"{svc.name} exited (rc={svc.proc.returncode}):\n{svc.tail()}")
        status, body = http("GET", base + "/v1/models", key, timeout=2)
        if status == 200 and MODEL.encode() in body:
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            status, body = http("POST", base + "/v1/chat/completions", key, chat, timeout=10)
            if status == 200:
                return
        last = f"HTTP {status}: {body[:200]!r}"
        time.sleep(0.3)
    raise SystemExit(f"{svc.name} not ready after {timeout:.0f} s ({last}):\n{svc.tail()}")


# ---------------------------------------------------------------- targets


def find_gateway(explicit: str | None) -> str | None:
    # The gateway's own dev venv (its pinned lock) first; then one installed next to this Python.
    local = Path(sys.executable).parent / "citadel-gateway"
    for cand in (explicit, CACHE / "gateway-venv/bin/citadel-gateway", local, shutil.which("citadel-gateway")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def pkg_version(bindir: Path, dist: str) -> str:
    py = bindir / "python"
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    try:
        out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def start_stub(args, logdir: Path) -> tuple[Service, str]:
    port = free_port()
    cmd = [
        sys.executable,
        str(HERE / "stub_upstream.py"),
        "--port",
        str(port),
        "--model",
        MODEL,
        "--chunks",
        str(args.chunks),
        "--chunk-interval-ms",
        str(args.chunk_interval_ms),
        "--server",
        args.stub,
    ]
    svc = Service("stub", cmd, args.server_cpus, logdir)
    base = f"http://127.0.0.1:{port}"
    wait_ready(svc, base, None, 15)
    return svc, base


def start_gateway(args, exe: str, stub: str, key: str, logdir: Path) -> tuple[Service, str]:
    port = free_port()
    tmpl = string.Template((HERE / "bench/gateway.yaml.tmpl").read_text())
    cfg = logdir / "gateway.yaml"
    cfg.write_text(
        tmpl.substitute(port=port, key_sha256=hashlib.sha256(key.encode()).hexdigest(), model=MODEL, stub_url=stub)
    )
    # The access log goes with the rest of its output to a file (logdir), as under systemd.
    cmd = [exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    svc = Service("gateway", cmd, args.server_cpus, logdir)
    base = f"http://127.0.0.1:{port}"
    wait_ready(svc, base, key, 60)
    return svc, base


def start_bare_proxy(args, stub: str, logdir: Path) -> tuple[Service, str]:
    port = free_port()
    cmd = [sys.executable, str(HERE / "bench/bare_proxy.py"), "--port", str(port), "--upstream", stub]
    svc = Service("bare", cmd, args.server_cpus, logdir)
    base = f"http://127.0.0.1:{port}"
    wait_ready(svc, base, None, 30)
    return svc, base


def start_litellm(args, venv: Path, stub: str, key: str, logdir: Path) -> tuple[Service, str]:
    port = free_port()
    env = {
        "BENCH_STUB_BASE": stub + "/v1",
        "BENCH_STUB_KEY": "unused",
        "LITELLM_MASTER_KEY": key,
        # Offline and quiet: bundled cost map (no fetch at start), no telemetry, no UI.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
        "DISABLE_ADMIN_UI": "True",
        "DO_NOT_TRACK": "1",
        "HOME": str(logdir),
    }
    for var in ("DATABASE_URL", "REDIS_HOST", "REDIS_URL"):
        os.environ.pop(var, None)
    cmd = [
        str(venv / "bin/litellm"),
        "--config",
        str(HERE / "bench/litellm.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    svc = Service("litellm", cmd, args.server_cpus, logdir, env)
    base = f"http://127.0.0.1:{port}"
    wait_ready(svc, base, key, 120)
    return svc, base


# ---------------------------------------------------------------- wrk


def wrk(args, base: str, key: str, conc: int, duration: int) -> dict:
    # wrk takes whole seconds; it measures its own elapsed time, which the rate uses.
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--timeout", "10s", "-s", str(HERE / "bench/post_chat.lua")]
    if args.load_cpus:
        cmd = ["taskset", "-c", args.load_cpus, *cmd]
    env = {**os.environ, "BENCH_MODEL": MODEL, "BENCH_KEY": key}
    out = subprocess.run([*cmd, base], capture_output=True, text=True, env=env, timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON ") :])
    raise RuntimeError(f"wrk printed no summary (rc={out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")


def settle(pids: list[int], limit_s: float = 20.0) -> float:
    """Wait until the servers are idle (< 10 % of a core over 200 ms).

    wrk stops at its deadline but a slow proxy keeps working off the requests it had
    accepted (LiteLLM at c=64: about a second); that work must not land in the next run.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        c0 = sum(cpu_seconds(p) for p in pids)
        time.sleep(0.2)
        if sum(cpu_seconds(p) for p in pids) - c0 < 0.02:
            break
    return time.monotonic() - t0


def measure(args, name: str, base: str, key: str, conc: int, svc: Service | None, stub: Service) -> dict:
    pids = [stub.pid] + ([svc.pid] if svc else [])
    settle(pids)
    if args.warmup > 0:
        wrk(args, base, key, conc, args.warmup)
        settle(pids)
    c0 = cpu_seconds(svc.pid) if svc else 0.0
    s0 = cpu_seconds(stub.pid)
    r = wrk(args, base, key, conc, args.duration)
    c1 = cpu_seconds(svc.pid) if svc else 0.0
    s1 = cpu_seconds(stub.pid)
    n = max(r["requests"], 1)
    errors = sum(r["errors"].values())
    return {
        "target": name,
        "conc": conc,
        "requests": r["requests"],
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["latency_us"]["p50"] / 1000,
        "p99_ms": r["latency_us"]["p99"] / 1000,
        "cpu_us_per_req": (c1 - c0) / n * 1e6 if svc else None,
        "stub_cpu_us_per_req": (s1 - s0) / n * 1e6,
        # Share of one core that stub + proxy used. Pinned to one server core at high
        # concurrency this should be ~1.0; much less means other work held that core.
        "server_core": ((c1 - c0) + (s1 - s0)) / (r["duration_us"] / 1e6),
        "errors": errors,
        "wrk": r,
    }


# ---------------------------------------------------------------- streams


async def one_stream(session, base: str, key: str) -> dict:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me about Paris."}],
        "max_tokens": 64,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    t0 = time.perf_counter()
    arrivals: list[float] = []  # one entry per content event, stamped when its bytes arrived
    buf = b""
    async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as resp:
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}"}
        async for data in resp.content.iter_any():
            now = time.perf_counter()
            buf += data
            *events, buf = buf.split(b"\n\n")
            for ev in events:
                ev = ev.strip()
                # Content events only: not [DONE], not a usage-only event a proxy may add.
                if not ev.startswith(b"data:") or b"[DONE]" in ev:
                    continue
                if b'"choices": []' in ev or b'"choices":[]' in ev:
                    continue
                arrivals.append(now)
    if not arrivals:
        return {"error": "no chunks"}
    gaps = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {"ttfc_ms": (arrivals[0] - t0) * 1000, "gaps_ms": gaps, "chunks": len(arrivals)}


async def streams(base: str, key: str, conc: int, total: int) -> dict:
    import aiohttp  # noqa: PLC0415 - only the streaming part needs it

    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        # One warm connection per slot first, so TTFC is not a TCP connect.
        await asyncio.gather(
            *(session.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}) for _ in range(conc))
        )
        sem = asyncio.Semaphore(conc)

        async def run():
            async with sem:
                return await one_stream(session, base, key)

        results = await asyncio.gather(*(run() for _ in range(total)))
    ok = [r for r in results if "error" not in r]
    errs = [r["error"] for r in results if "error" in r]
    ttfc = [r["ttfc_ms"] for r in ok]
    gaps = [g for r in ok for g in r["gaps_ms"]]
    return {
        "streams": total,
        "errors": len(errs),
        "error_samples": errs[:3],
        "chunks_min": min((r["chunks"] for r in ok), default=0),
        "ttfc_p50_ms": statistics.median(ttfc) if ttfc else None,
        "ttfc_p95_ms": pct(ttfc, 95),
        "gap_p50_ms": statistics.median(gaps) if gaps else None,
        "gap_p95_ms": pct(gaps, 95),
    }


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


# ---------------------------------------------------------------- profile


def profile_gateway(args, gw: Service, stub: Service, base: str, key: str, logdir: Path) -> dict | None:
    """py-spy over one c=64 run: top functions by own (self) and inclusive samples.

    py-spy samples wall-clock stacks of a runnable thread: with the stub on the gateway's
    core, the time the gateway sits preempted right after waking the stub (its upstream
    write) would be charged to that write. So the stub moves to the load core meanwhile.
    """
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("  profile: py-spy not installed, skipped")
        return None
    out = logdir / "gateway.pyspy.txt"
    # Frames carry the current line; functions are summed from them. --nonblocking: never pause the gateway.
    cmd = [pyspy, "record", "--format", "raw", "--nonblocking", "-r", "500", "-p", str(gw.pid)]
    cmd += ["-o", str(out)]
    cmd += ["-d", str(int(args.duration) + 1)]
    if args.load_cpus:
        cmd = ["taskset", "-c", args.load_cpus, *cmd]
    if args.load_cpus:
        for task in os.listdir(f"/proc/{stub.pid}/task"):
            os.sched_setaffinity(int(task), {int(c) for c in args.load_cpus.split(",")})
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    run = measure(args, "gateway", base, key, 64, gw, stub)
    spy.wait(60)
    if not out.exists():
        print(f"  profile: py-spy wrote nothing: {spy.stderr.read().decode()[-300:]}")
        return None
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    line_n: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        line_n[frames[-1]] = line_n.get(frames[-1], 0) + count
        funcs = [re.sub(r":\d+\)$", ")", f) for f in frames]
        self_n[funcs[-1]] = self_n.get(funcs[-1], 0) + count
        for f in set(funcs):
            incl_n[f] = incl_n.get(f, 0) + count
    us = run["cpu_us_per_req"] or 0.0

    def top(d: dict[str, int]) -> list[dict]:
        rows = sorted(d.items(), key=lambda kv: -kv[1])[: args.profile_top]
        return [{"frame": f, "share": c / total, "us_per_req": c / total * us} for f, c in rows]

    return {
        "run": {k: v for k, v in run.items() if k != "wrk"},
        "samples": total,
        "self": top(self_n),
        "inclusive": top(incl_n),
        "lines": top(line_n),
        "raw": str(out),
    }


# ---------------------------------------------------------------- report


def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured wrk before each run")
    p.add_argument("--quick", action="store_true", help="1 round, 3 s runs: a smoke test of the harness")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--no-gate", action="store_true", help="print only; exit 0 whatever the targets say")
    p.add_argument("--json", default=str(CACHE / "bench-gateway.json"), help="where to write the results")
    p.add_argument("--gateway", help="citadel-gateway executable (default: .cache/gateway-venv, then PATH)")
    p.add_argument("--litellm-venv", default=str(CACHE / "litellm-venv"))
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument(
        "--no-bare",
        action="store_true",
        help="leave out LAB.md's reference proxy (FastAPI + aiohttp, bench/bare_proxy.py)",
    )
    # Layout: LAB.md's reference figures (the bare proxy's 21 %, 0.46 ms, 430 us; LiteLLM's 63
    # req/s), which the issue's targets are set against, were taken with wrk, stub and proxy
    # sharing both cores, so that is the default. --pinned puts wrk on CPU 0 and stub + proxy
    # on CPU 1 (LAB.md's second harness): there the stub wakes and preempts the proxy for
    # nearly every request (0.6 involuntary switches per request measured), which taxes both;
    # a deployment never shares a core between the gateway and vLLM. Both are worth a look.
    # The stub: "aiohttp" answers at LAB.md's stub's speed (11-14 k req/s, p50 ~0.17 ms), so
    # shares of direct are comparable with LAB.md's and the issue's targets; "raw" is 2-3x
    # faster, which lowers every proxy's share (the bare proxy's from ~0.2 to <0.1).
    p.add_argument("--stub", choices=("aiohttp", "raw"), default="aiohttp", help="stub upstream server (see above)")
    p.add_argument("--pinned", action="store_true", help="= --load-cpus 0 --server-cpus 1")
    p.add_argument("--load-cpus", default="", help="taskset list for wrk and the stream client ('' = no pin)")
    p.add_argument("--server-cpus", default="", help="taskset list for stub and proxies ('' = no pin)")
    p.add_argument("--chunks", type=int, default=12, help="SSE events per stream")
    p.add_argument("--chunk-interval-ms", type=float, default=10.0)
    p.add_argument("--profile", action="store_true", help="py-spy the gateway over one extra c=64 run")
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (the access log is ~20 MB a run)")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1
    if args.pinned:
        args.load_cpus, args.server_cpus = "0", "1"
    if len(os.sched_getaffinity(0)) < 2:
        args.load_cpus = args.server_cpus = ""
    concs = [int(c) for c in args.concurrency.split(",")]
    if args.load_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.load_cpus.split(",")})
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (scripts/bootstrap.sh installs it)")
    try:
        import uvloop  # noqa: PLC0415

        run_async = uvloop.run
    except ImportError:
        run_async = asyncio.run

    gw_exe = find_gateway(args.gateway)
    lite_venv = Path(args.litellm_venv)
    have_litellm = not args.no_litellm and (lite_venv / "bin/litellm").exists()
    key = "sk-bench-" + secrets.token_urlsafe(24)  # fresh per run, never stored
    logdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": os.getloadavg(),
        "cpus": os.cpu_count(),
        "pin": {"load": args.load_cpus, "servers": args.server_cpus},
        "stub": args.stub,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip(),
        "gateway": None,
        "litellm": None,
        "logdir": str(logdir),
    }
    services: list[Service] = []
    t_start = time.monotonic()
    try:
        stub, stub_base = start_stub(args, logdir)
        services.append(stub)
        targets: list[tuple[str, str, Service | None]] = [("direct", stub_base, None)]
        if gw_exe:
            gw, gw_base = start_gateway(args, gw_exe, stub_base, key, logdir)
            services.append(gw)
            targets.append(("gateway", gw_base, gw))
            meta["gateway"] = {"exe": gw_exe, "version": pkg_version(Path(gw_exe).parent, "citadel-gateway")}
        else:
            print("gateway: citadel-gateway not found (make the gateway venv: files/gateway/scripts/venv.sh)")
        if not args.no_bare:
            bare, bare_base = start_bare_proxy(args, stub_base, logdir)
            services.append(bare)
            targets.append(("bare", bare_base, bare))
        if have_litellm:
            lt, lt_base = start_litellm(args, lite_venv, stub_base, key, logdir)
            services.append(lt)
            targets.append(("litellm", lt_base, lt))
            meta["litellm"] = {"version": pkg_version(lite_venv / "bin", "litellm")}
        print(
            f"logs: {logdir}   stub: {args.stub}   pin: load={args.load_cpus or '-'} "
            f"servers={args.server_cpus or '-'}   loadavg {os.getloadavg()[0]:.1f}"
        )

        runs: list[dict] = []
        stream_runs: list[dict] = []
        for rnd in range(args.rounds):
            # Rotate the target order each round so no target always runs first/last.
            order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
            for conc in concs:
                for name, base, svc in order:
                    r = measure(args, name, base, key, conc, svc, stub)
                    r["round"] = rnd
                    runs.append(r)
                    print(
                        f"  round {rnd + 1} c={conc:<3} {name:8} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.2f} ms"
                        f"  p99 {r['p99_ms']:7.2f} ms  cpu/req {fmt(r['cpu_us_per_req'], '.0f'):>6} us"
                        f"  errors {r['errors']}",
                        flush=True,
                    )
            for conc, total in ((1, 10), (16, 48)):
                for name, base, svc in order:
                    settle([stub.pid] + ([svc.pid] if svc else []))
                    s = run_async(streams(base, key, conc, total))
                    s.update(target=name, conc=conc, round=rnd)
                    stream_runs.append(s)
                    print(
                        f"  round {rnd + 1} streams c={conc:<2} {name:8} first chunk {fmt(s['ttfc_p50_ms'])} ms"
                        f" (p95 {fmt(s['ttfc_p95_ms'])})  gap {fmt(s['gap_p50_ms'])} ms (p95 {fmt(s['gap_p95_ms'])})"
                        f"  errors {s['errors']}",
                        flush=True,
                    )
        profile = None
        if args.profile and gw_exe:
            profile = profile_gateway(args, gw, stub, gw_base, key, logdir)
        for svc in services[1:]:
            meta.setdefault("rss_mib", {})[svc.name] = round(rss_mib(svc.pid), 1)
    finally:
        for svc in reversed(services):
            svc.stop()

    # ---- medians and targets
    names = [t[0] for t in targets]
    summary: dict = {}
    for conc in concs:
        for name in names:
            rows = [r for r in runs if r["target"] == name and r["conc"] == conc]
            summary[f"{name}/c{conc}"] = {
                k: med(rows, k)
                for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "stub_cpu_us_per_req", "server_core")
            } | {"errors": sum(r["errors"] for r in rows)}
    ssum: dict = {}
    for conc in (1, 16):
        for name in names:
            rows = [s for s in stream_runs if s["target"] == name and s["conc"] == conc]
            ssum[f"{name}/c{conc}"] = {
                k: med(rows, k) for k in ("ttfc_p50_ms", "ttfc_p95_ms", "gap_p50_ms", "gap_p95_ms")
            } | {
                "errors": sum(s["errors"] for s in rows),
                "chunks_min": min((s["chunks_min"] for s in rows), default=0),
            }

    print()
    print(
        f"medians of {args.rounds} round(s), {args.duration:g} s wrk runs after {args.warmup:g} s warm-up; "
        f"loadavg {os.getloadavg()[0]:.1f} (other work on the machine skews all of this)"
    )
    for conc in concs:
        print(f"\nc={conc}")
        print(
            f"  {'target':8} {'req/s':>9} {'share':>6} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} "
            f"{'stub us/req':>11} {'core':>5} {'errors':>6}"
        )
        d = summary[f"direct/c{conc}"]["rps"]
        for name in names:
            s = summary[f"{name}/c{conc}"]
            print(
                f"  {name:8} {s['rps']:9.0f} {s['rps'] / d:6.3f} {s['p50_ms']:8.3f} {s['p99_ms']:8.2f} "
                f"{fmt(s['cpu_us_per_req'], '.0f'):>10} {fmt(s['stub_cpu_us_per_req'], '.0f'):>11} "
                f"{s['server_core']:5.2f} {s['errors']:6d}"
            )
    top_c = max(concs)
    # Proxies only: direct at c=64 can be bound by wrk's core instead (the stub needs ~35 us/request).
    starved = [n for n in names if n != "direct" and summary[f"{n}/c{top_c}"]["server_core"] < 0.85]
    if args.server_cpus and starved:
        print(
            f"\nWARNING: at c={top_c} the server core was busy with our servers only "
            + ", ".join(f"{n} {summary[f'{n}/c{top_c}']['server_core']:.0%}" for n in starved)
            + " of the time: other work held it, so those req/s understate what they can do"
            " (CPU us/request still holds)."
        )
    print("  (core = cores' worth of CPU used by stub + proxy during the run;")
    print("   bare = LAB.md's reference proxy: FastAPI + one aiohttp session, nothing else on)")
    print(f"\nstreams (first chunk / inter-chunk gap, ms; {args.chunks} events {args.chunk_interval_ms:g} ms apart)")
    print(f"  {'target':8} {'c':>3} {'first p50':>9} {'first p95':>9} {'gap p50':>8} {'gap p95':>8} {'errors':>6}")
    for conc in (1, 16):
        for name in names:
            s = ssum[f"{name}/c{conc}"]
            print(
                f"  {name:8} {conc:3d} {fmt(s['ttfc_p50_ms']):>9} {fmt(s['ttfc_p95_ms']):>9} "
                f"{fmt(s['gap_p50_ms']):>8} {fmt(s['gap_p95_ms']):>8} {s['errors']:6d}"
            )

    checks: list[dict] = []

    def check(name: str, value: float | None, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        checks.append({"target": name, "value": value, "status": status, "detail": detail})

    if "gateway" in names:
        top_c = max(concs)
        g, d = summary[f"gateway/c{top_c}"], summary[f"direct/c{top_c}"]
        share = g["rps"] / d["rps"]
        check(
            f"gateway req/s >= {TARGET_SHARE_C64:.0%} of direct at c={top_c}",
            share,
            share >= TARGET_SHARE_C64,
            f"{g['rps']:.0f} / {d['rps']:.0f} = {share:.3f}",
        )
        cpu = g["cpu_us_per_req"]
        check(f"gateway CPU <= {TARGET_CPU_US:.0f} us/request (c={top_c})", cpu, cpu <= TARGET_CPU_US, f"{cpu:.0f} us")
        if 1 in concs:
            added = summary["gateway/c1"]["p50_ms"] - summary["direct/c1"]["p50_ms"]
            check(
                f"added p50 at c=1 <= {TARGET_ADDED_P50_MS} ms",
                added,
                added <= TARGET_ADDED_P50_MS,
                f"{summary['gateway/c1']['p50_ms']:.3f} - {summary['direct/c1']['p50_ms']:.3f} = {added:.3f} ms",
            )
        if "litellm" in names:
            lt = summary[f"litellm/c{top_c}"]["rps"]
            if not lt:
                # Its latency at c=64 is ~2 s: a short run may complete nothing, which proves nothing.
                check(
                    f"gateway req/s >= {TARGET_VS_LITELLM:.0f}x LiteLLM at c={top_c}",
                    None,
                    None,
                    f"LiteLLM completed no request in {args.duration} s: inconclusive, use a longer --duration",
                )
            else:
                x = g["rps"] / lt
                check(
                    f"gateway req/s >= {TARGET_VS_LITELLM:.0f}x LiteLLM at c={top_c}",
                    x,
                    x >= TARGET_VS_LITELLM,
                    f"{g['rps']:.0f} / {lt:.0f} = {x:.1f}x",
                )
        else:
            check(
                f"gateway req/s >= {TARGET_VS_LITELLM:.0f}x LiteLLM",
                None,
                None,
                "LiteLLM not installed (loadtests/install-litellm.sh) or --no-litellm",
            )
        if "bare" in names:
            b = summary[f"bare/c{top_c}"]
            check(
                f"gateway (everything on) beats the bare proxy at c={top_c}",
                g["rps"] / b["rps"],
                g["rps"] > b["rps"],
                f"{g['rps']:.0f} vs {b['rps']:.0f} req/s ({share:.3f} vs {b['rps'] / d['rps']:.3f} of direct), "
                f"{fmt(g['cpu_us_per_req'], '.0f')} vs {fmt(b['cpu_us_per_req'], '.0f')} us CPU/request",
            )
        gerr = sum(summary[f"gateway/c{c}"]["errors"] for c in concs) + sum(
            ssum[f"gateway/c{c}"]["errors"] for c in (1, 16)
        )
        check("gateway: no errors or non-2xx", gerr, gerr == 0, f"{gerr} errors over all gateway runs")
        gs, ds = ssum["gateway/c1"], ssum["direct/c1"]
        if gs["ttfc_p50_ms"] is not None and ds["ttfc_p50_ms"] is not None:
            added = gs["ttfc_p50_ms"] - ds["ttfc_p50_ms"]
            check(
                f"stream first chunk adds <= {TARGET_TTFC_ADDED_MS} ms (c=1)",
                added,
                added <= TARGET_TTFC_ADDED_MS,
                f"{gs['ttfc_p50_ms']:.2f} - {ds['ttfc_p50_ms']:.2f} = {added:.2f} ms",
            )
        for conc in (1, 16):
            gs, ds = ssum[f"gateway/c{conc}"], ssum[f"direct/c{conc}"]
            if gs["gap_p50_ms"] is None or ds["gap_p50_ms"] is None:
                check(f"stream gap (c={conc})", None, False, "no chunks measured")
                continue
            diff = gs["gap_p50_ms"] - ds["gap_p50_ms"]
            check(
                f"stream median gap within +-{TARGET_GAP_TOL_MS} ms of sent (c={conc})",
                diff,
                abs(diff) <= TARGET_GAP_TOL_MS,
                f"{gs['gap_p50_ms']:.2f} ms through gateway vs {ds['gap_p50_ms']:.2f} ms direct",
            )
    else:
        check("gateway targets", None, False, "citadel-gateway not found: nothing measured")

    print("\ntargets")
    for c in checks:
        print(f"  {c['status']:4}  {c['target']:52} {c['detail']}")
    if "bare" in names:
        # The issue's targets were set against LAB.md's setup, where this proxy made 21 % of direct.
        top_c = max(concs)
        b = summary[f"bare/c{top_c}"]["rps"] / summary[f"direct/c{top_c}"]["rps"]
        verdict = "" if abs(b - LAB_BARE_SHARE) <= 0.05 else " -- so shares here are NOT comparable with the targets"
        print(
            f"  info  calibration: the bare proxy made {b:.2f} of direct at c={top_c} here, "
            f"{LAB_BARE_SHARE:.2f} in LAB.md's setup{verdict}"
        )
    if "gateway" in names:
        # On a busy machine req/s says more about the neighbours than the gateway; CPU per
        # request does not. What one core would do for stub + gateway at that cost (info only):
        top_c = max(concs)
        g = summary[f"gateway/c{top_c}"]
        per_req = (g["cpu_us_per_req"] or 0) + (g["stub_cpu_us_per_req"] or 0)
        if per_req:
            proj = 1e6 / per_req
            d = summary[f"direct/c{top_c}"]["rps"]
            print(
                f"  info  one core's worth of stub + gateway at c={top_c}: 1e6 / ({g['cpu_us_per_req']:.0f} + "
                f"{g['stub_cpu_us_per_req']:.0f} us) = {proj:.0f} req/s ({proj / d:.2f} of this run's direct)"
            )
    if profile:
        print(
            f"\ngateway profile (py-spy, c=64, {profile['samples']} samples, "
            f"{profile['run']['rps']:.0f} req/s, {fmt(profile['run']['cpu_us_per_req'], '.0f')} us CPU/request;"
            " us = share x CPU/request)"
        )
        print("  (stub on the load core meanwhile; C calls and syscalls count as their Python caller's own time)")
        print("  self (own time):")
        for r in profile["self"]:
            print(f"    {r['share']:6.1%} {r['us_per_req']:6.1f} us  {r['frame'][:130]}")
        for title, rows in (("inclusive", profile["inclusive"]), ("hottest lines (own time)", profile["lines"])):
            print(f"  {title}:")
            for r in rows:
                print(f"    {r['share']:6.1%} {r['us_per_req']:6.1f} us  {r['frame'][:130]}")

    meta["loadavg_after"] = os.getloadavg()
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    result = {
        "meta": meta,
        "summary": summary,
        "streams": ssum,
        "targets": checks,
        "profile": profile,
        "runs": [{k: v for k, v in r.items()} for r in runs],
        "stream_runs": stream_runs,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {out}  ({meta['elapsed_s']:.0f} s)")
    if args.keep_logs or args.profile:
        print(f"logs: {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    failed = any(c["status"] == "FAIL" for c in checks)
    return 1 if failed and not args.no_gate else 0


if __name__ == "__main__":
    sys.exit(main())
