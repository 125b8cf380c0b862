"""What the usage records cost the gateway, per request: run with the gateway's Python.

    usage_cost.py DATABASE_URL PASSWORD_FILE JOURNAL_DIR [REQUESTS]

Each request is what the gateway does for it in ``Gateway._finish`` for the records (its
access-log line, made even where the access log is off, then UsageWriter.record), and the real
writer inserts every row into the run's PostgreSQL in its batches; the figure is this process's
CPU (user + system, from getrusage) from the first event to the last row written, divided by the
requests; the median of three runs. The database's own CPU is not in it (on another host in
production). Prints one JSON line. Why a component measurement next to the A/B of
`gateway` and `gateway-nousage`: on this shared 2-core VM two runs of the same gateway differ by
±20 % CPU per request, so a 10 us difference is below what the A/B can resolve.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from types import SimpleNamespace

from citadel_gateway.accesslog import line
from citadel_gateway.config.schema import Usage
from citadel_gateway.records import UsageWriter


def _request(i: int) -> SimpleNamespace:
    """A finished chat request as the gateway holds it (context.Request's fields line() reads)."""
    return SimpleNamespace(
        rid=f"bench-{i:08x}".encode(),
        upstream_rid=f"up-{i:08x}-1".encode(),
        error=None,
        key=SimpleNamespace(name="bench"),
        requested="bench-model",
        model="bench-model",
        endpoint="chat",
        prompt_tokens=7,
        completion_tokens=3,
        ttft_s=None,
        replica="127.0.0.1:11400",
        attempts=1,
        cut=False,
    )


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def once(url: str, password: str, journal: str, n: int) -> dict:
    counts: dict = {k: 0 for k in ("queued", "written", "journaled", "replayed", "dropped")}
    cfg = Usage(database_url=url, password=password, gateway="usage-cost", journal_dir=journal, queue_max=n)
    w = UsageWriter(cfg, counts)
    w.start()
    reqs = [_request(i) for i in range(n)]
    await w._connection()  # connected before the clock starts: a gateway connects once
    t0 = _cpu()
    for i, req in enumerate(reqs):
        w.record(line(req, 200, 0.0012))
        if i % 64 == 63:
            await asyncio.sleep(0)  # let the flusher run between requests, as the server loop does
    while counts["written"] < n:
        await asyncio.sleep(0.01)
    cpu = _cpu() - t0
    await w.stop(5)
    if counts["written"] != n or counts["dropped"]:
        raise SystemExit(f"usage_cost: not every event was written: {counts}")
    return {"requests": n, "cpu_s": round(cpu, 4), "us_per_request": round(cpu / n * 1e6, 2)}


async def main(url: str, password_file: str, journal: str, n: int, runs: int = 3) -> dict:
    """The median of ``runs`` runs of ``n`` requests (the machine's noise, as everywhere here)."""
    with open(password_file, encoding="utf-8") as f:
        password = f.read().strip()
    results = [await once(url, password, journal, n) for _ in range(runs)]
    mid = sorted(results, key=lambda r: r["us_per_request"])[runs // 2]
    return {**mid, "runs_us": [r["us_per_request"] for r in results]}


if __name__ == "__main__":
    url, secret, journal = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
    print(json.dumps(asyncio.run(main(url, secret, journal, n))))
