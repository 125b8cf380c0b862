"""OpenAI-compatible load on the citadel gateway, with SLO gates from the catalog.

    locust --config loadtests/locust.conf        # what `make load` runs (loadtests/run.sh)

Each user sends a weighted mix per catalog model: short and medium chat
completions, streamed chats, text completions (models with `completion`),
embeddings (models with `embedding`). Every model/endpoint is one Locust row
("smollm2-135m chat short"); streamed chats add two derived rows, "<model>
stream ttft" (time to first token, ms) and "<model> stream tokens/s" (decode
rate after the first token; the row's "response time" columns hold tokens/s).

At the end (`quitting`) the SLO gates (loadtests/slo.py) compare each model's
short-request latency and error ratio to the catalog's `latency_ms` targets
and set the exit code. Options: `_options` below and loadtests/README.md.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from locust import FastHttpUser, LoadTestShape, events, task
from locust.runners import WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import catalog  # noqa: E402  (next to this file)
import slo  # noqa: E402

log = logging.getLogger("citadel.load")

KINDS = {
    "chat_short": slo.CHAT_SHORT,
    "chat_medium": slo.CHAT_MEDIUM,
    "stream": slo.STREAM,
    "completion": slo.COMPLETION,
    "embeddings": slo.EMBEDDINGS,
}
DEFAULT_MIX = "chat_short=4,chat_medium=1,stream=2,completion=2,embeddings=3"
# Source documents' load plan: 1, 5, 10, 20, 50 users, 60 s per step.
DEFAULT_STAGES = "1,5,10,20,50"

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for writing clear log messages.",
    "Explain what a load balancer does.",
    "Why is the sky blue?",
    "Summarise the benefits of unit tests.",
    "What does an HTTP 503 status mean?",
]
MEDIUM_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain step by step how a CPU executes an instruction.",
    "Describe how to plan a week-long hiking trip, from gear to food.",
]
COMPLETION_PROMPTS = [
    "The three most important properties of a distributed system are",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
]
EMBED_INPUTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Load tests measure latency under concurrency.",
    "An OpenAI-compatible gateway routes requests to model servers.",
    "Embeddings map text to vectors.",
]

# Filled at init from the inventory and the options.
PLAN: list[tuple[catalog.Model, str]] = []
WEIGHTS: list[float] = []
MODELS: list[catalog.Model] = []
# Raw response times per entry for the direct-vs-gateway comparison (Locust's own are rounded).
SAMPLES: dict[str, list[float]] = defaultdict(list)


@events.init_command_line_parser.add_listener
def _options(parser):
    g = parser.add_argument_group("citadel", "citadel-llm load test (catalog from the Ansible inventory)")
    g.add_argument(
        "--inventory",
        default=os.environ.get("INVENTORY") or str(catalog.DEFAULT_INVENTORY),
        help="Ansible inventory the catalog and replica URLs come from (default: $INVENTORY or inventory/lab)",
    )
    g.add_argument("--models", default="", help="Comma-separated catalog models to load (default: all)")
    g.add_argument("--mix", default=DEFAULT_MIX, help=f"Request kind weights (default: {DEFAULT_MIX})")
    g.add_argument("--short-tokens", type=int, default=50, help="max_tokens of short requests (documents: 50)")
    g.add_argument("--medium-tokens", type=int, default=200, help="max_tokens of medium and streamed chats (200)")
    g.add_argument(
        "--natural-length",
        action="store_true",
        default=False,
        help="Let models stop at end-of-sequence (default: ignore_eos, so every answer has max_tokens tokens)",
    )
    g.add_argument("--think-seconds", type=float, default=1.0, help="Mean wait between a user's requests")
    g.add_argument("--request-timeout", type=float, default=120.0, help="Per-request network timeout, s")
    # SLO gates: defaults from the catalog, overridable for a one-off run.
    g.add_argument(
        "--slo-p95-ms",
        action="append",
        default=[],
        help="Override p95 target: MODEL=MS (repeatable, comma-separated; MODEL 'all' for every model)",
    )
    g.add_argument("--slo-avg-ms", action="append", default=[], help="Override avg target: MODEL=MS")
    g.add_argument(
        "--slo-error-ratio", type=float, default=slo.DEFAULT_ERROR_RATIO, help="Max failed/requests per model"
    )
    # Staged ramp (LoadTestShape); without it -u/-r/-t apply as usual.
    g.add_argument("--staged", action="store_true", default=False, help=f"Staged ramp ({DEFAULT_STAGES} users)")
    g.add_argument("--stages", default=DEFAULT_STAGES, help="User counts of the staged ramp")
    g.add_argument("--stage-seconds", type=float, default=60.0, help="Duration of each stage, s")
    # Bypass or compare with the gateway.
    g.add_argument(
        "--direct",
        action="store_true",
        default=False,
        help="Send every request straight to the models' vLLM replicas (inventory), not to --host",
    )
    g.add_argument(
        "--compare-direct",
        default="",
        metavar="MODEL",
        help="Send MODEL's mix both through the gateway and straight to its replicas, interleaved; print p95 ratios",
    )
    g.add_argument(
        "--direct-url",
        action="append",
        default=[],
        help="Replica base URL(s) for --direct/--compare-direct (default: the model's replicas from the inventory)",
    )
    g.add_argument("--compare-max-ratio", type=float, default=1.05, help="Goal for p95 gateway/direct")
    g.add_argument(
        "--compare-gate",
        action="store_true",
        default=False,
        help="Fail the run when a p95 gateway/direct ratio exceeds --compare-max-ratio",
    )


def _parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, _, value = item.partition("=")
        if key.strip() not in KINDS:
            raise ValueError(f"--mix: unknown kind {key!r} (one of {', '.join(KINDS)})")
        mix[KINDS[key.strip()]] = float(value)
    return mix


def build_plan(models: list[catalog.Model], mix: dict[str, float]) -> list[tuple[catalog.Model, str, float]]:
    """(model, kind, weight) for every request kind a model's capabilities allow."""
    plan = []
    for model in models:
        kinds = []
        if "chat" in model.capabilities:
            kinds += [slo.CHAT_SHORT, slo.CHAT_MEDIUM, slo.STREAM]
        if "completion" in model.capabilities:
            kinds.append(slo.COMPLETION)
        if model.is_embedding:
            kinds.append(slo.EMBEDDINGS)
        plan += [(model, kind, mix.get(kind, 0.0)) for kind in kinds if mix.get(kind, 0.0) > 0]
    return plan


