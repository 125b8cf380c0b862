"""bench_gateway.py's report: medians, the table of every system, and the issue's targets.

The harness (../bench_gateway.py) measures; this turns its runs into medians over rounds,
prints them, and checks them against the targets below (PASS / FAIL / SKIP per target).
"""

from __future__ import annotations

import os
import statistics

# The issue's targets. Each is checked on the medians over rounds.
TARGET_SHARE_C64 = 0.30  # gateway req/s >= 30 % of direct at c=64
TARGET_CPU_US = 250.0  # gateway CPU per request (c=64, all its processes)
TARGET_ADDED_P50_MS = 0.5  # gateway p50 - direct p50 at c=1
TARGET_VS_LITELLM = 20.0  # gateway req/s >= 20x LiteLLM's at c=64
TARGET_TTFC_ADDED_MS = 2.0  # first SSE chunk, gateway - direct, c=1
TARGET_GAP_TOL_MS = 1.0  # median inter-chunk gap through the gateway vs as sent (direct)
TARGET_VS_SLOW = 5.0  # gateway req/s >= 5x the best Python/Node gateway's (LiteLLM, Portkey) at c=64
TARGET_USAGE_US = 10.0  # usage rows in PostgreSQL: gateway - gateway-nousage CPU per request at c=64
TARGET_CACHE_HIT_MS = 2.0  # a response-cache hit (gateway-cached, paired c=1): added p99 over direct
# And against the best Rust router (vllm-router, sglang-router): CPU per request (c=64) and
# added p99 at c=1 no worse than its; the gateway with everything on while measured.
# The issue's targets were set where the bare FastAPI + aiohttp proxy made 21 % of direct at
# c=64; the calibration line compares this run's share with that.
REF_BARE_SHARE = 0.21


def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def summarize(runs: list[dict], stream_runs: list[dict], names: list[str], concs: list[int]) -> tuple[dict, dict]:
    summary: dict = {}
    for conc in concs:
        for name in names:
            rows = [r for r in runs if r["target"] == name and r["conc"] == conc]
            summary[f"{name}/c{conc}"] = {
                k: med(rows, k)
                for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "stub_cpu_us_per_req", "server_core")
            } | {"errors": sum(r["errors"] for r in rows), "cpu_rounds": [r["cpu_us_per_req"] for r in rows]}
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
    return summary, ssum


def paired_added(paired_runs: list[dict]) -> dict[str, dict]:
    """Per system of the paired c=1 runs (bench/paired.py): p50 and p99 minus direct's of the
    same round, their medians over rounds, every round's p99, and the errors."""
    by_round: dict[int, dict[str, dict]] = {}
    for r in paired_runs:
        by_round.setdefault(r["round"], {})[r["target"]] = r
    out: dict[str, dict] = {}
    for rows in by_round.values():
        d = rows.get("direct")
        for name, r in rows.items():
            o = out.setdefault(name, {"p50": [], "p99": [], "errors": 0})
            o["errors"] += r["errors"]
            if name != "direct" and d and None not in (r["p99_ms"], d["p99_ms"]):
                o["p50"].append(r["p50_ms"] - d["p50_ms"])
                o["p99"].append(r["p99_ms"] - d["p99_ms"])
    return {
        name: {
            "added_p50_ms": statistics.median(o["p50"]) if o["p50"] else None,
            "added_p99_ms": statistics.median(o["p99"]) if o["p99"] else None,
            "added_p99_rounds": o["p99"],
            "errors": o["errors"],
        }
        for name, o in out.items()
    }


def _spread(values: list) -> str:
    return "/".join(fmt(v, ".0f") for v in values)


