"""SLO gates for a load test: per model latency (avg, p95) and error ratio.

Plain Python (no Locust imports) so the rules are unit-tested without a run;
loadtests/locustfile.py feeds it Locust's stats entries at the end of a run.

Request entries are named "<model> <kind>" (one Locust row per model and
endpoint), with " @direct" appended for the direct half of a
gateway-vs-direct comparison. Latency targets come from the catalog
(`latency_ms: {avg, p95}`); they are gated on the *short* requests only
(`LATENCY_KINDS`): the source documents' targets (phi-3-mini 500/750 ms,
mixtral 2000/3000 ms) are what a ~50-token answer takes on those models, not
a 200-token one. Every real request of a model counts for its error ratio.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Entry kinds (the part of an entry name after the model).
CHAT_SHORT = "chat short"
CHAT_MEDIUM = "chat medium"
COMPLETION = "completion"
STREAM = "stream"
STREAM_TTFT = "stream ttft"
STREAM_TPS = "stream tokens/s"
EMBEDDINGS = "embeddings"

LATENCY_KINDS = frozenset({CHAT_SHORT, COMPLETION, EMBEDDINGS})
# Measurements fired as their own rows, not HTTP requests: no error ratio, no latency gate.
DERIVED_KINDS = frozenset({STREAM_TTFT, STREAM_TPS})
DIRECT_SUFFIX = " @direct"

DEFAULT_ERROR_RATIO = 0.01


def entry_name(model: str, kind: str, direct: bool = False) -> str:
    return f"{model} {kind}{DIRECT_SUFFIX if direct else ''}"


def parse_entry(name: str) -> tuple[str, str, bool]:
    """ "smollm2-135m chat short @direct" -> ("smollm2-135m", "chat short", True)."""
    direct = name.endswith(DIRECT_SUFFIX)
    if direct:
        name = name[: -len(DIRECT_SUFFIX)]
    model, _, kind = name.partition(" ")
    return model, kind, direct


@dataclass(frozen=True)
class Target:
    model: str
    avg_ms: float | None
    p95_ms: float | None
    error_ratio: float = DEFAULT_ERROR_RATIO


@dataclass
class Observed:
    model: str
    requests: int = 0  # every real request (error ratio)
    failures: int = 0
    latency_requests: int = 0  # the gated (short) requests
    total_ms: float = 0.0
    histogram: dict[int, int] | None = None

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def avg_ms(self) -> float | None:
        return self.total_ms / self.latency_requests if self.latency_requests else None

    @property
    def p95_ms(self) -> float | None:
        return histogram_percentile(self.histogram or {}, 0.95)


@dataclass(frozen=True)
class Verdict:
    model: str
    metric: str
    target: float | None
    measured: float | None
    passed: bool
    note: str = ""


def parse_overrides(values: Iterable[str] | None, known: Iterable[str] | None = None) -> dict[str, float]:
    """["smollm2-135m=1", "all=900"] -> {"smollm2-135m": 1.0, "all": 900.0}; "all" applies to every model."""
    out: dict[str, float] = {}
    names = set(known) if known is not None else None
    for value in values or []:
        for item in str(value).split(","):
            if not item.strip():
                continue
            model, sep, number = item.partition("=")
            model = model.strip()
            if not sep or not model:
                raise ValueError(f"expected MODEL=NUMBER, got {item!r}")
            try:
                parsed = float(number)
            except ValueError:
                raise ValueError(f"not a number in {item!r}") from None
            if parsed < 0 or math.isnan(parsed):
                raise ValueError(f"negative or NaN target in {item!r}")
            if names is not None and model != "all" and model not in names:
                raise ValueError(f"unknown model {model!r} (catalog: {', '.join(sorted(names))})")
            out[model] = parsed
    return out


def _pick(overrides: Mapping[str, float], model: str, default):
    if model in overrides:
        return overrides[model]
    return overrides.get("all", default)


def targets(
    catalog: Iterable,
    p95_ms: Mapping[str, float] | None = None,
    avg_ms: Mapping[str, float] | None = None,
    error_ratio: float = DEFAULT_ERROR_RATIO,
    error_ratios: Mapping[str, float] | None = None,
) -> dict[str, Target]:
    """Targets per model from catalog entries (objects with name, avg_ms, p95_ms), with one-off overrides."""
    out = {}
    for model in catalog:
        out[model.name] = Target(
            model=model.name,
            avg_ms=_pick(avg_ms or {}, model.name, model.avg_ms),
            p95_ms=_pick(p95_ms or {}, model.name, model.p95_ms),
            error_ratio=_pick(error_ratios or {}, model.name, error_ratio),
        )
    return out


def histogram_percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """Nearest-rank percentile of a {response_time_ms: count} histogram (Locust's own storage)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def percentile(samples: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile of raw samples."""
    ordered = sorted(samples)
    if not ordered:
        return None
    return float(ordered[max(1, math.ceil(q * len(ordered))) - 1])


def observe(entries: Iterable) -> dict[str, Observed]:
    """Aggregate stats entries per model.

    `entries` are objects shaped like locust.stats.StatsEntry: name,
    num_requests, num_failures, total_response_time, response_times
    ({rounded ms: count}). Direct-mode and derived rows are left out.
    """
    out: dict[str, Observed] = {}
    for entry in entries:
        model, kind, direct = parse_entry(entry.name)
        if direct or kind in DERIVED_KINDS or not kind:
            continue
        obs = out.setdefault(model, Observed(model=model, histogram={}))
        obs.requests += entry.num_requests
        obs.failures += entry.num_failures
        if kind in LATENCY_KINDS:
            # Locust keeps response times of successful and failed requests alike.
            obs.latency_requests += entry.num_requests
            obs.total_ms += entry.total_response_time
            for value, count in entry.response_times.items():
                obs.histogram[value] = obs.histogram.get(value, 0) + count
    return out


def evaluate(goals: Mapping[str, Target], observed: Mapping[str, Observed]) -> list[Verdict]:
    """One verdict per model and metric. A model with a target but no requests fails."""
    verdicts = []
    for model, goal in goals.items():
        obs = observed.get(model)
        if obs is None or obs.requests == 0:
            verdicts.append(Verdict(model, "requests", 1, 0, False, "no requests measured"))
            continue
        for metric, target, measured in (
            ("p95 ms", goal.p95_ms, obs.p95_ms),
            ("avg ms", goal.avg_ms, obs.avg_ms),
        ):
            if target is None:
                continue
            if measured is None:
                verdicts.append(Verdict(model, metric, target, None, False, "no short requests measured"))
            else:
                verdicts.append(Verdict(model, metric, target, measured, measured <= target))
        verdicts.append(
            Verdict(
                model,
                "error ratio",
                goal.error_ratio,
                obs.error_ratio,
                obs.error_ratio <= goal.error_ratio,
                f"{obs.failures}/{obs.requests} failed",
            )
        )
    return verdicts


def failing_models(verdicts: Iterable[Verdict]) -> list[str]:
    out: list[str] = []
    for v in verdicts:
        if not v.passed and v.model not in out:
            out.append(v.model)
    return out


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "error ratio":
        return f"{value * 100:.2f} %"
    if metric == "requests":
        return f"{value:.0f}"
    return f"{value:.0f}"


def format_table(verdicts: Iterable[Verdict]) -> str:
    rows = [("model", "metric", "target", "measured", "verdict")]
    for v in verdicts:
        verdict = "PASS" if v.passed else "FAIL"
        rows.append(
            (v.model, v.metric, _fmt(v.metric, v.target), _fmt(v.metric, v.measured), f"{verdict} {v.note}".strip())
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(verdicts: list[Verdict]) -> tuple[int, str]:
    """(exit code, one line) for the end of a run."""
    failing = failing_models(verdicts)
    if failing:
        return 1, f"SLO gates FAILED for: {', '.join(failing)}"
    return 0, "SLO gates passed"


@dataclass(frozen=True)
class Comparison:
    endpoint: str
    gateway_p95_ms: float | None
    direct_p95_ms: float | None
    gateway_n: int
    direct_n: int
    gateway_p50_ms: float | None = None
    direct_p50_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        if not self.gateway_p95_ms or not self.direct_p95_ms:
            return None
        return self.gateway_p95_ms / self.direct_p95_ms


def compare(samples: Mapping[str, list[float]]) -> list[Comparison]:
    """Pair "<model> <kind>" with "<model> <kind> @direct" raw samples: p95 of each side."""
    out = []
    for name in sorted(samples):
        model, kind, direct = parse_entry(name)
        if direct:
            continue
        other = samples.get(entry_name(model, kind, direct=True))
        if other is None:
            continue
        gw = samples[name]
        out.append(
            Comparison(
                name,
                percentile(gw, 0.95),
                percentile(other, 0.95),
                len(gw),
                len(other),
                percentile(gw, 0.5),
                percentile(other, 0.5),
            )
        )
    return out


def format_comparison(rows: Iterable[Comparison], max_ratio: float) -> str:
    table = [
        (
            "endpoint",
            "n gw/direct",
            "p95 gateway ms",
            "p95 direct ms",
            "p95 ratio",
            f"within {max_ratio:g}x",
            "p50 ratio",
        )
    ]

    def ms(value):
        return "-" if value is None else f"{value:.1f}"

    for c in rows:
        ok = "-" if c.ratio is None else ("yes" if c.ratio <= max_ratio else "NO")
        p50 = c.gateway_p50_ms / c.direct_p50_ms if c.gateway_p50_ms and c.direct_p50_ms else None
        table.append(
            (
                c.endpoint,
                f"{c.gateway_n}/{c.direct_n}",
                ms(c.gateway_p95_ms),
                ms(c.direct_p95_ms),
                "-" if c.ratio is None else f"{c.ratio:.3f}",
                ok,
                "-" if p50 is None else f"{p50:.3f}",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