@events.init.add_listener
def _init(environment, **_kwargs):
    opts = environment.parsed_options
    if opts is None:  # Environment built by hand (tests): nothing to load
        return
    everything = catalog.load(opts.inventory)
    wanted = [m.strip() for m in opts.models.split(",") if m.strip()]
    if opts.compare_direct:
        wanted = [opts.compare_direct]
    names = {m.name for m in everything}
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; catalog of {opts.inventory}: {', '.join(names)}")
    # Validate overrides now, not after the run.
    try:
        slo.parse_overrides(opts.slo_p95_ms, names)
        slo.parse_overrides(opts.slo_avg_ms, names)
        mix = _parse_mix(opts.mix)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    MODELS[:] = [m for m in everything if not wanted or m.name in wanted]
    if opts.direct or opts.compare_direct:
        # a model at a base_url has no replica of the inventory to call straight
        outside = [m.name for m in MODELS if not m.replicas and not opts.direct_url]
        if outside and (opts.compare_direct or wanted):
            names = ", ".join(outside)
            raise SystemExit(f"{names}: served at a base_url, no replica to call directly; leave out --direct")
        MODELS[:] = [m for m in MODELS if m.name not in outside]
    plan = build_plan(MODELS, mix)
    if not plan:
        raise SystemExit("nothing to send: no model/kind with a positive --mix weight")
    PLAN[:] = [(m, kind) for m, kind, _ in plan]
    WEIGHTS[:] = [w for _, _, w in plan]
    if opts.compare_direct:
        environment.events.request.add_listener(_record_sample)
    if opts.staged:
        total = len([s for s in opts.stages.split(",") if s.strip()]) * opts.stage_seconds
        if opts.run_time and opts.run_time < total:
            log.warning("--run-time %ss ends the staged ramp early (it needs %.0fs)", opts.run_time, total)
    for model in MODELS:
        log.info(
            "model %s: targets avg %s / p95 %s ms; replicas %s",
            model.name,
            model.avg_ms,
            model.p95_ms,
            ", ".join(opts.direct_url or model.replicas),
        )


def _record_sample(request_type, name, response_time, exception=None, **_kwargs):
    if request_type == "POST" and exception is None:
        SAMPLES[name].append(response_time)