def systems_table(
    summary: dict, ssum: dict, names: list[str], concs: list[int], meta: dict, paired: dict
) -> list[dict]:
    """One row per system: top-concurrency req/s and share, CPU/request, added latency at c=1
    (wrk, and paired where measured), errors."""
    top_c = max(concs)
    d = summary[f"direct/c{top_c}"]["rps"]
    rows = []
    for name in names:
        s = summary[f"{name}/c{top_c}"]
        row = {
            "system": name,
            "kind": meta["kinds"].get(name),
            "version": meta["versions"].get(name),
            "conc": top_c,
            "rps": s["rps"],
            "share": s["rps"] / d if d else None,
            "cpu_us_per_req": s["cpu_us_per_req"],
            "errors": sum(summary[f"{name}/c{c}"]["errors"] for c in concs) + paired.get(name, {}).get("errors", 0),
            "stream_errors": sum(ssum[f"{name}/c{c}"]["errors"] for c in (1, 16)),
        }
        if name in paired and name != "direct":
            row["paired_added_p50_c1_ms"] = paired[name]["added_p50_ms"]
            row["paired_added_p99_c1_ms"] = paired[name]["added_p99_ms"]
            row["paired_added_p99_c1_rounds"] = paired[name]["added_p99_rounds"]
        if 1 in concs and name != "direct":
            one, base = summary[f"{name}/c1"], summary["direct/c1"]
            row["added_p50_c1_ms"] = one["p50_ms"] - base["p50_ms"]
            row["added_p99_c1_ms"] = one["p99_ms"] - base["p99_ms"]
        st, sd = ssum[f"{name}/c1"], ssum["direct/c1"]
        if name != "direct" and st["ttfc_p50_ms"] is not None and sd["ttfc_p50_ms"] is not None:
            row["stream_added_ttfc_c1_ms"] = st["ttfc_p50_ms"] - sd["ttfc_p50_ms"]
        rows.append(row)
    return rows


