"""What this package relies on in uvicorn: the pinned version, the internals used and their
start-up check (cli.main refuses to start without them), and the ASGI-path disconnect hook."""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from .protocol import GatewayHttpProtocol

log = logging.getLogger("citadel_gateway")

UVICORN_PIN = "0.54.0"  # pyproject.toml pins exactly this; check_uvicorn refuses anything else


def hook_asgi_disconnect(receive, callback) -> bool:
    """Have ``callback()`` called as soon as the client of this ASGI request disconnects.

    ``receive`` is the ASGI receive callable. True when it belongs to a uvicorn request cycle on
    GatewayHttpProtocol (whose ``connection_lost`` calls the callback, once, if the response was
    not complete); False elsewhere (another server or protocol): the caller then has to watch
    ``receive`` for ``http.disconnect`` itself.
    """
    cycle = getattr(receive, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return False
    # on_response is the protocol's bound on_response_complete while the app runs
    if not isinstance(getattr(cycle.on_response, "__self__", None), GatewayHttpProtocol):
        return False
    cycle.citadel_on_disconnect = callback
    return True


# HttpToolsProtocol methods called or overridden in this package, and attributes its __init__ must set.
_PROTOCOL_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "eof_received",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "send_400_response",
    "handle_websocket_upgrade",
    "_should_upgrade",
    "_unsupported_upgrade_warning",
    "_unset_keepalive_if_required",
    "_start_asgi_task",
    "timeout_keep_alive_handler",
    "shutdown",
)
_PROTOCOL_ATTRS = (
    "app",
    "loop",
    "logger",
    "parser",
    "server_state",
    "connections",
    "tasks",
    "pipeline",
    "cycle",
    "headers",
    "scope",
    "expect_100_continue",
    "timeout_keep_alive",
    "flow",
    "transport",
    "server",
    "client",
    "scheme",
    "root_path",
    "asgi_version",
    "app_state",
)
_CYCLE_ATTRS = (
    "disconnected",
    "keep_alive",
    "response_started",
    "response_complete",
    "message_event",
    "on_response",
    "body",
    "more_body",
    "waiting_for_100_continue",
)
_CYCLE_METHODS = ("receive", "send", "run_asgi")
_FLOW_METHODS = ("drain", "pause_reading", "resume_reading")
_STATE_ATTRS = ("connections", "tasks", "default_headers", "total_requests")


def check_uvicorn() -> None:
    """Fail (RuntimeError naming what is missing) unless the installed uvicorn is the pinned
    version and has every internal this package relies on. Called by cli.main before serving."""
    import importlib.metadata

    import uvicorn
    from uvicorn.protocols.http import flow_control
    from uvicorn.server import ServerState

    missing: list[str] = []
    try:
        version = importlib.metadata.version("uvicorn")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(uvicorn, "__version__", "unknown")
    if version != UVICORN_PIN:
        missing.append(f"uvicorn {UVICORN_PIN} (installed: {version})")
    for name in _PROTOCOL_METHODS:
        if not callable(getattr(HttpToolsProtocol, name, None)):
            missing.append(f"HttpToolsProtocol.{name}()")
    for name in _CYCLE_METHODS:
        if not callable(getattr(RequestResponseCycle, name, None)):
            missing.append(f"RequestResponseCycle.{name}()")
    if not isinstance(STATUS_LINE, dict) or any(s not in STATUS_LINE for s in range(100, 600)):
        missing.append("httptools_impl.STATUS_LINE (status 100-599)")
    for name in _FLOW_METHODS:
        if not callable(getattr(flow_control.FlowControl, name, None)):
            missing.append(f"FlowControl.{name}()")

    # instance attributes: build the objects the way uvicorn does (nothing is started)
    async def _probe_app(scope, receive, send):  # pragma: no cover - never called
        pass

    try:
        cfg = uvicorn.Config(_probe_app, log_config=None, lifespan="off", http="httptools", loop="none")
        state = ServerState()
        missing += [f"ServerState.{n}" for n in _STATE_ATTRS if not hasattr(state, n)]
        proto = HttpToolsProtocol(cfg, state, {}, _loop=asyncio.new_event_loop())
        proto.loop.close()
        missing += [f"HttpToolsProtocol.{n}" for n in _PROTOCOL_ATTRS if not hasattr(proto, n)]

        class _T:
            def pause_reading(self):
                pass

            def resume_reading(self):
                pass

        flow = flow_control.FlowControl(_T())
        missing += [f"FlowControl.{n}" for n in ("read_paused", "write_paused") if not hasattr(flow, n)]
        cycle = RequestResponseCycle(
            scope={},
            transport=None,
            flow=flow,
            logger=log,
            access_logger=log,
            access_log=False,
            default_headers=[],
            message_event=None,
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )
        missing += [f"RequestResponseCycle.{n}" for n in _CYCLE_ATTRS if not hasattr(cycle, n)]
    except Exception as e:  # noqa: BLE001 - a changed signature is exactly what this reports
        missing.append(f"uvicorn's protocol/cycle constructors as in {UVICORN_PIN} ({type(e).__name__}: {e})")
    if missing:
        raise RuntimeError(
            "citadel_gateway.server relies on uvicorn internals that this installation lacks: "
            + "; ".join(missing)
            + f". Install uvicorn=={UVICORN_PIN} (pinned in pyproject.toml) or port citadel_gateway/server/."
        )