class CitadelShape(LoadTestShape):
    """Constant load (-u/-r/-t as usual) or, with --staged, the documents' stepped ramp."""

    use_common_options = True

    def tick(self):
        opts = self.runner.environment.parsed_options
        # Headless Locust waits for the shape before it would start its --run-time timer: honour it here.
        if opts.run_time and self.get_run_time() >= opts.run_time:
            return None
        if not opts.staged:
            return (opts.num_users, opts.spawn_rate)
        stages = [int(s) for s in opts.stages.split(",") if s.strip()]
        step = int(self.get_run_time() // opts.stage_seconds)
        if step >= len(stages):
            return None
        return (stages[step], opts.spawn_rate)


class OpenAIUser(FastHttpUser):
    """One client of the OpenAI-compatible API, sending the catalog's request mix."""

    def __init__(self, environment):
        super().__init__(environment)
        opts = environment.parsed_options
        self.opts = opts
        self.network_timeout = opts.request_timeout
        self.connection_timeout = 10.0
        key = os.environ.get("CITADEL_API_KEY", "")
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        # Each user walks the replicas round-robin from a random start, like the gateway's balancing.
        self.replicas = {
            m.name: itertools.islice(itertools.cycle(opts.direct_url or m.replicas), random.randrange(97), None)
            for m in MODELS
        }

    def wait_time(self):
        return random.uniform(0.5, 1.5) * self.opts.think_seconds

    def on_start(self):
        # One request of every kind first, so even a short run has a sample in every row.
        self.first_round = random.sample(PLAN, len(PLAN))

    @task
    def one_request(self):
        if self.first_round:
            model, kind = self.first_round.pop()
        else:
            model, kind = random.choices(PLAN, weights=WEIGHTS)[0]
        if self.opts.compare_direct:
            # Same request both ways, in random order, so both see the same machine load.
            for direct in random.sample([False, True], 2):
                self.send(model, kind, direct)
        else:
            self.send(model, kind, self.opts.direct)

    # -- requests ---------------------------------------------------------------------------------

    def send(self, model: catalog.Model, kind: str, direct: bool):
        # Entries keep the plain name in --direct mode (there is no gateway to compare with).
        name = slo.entry_name(model.name, kind, direct=direct and bool(self.opts.compare_direct))
        base = next(self.replicas[model.name]) if direct else ""
        headers = {} if direct else self.auth
        n_short, n_medium = self.opts.short_tokens, self.opts.medium_tokens
        fixed = {} if self.opts.natural_length else {"ignore_eos": True}
        if kind == slo.EMBEDDINGS:
            body = {"model": model.name, "input": random.choice(EMBED_INPUTS)}
            self.post(base + "/v1/embeddings", body, headers, name, _check_embeddings)
        elif kind == slo.COMPLETION:
            body = {"model": model.name, "prompt": random.choice(COMPLETION_PROMPTS), "max_tokens": n_short}
            self.post(base + "/v1/completions", {**body, "temperature": 0.7, **fixed}, headers, name, _check_text)
        elif kind in (slo.CHAT_SHORT, slo.CHAT_MEDIUM):
            prompt, tokens = (
                (random.choice(CHAT_PROMPTS), n_short)
                if kind == slo.CHAT_SHORT
                else (random.choice(MEDIUM_PROMPTS), n_medium)
            )
            body = {"model": model.name, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens}
            self.post(base + "/v1/chat/completions", {**body, "temperature": 0.7, **fixed}, headers, name, _check_chat)
        elif kind == slo.STREAM:
            body = {
                "model": model.name,
                "messages": [{"role": "user", "content": random.choice(MEDIUM_PROMPTS)}],
                "max_tokens": n_medium,
                "temperature": 0.7,
                "stream": True,
                "stream_options": {"include_usage": True},
                **fixed,
            }
            self.stream(base + "/v1/chat/completions", body, headers, name, model.name, direct)

    def post(self, url, body, headers, name, check):
        with self.client.post(url, json=body, headers=headers, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            try:
                problem = check(resp.json())
            except (ValueError, KeyError, TypeError, IndexError) as e:
                problem = f"bad response body: {e!r}"
            if problem:
                resp.failure(problem)

    def stream(self, url, body, headers, name, model_name, direct):
        # Read line by line from the socket: no compression that would buffer the events.
        headers = {**headers, "Accept": "text/event-stream", "Accept-Encoding": "identity"}
        start = time.perf_counter()
        with self.client.post(url, json=body, headers=headers, name=name, catch_response=True, stream=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            seen = _read_sse(resp._response)
            # The whole stream, not just its headers, is this request's time.
            resp.request_meta["response_time"] = (time.perf_counter() - start) * 1000
            resp.request_meta["response_length"] = seen["bytes"]
            if seen["error"]:
                resp.failure(seen["error"])
                return
        first, last = seen["first"], seen["last"]
        tokens = seen["usage_tokens"] or seen["deltas"]
        direct = direct and bool(self.opts.compare_direct)
        fire = self.environment.events.request.fire
        fire(
            request_type="TTFT",
            name=slo.entry_name(model_name, slo.STREAM_TTFT, direct),
            response_time=(first - start) * 1000,
            response_length=0,
            exception=None,
            context={},
        )
        if tokens > 1 and last > first:
            fire(
                request_type="TOK/S",
                name=slo.entry_name(model_name, slo.STREAM_TPS, direct),
                response_time=(tokens - 1) / (last - first),
                response_length=0,
                exception=None,
                context={},
            )


def _read_sse(raw) -> dict:
    """Read an OpenAI event stream to its end: arrival of first/last content, token counts, error if any.

    geventhttpclient's readline returns each line as soon as it arrives
    (iter_content(n) would wait for n bytes and delay the first token).
    """
    seen = {"first": None, "last": None, "deltas": 0, "usage_tokens": None, "bytes": 0, "error": None}
    done = False
    try:
        while True:
            line = raw.readline(b"\n")
            if not line:
                break
            seen["bytes"] += len(line)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            event = json.loads(data)
            if event.get("error"):
                seen["error"] = f"stream error: {str(event['error'])[:200]}"
                break
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    seen["deltas"] += 1
                    seen["last"] = time.perf_counter()
                    seen["first"] = seen["first"] or seen["last"]
            if event.get("usage"):
                seen["usage_tokens"] = event["usage"].get("completion_tokens")
        raw.read()  # drain the chunked terminator so the connection can be reused
    except Exception as e:  # any read or parse problem is this request's failure
        seen["error"] = f"stream broken: {e!r}"
    if not seen["error"] and (not done or seen["first"] is None):
        seen["error"] = f"stream ended without {'[DONE]' if seen['first'] else 'any content'}"
    return seen


def _check_chat(body: dict) -> str | None:
    if not body["choices"][0]["message"].get("content"):
        return "empty chat answer"
    return None


def _check_text(body: dict) -> str | None:
    if not body["choices"][0].get("text"):
        return "empty completion"
    return None


def _check_embeddings(body: dict) -> str | None:
    if not body["data"] or not body["data"][0]["embedding"]:
        return "no embedding"
    return None


# -- end of run: SLO gates ------------------------------------------------------------------------


def _streaming_table(stats) -> str:
    rows = [("model", "ttft p50 ms", "ttft p95 ms", "tokens/s avg", "tokens/s p50", "streams")]
    for model in MODELS:
        ttft = stats.entries.get((slo.entry_name(model.name, slo.STREAM_TTFT), "TTFT"))
        tps = stats.entries.get((slo.entry_name(model.name, slo.STREAM_TPS), "TOK/S"))
        if not ttft or not ttft.num_requests:
            continue
        rows.append(
            (
                model.name,
                f"{ttft.get_response_time_percentile(0.5):.0f}",
                f"{ttft.get_response_time_percentile(0.95):.0f}",
                f"{tps.avg_response_time:.1f}" if tps and tps.num_requests else "-",
                f"{tps.median_response_time:.0f}" if tps and tps.num_requests else "-",
                str(ttft.num_requests),
            )
        )
    if len(rows) == 1:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _write_csv(prefix: str, verdicts: list[slo.Verdict]) -> None:
    with open(f"{prefix}_slo.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["model", "metric", "target", "measured", "passed", "note"])
        for v in verdicts:
            out.writerow([v.model, v.metric, v.target, v.measured, v.passed, v.note])


@events.quitting.add_listener
def _slo_gates(environment, **_kwargs):
    if isinstance(environment.runner, WorkerRunner) or not MODELS:
        return
    opts = environment.parsed_options
    names = [m.name for m in MODELS]
    goals = slo.targets(
        MODELS,
        p95_ms=slo.parse_overrides(opts.slo_p95_ms, names),
        avg_ms=slo.parse_overrides(opts.slo_avg_ms, names),
        error_ratio=opts.slo_error_ratio,
    )
    verdicts = slo.evaluate(goals, slo.observe(environment.stats.entries.values()))
    print("\nStreaming (gateway)" if opts.compare_direct else "\nStreaming")
    print(_streaming_table(environment.stats) or "  no completed streams")
    print("\nSLO gates (latency: short requests; targets from the catalog, overrides from the command line)")
    print(slo.format_table(verdicts))
    code, line = slo.summary(verdicts)
    if opts.compare_direct:
        rows = slo.compare(SAMPLES)
        print(f"\nGateway vs direct ({opts.compare_direct}: {', '.join(opts.direct_url or MODELS[0].replicas)})")
        print(slo.format_comparison(rows, opts.compare_max_ratio))
        over = [r.endpoint for r in rows if r.ratio is not None and r.ratio > opts.compare_max_ratio]
        if opts.compare_gate and (over or not rows):
            code = 1
            line += f"; gateway/direct p95 over {opts.compare_max_ratio:g}x for: {', '.join(over) or 'no pairs'}"
    print(line)
    if opts.csv_prefix:
        _write_csv(opts.csv_prefix, verdicts)
    environment.process_exit_code = code
