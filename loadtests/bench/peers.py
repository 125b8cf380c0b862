"""The routers and gateways users would pick instead of ours, as bench_gateway.py runs them.

One entry per peer and one place per fact: which script installs it (the script, or the
lock it installs from, holds the pinned version), where that puts it under the cache, how it
is started in front of the stub (127.0.0.1 only), which headers a request needs, and its
kind: the Rust routers and the Python/Node gateways are compared with ours by different targets.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent  # loadtests/bench


@dataclass(frozen=True)
class Launch:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()  # variables of the harness's environment it must not see
    cwd: Path | None = None


@dataclass(frozen=True)
class Where:
    """What a peer's launch needs to know about this run."""

    home: Path  # its install directory
    port: int  # where it must listen (127.0.0.1)
    stub: str  # the stub's base URL
    key: str  # the run's API key
    logdir: Path  # this run's scratch directory
    free_port: Callable[[], int]  # for any other port it opens


@dataclass(frozen=True)
class Peer:
    name: str  # row name, and the key for --peers / --no-NAME
    kind: str  # "rust", "python" or "node"
    installer: str  # loadtests/<installer> installs the pinned version
    home: str  # its venv or node_modules directory, under the cache
    exe: str  # relative to home: there once installed
    dist: str  # the package whose installed version the results record
    launch: Callable[[Where], Launch]
    headers: Callable[[str], dict[str, str]] = lambda stub: {}  # stub base URL -> extra request headers
    ready_s: float = 60.0
    lists_models: bool = True  # its /v1/models names the stub's model (part of the readiness check)

    def path(self, cache: Path) -> Path:
        return cache / self.home

    def installed(self, cache: Path) -> bool:
        return (self.path(cache) / self.exe).exists()

    def version(self, cache: Path) -> str:
        home = self.path(cache)
        if self.kind == "node":
            pkg = home / "node_modules" / self.dist / "package.json"
            try:
                return json.loads(pkg.read_text())["version"]
            except (OSError, ValueError, KeyError):
                return "?"
        code = f"import importlib.metadata as m; print(m.version({self.dist!r}))"
        try:
            out = subprocess.run([str(home / "bin/python"), "-c", code], capture_output=True, text=True, timeout=30)
            return out.stdout.strip() or "?"
        except OSError:
            return "?"


def _rust_router(exe: str, *subcommand: str, extra: tuple[str, ...] = ()):
    def launch(w: Where) -> Launch:
        cmd = [str(w.home / "bin" / exe), *subcommand, "--host", "127.0.0.1", "--port", str(w.port)]
        cmd += ["--worker-urls", w.stub, "--policy", "round_robin", *extra]
        # Metrics stay on, as in ours; their listener defaults to port 29000 for every instance
        # (and, for sglang-router, to all interfaces): one port of its own, on 127.0.0.1.
        cmd += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(w.free_port())]
        return Launch(cmd)

    return launch


def _portkey(w: Where) -> Launch:
    # --port=N is its port flag (8787 without it); --headless: no web console, the server only.
    start = w.home / "node_modules/@portkey-ai/gateway/build/start-server.js"
    cmd = ["node", "-r", str(HERE / "portkey/localhost.cjs"), str(start), f"--port={w.port}", "--headless"]
    return Launch(cmd, cwd=w.home)


def _litellm(w: Where) -> Launch:
    env = {
        "BENCH_STUB_BASE": w.stub + "/v1",
        "BENCH_STUB_KEY": "unused",
        "LITELLM_MASTER_KEY": w.key,
        # Offline and quiet: bundled cost map (no fetch at start), no telemetry, no UI.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
        "DISABLE_ADMIN_UI": "True",
        "DO_NOT_TRACK": "1",
        "HOME": str(w.logdir),  # what it writes at start lands in the run's scratch directory
    }
    cmd = [str(w.home / "bin/litellm"), "--config", str(HERE / "litellm.yaml")]
    cmd += ["--host", "127.0.0.1", "--port", str(w.port), "--num_workers", "1"]
    return Launch(cmd, env, unset=("DATABASE_URL", "REDIS_HOST", "REDIS_URL"))


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "vllm-router",
            "rust",
            "install-routers.sh",
            "vllm-router-venv",
            "bin/vllm-router",
            "vllm-router",
            _rust_router("vllm-router"),
        ),
        Peer(
            "sglang-router",
            "rust",
            "install-routers.sh",
            "sglang-router-venv",
            "bin/sglang-router",
            "sglang-router",
            _rust_router("sglang-router", "launch", extra=("--backend", "openai")),
            lists_models=False,  # with --backend openai its /v1/models answers a placeholder model
        ),
        Peer(
            "portkey",
            "node",
            "install-portkey.sh",
            "portkey",
            "node_modules/@portkey-ai/gateway/build/start-server.js",
            "@portkey-ai/gateway",
            _portkey,
            # It routes by header: provider "openai" at a custom base URL (127.0.0.1 is trusted by default).
            headers=lambda stub: {"x-portkey-provider": "openai", "x-portkey-custom-host": stub + "/v1"},
            lists_models=False,  # /v1/models is not proxied to a custom host
        ),
        Peer(
            "litellm",
            "python",
            "install-litellm.sh",
            "litellm-venv",
            "bin/litellm",
            "litellm",
            _litellm,
            ready_s=120.0,
        ),
    )
}
