"""Runs `vllm bench serve` (vLLM's serving benchmark) once per line of a plan, in one process.

Run by bench_cluster.py with the vllm-bench venv's Python (loadtests/vllm-bench.sh makes it):
importing vLLM takes ~15 s here, so the plan's runs share one import instead of paying it each.
Each plan line is {"name": ..., "key_env": VAR, "args": [vllm bench serve arguments...]}: the
bearer key comes from the environment variable VAR (never an argument, which the benchmark prints
and saves). One JSON line per run on stdout: {"name", "result"} with the benchmark's result dict,
or {"name", "error"}.

    python vllm_bench_driver.py PLAN.jsonl
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

KEEP = (
    "completed",
    "failed",
    "duration",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_input_tokens",
    "total_output_tokens",
)


def run(line: dict) -> dict:
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    args = parser.parse_args(line["args"])
    os.environ["OPENAI_API_KEY"] = os.environ[line["key_env"]]  # read by every request it sends
    # The benchmark prints its progress and a summary table: to stderr, stdout carries the results.
    with contextlib.redirect_stdout(sys.stderr):
        result = main(args)
    slim = {k: result[k] for k in KEEP if k in result}
    slim.update({k: v for k, v in result.items() if k.startswith(("mean_", "median_", "p50_", "p95_", "p99_"))})
    return slim


def main_() -> int:
    with open(sys.argv[1]) as f:
        plan = [json.loads(x) for x in f if x.strip()]
    for line in plan:
        try:
            out = {"name": line["name"], "result": run(line)}
        except Exception as e:  # noqa: BLE001 - a failed run is reported, the plan goes on
            traceback.print_exc(file=sys.stderr)
            out = {"name": line["name"], "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main_())
