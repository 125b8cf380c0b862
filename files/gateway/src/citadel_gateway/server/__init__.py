"""Our uvicorn protocol: the three hot POST endpoints are served without ASGI, and nothing is
given away to a client before its request head has been judged.

uvicorn's httptools protocol builds an ASGI scope, a RequestResponseCycle with an
asyncio.Event, message dicts and a wrapper coroutine for every request; on this path that
was ~40 % of the gateway's CPU. For a plain ``POST`` to a hot path (HTTP/1.1, not
pipelined, no ``Expect: 100-continue``) this protocol collects the headers and body itself and
runs ``Gateway.serve`` with a ``HotCycle`` that writes the answer straight to the socket;
everything else (other routes, the odd cases above) goes through uvicorn and ASGI as usual.
Keep-alive, graceful shutdown, flow control and pipelining stay uvicorn's.

Hostile clients (``server.*`` in the config), on every route:

- the request line and headers are limited as they arrive: URL over ``max_url_bytes`` → 414,
  more than ``max_header_count`` headers or a head over ``max_head_bytes`` → 431 (the parser is
  never fed more than the head budget, so no header is ever buffered past the limit);
- when a head is complete, ``Gateway.check_head`` gives its verdict before a body byte is read
  (auth, failed-auth throttle, declared size); a refusal is answered with ``Connection: close``,
  never a ``100 Continue``, and the connection is closed after a short lingering drain;
- one sweep a second (no timer per request) closes heads not complete within
  ``head_timeout_s``, answers 408 to bodies not complete within ``body_timeout_s``, closes
  keep-alive connections idle past uvicorn's keep-alive timeout and a client's oldest idle
  connections beyond ``max_idle_per_client``; connections beyond ``max_connections`` are closed
  at accept;
- graceful shutdown (SIGTERM) answers what is under way and what arrives within a short grace,
  every answer with ``Connection: close``, instead of closing connections whose request is on its
  way; under socket activation the listening socket stays open in systemd meanwhile (``listen``).

This package is the only place that touches uvicorn internals; every one it uses is checked at
start-up by ``check_uvicorn`` (cli.main), against the exact uvicorn version pinned in
pyproject.toml.

- ``protocol``: GatewayHttpProtocol (connection, input, parser callbacks, the hot path's start);
- ``refusal``: its refusals and timeout answers (``Connection: close``, the lingering drain);
- ``cycle``: HotCycle and the coalescing transport, the response writers;
- ``sweeper``: the connection phases and the once-a-second sweep of every time limit; the
  shutdown grace;
- ``listen``: socket activation, the listening sockets systemd passes (sd_listen_fds), and the
  metrics listener;
- ``compat``: the pinned uvicorn version, the internals used and their check; the ASGI
  disconnect hook.
"""

from .compat import UVICORN_PIN, check_uvicorn, hook_asgi_disconnect
from .cycle import HotCycle
from .listen import ListenError, describe, inherited_sockets, listening_sockets
from .protocol import GatewayHttpProtocol

__all__ = [
    "GatewayHttpProtocol",
    "HotCycle",
    "ListenError",
    "UVICORN_PIN",
    "check_uvicorn",
    "describe",
    "hook_asgi_disconnect",
    "inherited_sockets",
    "listening_sockets",
]