def evaluate(
    args,
    summary: dict,
    ssum: dict,
    table: list[dict],
    concs: list[int],
    hard: dict | None,
    cost: dict | None = None,
    paired: dict | None = None,
) -> list[dict]:
    checks: list[dict] = []

    def check(name: str, value: float | None, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        checks.append({"target": name, "value": value, "status": status, "detail": detail})

    rows = {r["system"]: r for r in table}
    if "gateway" not in rows:
        check("gateway targets", None, False, "citadel-gateway not found: nothing measured")
        return checks
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
        added = rows["gateway"]["added_p50_c1_ms"]
        check(
            f"added p50 at c=1 <= {TARGET_ADDED_P50_MS} ms",
            added,
            added <= TARGET_ADDED_P50_MS,
            f"{summary['gateway/c1']['p50_ms']:.3f} - {summary['direct/c1']['p50_ms']:.3f} = {added:.3f} ms",
        )

    # The accounting (usage rows in PostgreSQL): decided on the component measurement
    # (bench/usage_cost.py); the A/B of ours with and without, same rounds, is printed beside it.
    name = f"usage records add <= {TARGET_USAGE_US:.0f} us CPU/request"
    if cost is None:
        check(name, None, None, "left out (--no-usage)")
    else:
        us = cost["us_per_request"]
        runs = "/".join(f"{v:.1f}" for v in cost["runs_us"])
        detail = f"{us:.1f} us (runs: {runs}; {cost['requests']} events each, recorded and inserted)"
        if f"gateway-nousage/c{top_c}" in summary:
            off = summary[f"gateway-nousage/c{top_c}"]
            per_round = [a - b for a, b in zip(g["cpu_rounds"], off["cpu_rounds"], strict=True)]
            detail += (
                f"; A/B at c={top_c}: {cpu:.0f} - {off['cpu_us_per_req']:.0f} (gateway-nousage) = "
                f"{cpu - off['cpu_us_per_req']:+.0f} us (rounds: {'/'.join(f'{v:+.0f}' for v in per_round)})"
            )
        check(name, us, us <= TARGET_USAGE_US, detail)

    # The response cache: ours answering the benchmark's greedy request from memory, request by
    # request beside direct (which asks the stub) in the paired c=1 run.
    name = f"a response-cache hit adds <= {TARGET_CACHE_HIT_MS} ms at c=1 (paired p99)"
    hit = (paired or {}).get("gateway-cached")
    if hit is None or hit["added_p99_ms"] is None:
        check(name, None, None, "not measured (--no-cache, or --paired-seconds 0)")
    else:
        added = hit["added_p99_ms"]
        rounds = "/".join(f"{v:.3f}" for v in hit["added_p99_rounds"])
        check(
            name,
            added,
            added <= TARGET_CACHE_HIT_MS,
            f"p50 {hit['added_p50_ms']:+.3f} ms, p99 {added:+.3f} ms over direct (rounds: {rounds})",
        )

    # Against the routers users would pick instead (bench/peers.py).
    rust = [r for r in table if r["kind"] == "rust"]
    left = f"none measured (left out: {', '.join(args.left_out) or '-'})"
    if not rust:
        check("gateway CPU/request <= the best Rust router's", None, None, left)
    else:
        best = min(rust, key=lambda r: r["cpu_us_per_req"])

        def rounds(name: str) -> str:
            return _spread(summary[f"{name}/c{top_c}"]["cpu_rounds"])

        check(
            f"gateway CPU/request <= the best Rust router's (c={top_c})",
            cpu / best["cpu_us_per_req"],
            cpu <= best["cpu_us_per_req"],
            f"{cpu:.0f} vs {best['system']} {best['cpu_us_per_req']:.0f} us = {cpu / best['cpu_us_per_req']:.2f}x"
            + "".join(f"; {r['system']} {r['cpu_us_per_req']:.0f}" for r in rust if r is not best)
            + f" (rounds: ours {rounds('gateway')}; "
            + "; ".join(f"{r['system']} {rounds(r['system'])}" for r in rust)
            + ")",
        )
    # At c=1 the paired run (request by request, the same seconds for every system) decides;
    # without it (--paired-seconds 0), wrk's one-system-at-a-time runs.
    key = "paired_added_p99_c1_ms" if "paired_added_p99_c1_ms" in rows.get("gateway", {}) else "added_p99_c1_ms"
    how = "paired" if key.startswith("paired") else "wrk"
    rust_p99 = [r for r in rust if r.get(key) is not None]
    if not rust_p99:
        why = left if not rust else "no c=1 run"
        check("gateway added p99 at c=1 <= the best Rust router's", None, None, why)
    else:
        ours = rows["gateway"][key]
        best = min(rust_p99, key=lambda r: r[key])

        def each(r: dict) -> str:
            per = r.get("paired_added_p99_c1_rounds") if how == "paired" else None
            return f" ({'/'.join(f'{v:+.2f}' for v in per)})" if per else ""

        check(
            f"gateway added p99 at c=1 <= the best Rust router's ({how})",
            ours - best[key],
            ours <= best[key],
            f"{ours:+.2f}{each(rows['gateway'])} vs {best['system']} {best[key]:+.2f}{each(best)} ms"
            + "".join(f"; {r['system']} {r[key]:+.2f}{each(r)}" for r in rust_p99 if r is not best),
        )
    slow = [r for r in table if r["kind"] in ("python", "node")]
    name = f"gateway req/s >= {TARGET_VS_SLOW:.0f}x the best Python/Node gateway's at c={top_c}"
    if not slow:
        check(name, None, None, left)
    elif not max(r["rps"] for r in slow):
        # At c=64 their latency can pass a short run's length: completing nothing proves nothing.
        check(name, None, None, f"none completed a request in {args.duration} s: use a longer --duration")
    else:
        best = max(slow, key=lambda r: r["rps"])
        x = g["rps"] / best["rps"]
        check(name, x, x >= TARGET_VS_SLOW, f"{g['rps']:.0f} / {best['system']} {best['rps']:.0f} = {x:.1f}x")
    if "litellm" in rows:
        lt = rows["litellm"]["rps"]
        name = f"gateway req/s >= {TARGET_VS_LITELLM:.0f}x LiteLLM at c={top_c}"
        if not lt:
            check(name, None, None, f"LiteLLM completed no request in {args.duration} s: use a longer --duration")
        else:
            check(
                name,
                g["rps"] / lt,
                g["rps"] / lt >= TARGET_VS_LITELLM,
                f"{g['rps']:.0f} / {lt:.0f} = {g['rps'] / lt:.1f}x",
            )
    else:
        check(f"gateway req/s >= {TARGET_VS_LITELLM:.0f}x LiteLLM", None, None, "left out (--no-litellm / --peers)")
    if hard is not None:
        check(
            "gateway measured with everything on",
            len(hard["problems"]),
            not hard["problems"],
            "; ".join(hard["problems"])
            or f"no key -> {hard['no_key_status']}; {hard['metered']:.0f} metered, {hard['access_lines']} access log "
            f"lines for {hard['served']} served; 0 rejected (per-key limits, admission)",
        )
    if "bare" in rows:
        b = summary[f"bare/c{top_c}"]
        check(
            f"gateway (everything on) beats the bare proxy at c={top_c}",
            g["rps"] / b["rps"],
            g["rps"] > b["rps"],
            f"{g['rps']:.0f} vs {b['rps']:.0f} req/s ({share:.3f} vs {b['rps'] / d['rps']:.3f} of direct), "
            f"{fmt(g['cpu_us_per_req'], '.0f')} vs {fmt(b['cpu_us_per_req'], '.0f')} us CPU/request",
        )
    gerr = rows["gateway"]["errors"] + rows["gateway"]["stream_errors"]
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
    return checks


def report(args, summary: dict, ssum: dict, table: list[dict], names: list[str], concs: list[int]) -> None:
    w = max(8, *(len(n) for n in names))
    print(
        f"\nmedians of {args.rounds} round(s), {args.duration:g} s wrk runs after {args.warmup:g} s warm-up; "
        f"loadavg {os.getloadavg()[0]:.1f} (other work on the machine skews all of this)"
    )
    for conc in concs:
        print(f"\nc={conc}")
        print(
            f"  {'target':{w}} {'req/s':>9} {'share':>6} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} "
            f"{'stub us/req':>11} {'core':>5} {'errors':>6}"
        )
        d = summary[f"direct/c{conc}"]["rps"]
        for name in names:
            s = summary[f"{name}/c{conc}"]
            print(
                f"  {name:{w}} {s['rps']:9.0f} {s['rps'] / d:6.3f} {s['p50_ms']:8.3f} {s['p99_ms']:8.2f} "
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
    print("   bare = the reference proxy: FastAPI + one aiohttp session, nothing else on)")

    print(
        "\nall systems (gateway = ours, everything on; added = minus direct; errors = non-2xx + socket, all wrk runs)"
    )
    print(
        f"  {'system':{w}} {'version':>8} {f'c={top_c} req/s':>11} {'share':>6} {'CPU us/req':>10} "
        f"{'added p50/p99 c=1 ms, wrk':>26} {'paired':>13} {'errors':>6}"
    )
    for r in table:
        wrk_c1 = f"{fmt(r.get('added_p50_c1_ms'), '+.2f')} / {fmt(r.get('added_p99_c1_ms'), '+.2f')}"
        pair = f"{fmt(r.get('paired_added_p50_c1_ms'), '+.2f')} / {fmt(r.get('paired_added_p99_c1_ms'), '+.2f')}"
        print(
            f"  {r['system']:{w}} {r['version'] or '-':>8} {r['rps']:11.0f} {fmt(r['share'], '.2f'):>6} "
            f"{fmt(r['cpu_us_per_req'], '.0f'):>10} {wrk_c1:>26} {pair:>13} {r['errors']:6d}"
        )
    print("  (paired: c=1 request by request across direct, ours and the Rust routers, bench/paired.py)")
    if failing := [r for r in table if r["errors"] or r["stream_errors"]]:
        print(
            "  NOTE errors (non-2xx or socket; their logs: --keep-logs): "
            + ", ".join(f"{r['system']} {r['errors']} wrk / {r['stream_errors']} streams" for r in failing)
        )
    print(f"\nstreams (first chunk / inter-chunk gap, ms; {args.chunks} events {args.chunk_interval_ms:g} ms apart)")
    print(
        f"  {'target':{w}} {'c':>3} {'first p50':>9} {'added':>7} {'first p95':>9} "
        f"{'gap p50':>8} {'gap p95':>8} {'errors':>6}"
    )
    for conc in (1, 16):
        for name in names:
            s, sd = ssum[f"{name}/c{conc}"], ssum[f"direct/c{conc}"]
            added = (
                None
                if name == "direct" or None in (s["ttfc_p50_ms"], sd["ttfc_p50_ms"])
                else s["ttfc_p50_ms"] - sd["ttfc_p50_ms"]
            )
            print(
                f"  {name:{w}} {conc:3d} {fmt(s['ttfc_p50_ms']):>9} {fmt(added, '+.2f'):>7} {fmt(s['ttfc_p95_ms']):>9} "
                f"{fmt(s['gap_p50_ms']):>8} {fmt(s['gap_p95_ms']):>8} {s['errors']:6d}"
            )


def print_targets(checks: list[dict], summary: dict, names: list[str], concs: list[int]) -> None:
    print("\ntargets")
    for c in checks:
        print(f"  {c['status']:4}  {c['target']:60} {c['detail']}")
    top_c = max(concs)
    if "bare" in names:
        # The issue's targets were set where this proxy made 21 % of direct.
        b = summary[f"bare/c{top_c}"]["rps"] / summary[f"direct/c{top_c}"]["rps"]
        verdict = "" if abs(b - REF_BARE_SHARE) <= 0.05 else " -- so shares here are NOT comparable with the targets"
        print(
            f"  info  calibration: the bare proxy made {b:.2f} of direct at c={top_c} here, "
            f"{REF_BARE_SHARE:.2f} where the targets were set{verdict}"
        )
    if "gateway" in names:
        # On a busy machine req/s says more about the neighbours than the gateway; CPU per
        # request does not. What one core would do for stub + gateway at that cost (info only):
        g = summary[f"gateway/c{top_c}"]
        per_req = (g["cpu_us_per_req"] or 0) + (g["stub_cpu_us_per_req"] or 0)
        if per_req:
            proj = 1e6 / per_req
            d = summary[f"direct/c{top_c}"]["rps"]
            print(
                f"  info  one core's worth of stub + gateway at c={top_c}: 1e6 / ({g['cpu_us_per_req']:.0f} + "
                f"{g['stub_cpu_us_per_req']:.0f} us) = {proj:.0f} req/s ({proj / d:.2f} of this run's direct)"
            )


def print_profile(profile: dict) -> None:
    print(
        f"\ngateway profile (py-spy, c=64, {profile['samples']} samples, "
        f"{profile['run']['rps']:.0f} req/s, {fmt(profile['run']['cpu_us_per_req'], '.0f')} us CPU/request;"
        " us = share x CPU/request)"
    )
    print("  (stub on the load core meanwhile; C calls and syscalls count as their Python caller's own time)")
    for title, rows in (
        ("self (own time)", profile["self"]),
        ("inclusive", profile["inclusive"]),
        ("hottest lines (own time)", profile["lines"]),
    ):
        print(f"  {title}:")
        for r in rows:
            print(f"    {r['share']:6.1%} {r['us_per_req']:6.1f} us  {r['frame'][:130]}")
