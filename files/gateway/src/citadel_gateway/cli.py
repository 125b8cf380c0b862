"""``citadel-gateway`` console script."""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
import sys

from . import __version__
from . import config as C


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="citadel-gateway", description="OpenAI-compatible gateway for citadel-llm")
    p.add_argument("--config", metavar="FILE", help="full YAML config (see README); SIGHUP reloads it")
    p.add_argument("--check-config", metavar="FILE", help="validate FILE and exit 0 (valid) or 1 (invalid)")
    p.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="MODEL=URL",
        help="a replica of MODEL (repeat; a model given twice has two replicas)",
    )
    p.add_argument(
        "--api-key", action="append", default=[], metavar="KEY", help="accepted API key (repeat); none: auth is off"
    )
    p.add_argument("--host", help="bind address (default: server.host, 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default: server.port, 8000)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=__version__)
    return p


def build_config(args) -> tuple[C.Config, str | None]:
    """The config to serve and its version (the config file's sha256; None with ``--backend``:
    the file is not the whole truth then)."""
    digests = [(f"cli-{i + 1}", hashlib.sha256(k.encode()).hexdigest()) for i, k in enumerate(args.api_key)]
    base, version = C.load_versioned(args.config) if args.config else (None, None)
    if args.backend:
        version = None
        cfg = C.from_backends(args.backend, digests, base)
    elif base is not None:
        cfg = base
        if digests:
            from dataclasses import replace

            cfg = replace(cfg, auth=C.Auth(required=True, keys=tuple(C.ApiKey(n, d) for n, d in digests)))
    else:
        raise C.ConfigError("give --config FILE or at least one --backend MODEL=URL")
    from dataclasses import replace

    server = cfg.server
    if args.host:
        server = replace(server, host=args.host)
    if args.port is not None:
        server = replace(server, port=args.port)
    return replace(cfg, server=server), version


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["usage"]:  # the report (records/report.py), not the server
        from .records import report

        return report.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.check_config:
        try:
            cfg = C.load(args.check_config)
        except C.ConfigError as e:
            print(f"invalid: {e}", file=sys.stderr)
            return 1
        print(f"ok: {len(cfg.models)} models, {len(cfg.auth.keys)} keys")
        return 0
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        cfg, version = build_config(args)
    except C.ConfigError as e:
        print(f"citadel-gateway: config error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from .app import build_app
    from .server import GatewayHttpProtocol, ListenError, check_uvicorn, describe, inherited_sockets, listening_sockets

    try:
        check_uvicorn()  # server/ subclasses uvicorn internals: refuse to start on anything else
    except RuntimeError as e:
        print(f"citadel-gateway: {e}", file=sys.stderr)
        return 3
    try:
        # Started by citadel-gateway.socket: serve its socket (server.host/port do not apply),
        # which outlives this process, so a restart refuses no connection.
        inherited = inherited_sockets()
        sockets = listening_sockets(inherited, cfg.server.host, cfg.server.port, cfg.server.metrics_port)
    except ListenError as e:
        print(f"citadel-gateway: {e}", file=sys.stderr)
        return 4

    app = build_app(cfg, args.config if not args.backend else None, config_version=version)
    log = logging.getLogger("citadel_gateway")
    log.info(
        "serving %d models on %s over %s (%s)",
        len(cfg.models),
        f"{describe(sockets)}{' (socket activation)' if inherited else ''}"
        if sockets
        else f"{cfg.server.host}:{cfg.server.port}",
        "HTTPS" if cfg.server.tls_cert_file else "HTTP",
        ", ".join(f"{m.name}x{len(m.replicas)}" for m in cfg.models),
    )
    ucfg = uvicorn.Config(
        app,
        host=cfg.server.host,
        port=cfg.server.port,
        loop="uvloop",
        http=GatewayHttpProtocol,
        lifespan="on",
        access_log=False,  # ours is the one-line JSON access log
        proxy_headers=False,
        server_header=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=cfg.server.drain_seconds,
        backlog=4096,  # also set on an inherited socket (uvloop listens on it again)
        # HTTPS on every listening socket (inherited ones too); the context's floor is TLS 1.2.
        ssl_certfile=cfg.server.tls_cert_file,
        ssl_keyfile=cfg.server.tls_key_file,
    )
    # Everything built so far lives for the whole process: keep it out of the cyclic GC, and
    # collect young objects less often (the hot path allocates many short-lived, acyclic objects).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 20, 20)
    uvicorn.Server(ucfg).run(sockets=sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
