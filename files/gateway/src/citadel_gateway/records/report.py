"""``citadel-gateway usage``: the per-model (or per-key) performance report, from PostgreSQL.

    citadel-gateway usage --database-url postgresql://citadel_report@DBHOST:5432/citadel_usage \\
        --password-file FILE [--since 24h|TIME] [--until TIME] [--by model|key] [--json]

Per model or key over the window: requests, error ratio (5xx or a cut stream), prompt and
completion tokens, p50/p95 latency, p50 time to first token (streams), and completion tokens per
second of generation (completion tokens over the latency of the requests that produced them).
One query, on the day partitions the window touches (the report role may only SELECT).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import decimal
import json
import re
import sys

_SINCE = re.compile(r"^(\d+)(m|h|d)$")
_QUERY = """
SELECT {by} AS name,
       count(*) AS requests,
       avg((status >= 500 OR cut)::int) AS error_ratio,
       coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens), 0) AS completion_tokens,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_ms,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p50_ms,
       sum(completion_tokens) FILTER (WHERE completion_tokens > 0)
         / nullif(sum(latency_ms) FILTER (WHERE completion_tokens > 0), 0) * 1000 AS tokens_per_s
FROM citadel.usage_events
WHERE ts >= $1 AND ts < $2
GROUP BY 1
ORDER BY 1
"""
COLUMNS = (
    "name",
    "requests",
    "error_ratio",
    "prompt_tokens",
    "completion_tokens",
    "p50_ms",
    "p95_ms",
    "ttft_p50_ms",
    "tokens_per_s",
)


def since(text: str) -> datetime.timedelta | datetime.datetime:
    """An age (30m, 24h, 7d) or a time (ISO 8601 with its offset, e.g. 2026-12-01T09:00:00Z)."""
    m = _SINCE.match(text)
    if m is not None:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return datetime.timedelta(**{unit: int(m.group(1))})
    return when(text)


def when(text: str) -> datetime.datetime:
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an age (30m, 24h, 7d) or a time with its offset (2026-12-01T09:00:00Z)"
        )
    return t


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="citadel-gateway usage", description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DB")
    p.add_argument("--password-file", required=True, metavar="FILE", help="the report role's password")
    p.add_argument(
        "--since",
        type=since,
        default=since("24h"),
        metavar="AGE|TIME",
        help="from: an age (30m, 24h, 7d; default 24h) or an ISO 8601 time with its offset",
    )
    p.add_argument("--until", type=when, default=None, metavar="TIME", help="to (excluded): ISO 8601 time (now)")
    p.add_argument("--by", choices=("model", "key"), default="model")
    p.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    return p


async def fetch(url: str, password: str, start: datetime.datetime, end: datetime.datetime, by: str) -> list[dict]:
    import asyncpg

    column = {"model": "coalesce(model, requested_model, '-')", "key": "coalesce(key_name, '-')"}[by]
    conn = await asyncpg.connect(url, password=password, timeout=10)
    try:
        rows = await conn.fetch(_QUERY.format(by=column), start, end, timeout=60)
    finally:
        await conn.close()
    # numeric aggregates (avg, sum of integers) come back as Decimal: plain numbers for JSON
    return [{k: (float(v) if isinstance(v, decimal.Decimal) else v) for k, v in dict(r).items()} for r in rows]


def table(rows: list[dict], by: str) -> str:
    head = (by, "requests", "errors", "prompt tok", "compl tok", "p50 ms", "p95 ms", "ttft p50", "tok/s")
    body = [
        (
            r["name"],
            str(r["requests"]),
            f"{100 * r['error_ratio']:.1f}%",
            str(r["prompt_tokens"]),
            str(r["completion_tokens"]),
            f"{r['p50_ms']:.0f}",
            f"{r['p95_ms']:.0f}",
            "-" if r["ttft_p50_ms"] is None else f"{r['ttft_p50_ms']:.0f}",
            "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in (head, *body)]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    try:
        with open(a.password_file, encoding="utf-8") as f:
            password = f.read().strip()
    except OSError as e:
        print(f"citadel-gateway usage: cannot read {a.password_file}: {e.strerror}", file=sys.stderr)
        return 2
    end = a.until or datetime.datetime.now(datetime.UTC)
    start = end - a.since if isinstance(a.since, datetime.timedelta) else a.since
    try:
        rows = asyncio.run(fetch(a.database_url, password, start, end, a.by))
    except (OSError, TimeoutError) as e:
        print(f"citadel-gateway usage: cannot reach the database: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - asyncpg's errors: auth, privileges, no such table
        print(f"citadel-gateway usage: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if a.json:
        for r in rows:
            print(json.dumps(r))
    else:
        span = f"{start:%Y-%m-%d %H:%M:%S%z} to {end:%Y-%m-%d %H:%M:%S%z}"
        print(table(rows, a.by) if rows else f"no requests from {span}")
    return 0
