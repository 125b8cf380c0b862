"""A small keep-alive pooled HTTP/1.1 client on asyncio protocols + httptools' parser.

Why not aiohttp/httpx: on this project's 2-core machines a FastAPI+aiohttp proxy measured at ~430 µs CPU per request
(the whole budget is 250 µs) and httpx collapsing under concurrency; see README.md for
this client's numbers. It does exactly what a reverse proxy needs: POST/GET with a
ready body, response head as soon as it arrives, body chunks as the upstream sends
them (no buffering, with back-pressure), hard deadlines without extra tasks, and
errors classified for retry decisions (``ConnectError`` is safe to retry: the
request never reached the upstream).

Framing rules (RFC 9110/9112), because a connection reused with a wrong idea of where the
last response ended hands one client's answer to the next:

* 1xx interim responses (100 Continue, 103 Early Hints, ...) are skipped: their headers are
  dropped and the final response is awaited on the same connection. 101 is a protocol error
  (we never ask for an upgrade): the request fails and the connection is closed.
* A connection is reused only after a clean keep-alive response read to its end. It is closed
  on a parse error, bytes after a complete response, a body delimited by the close, a response
  not read to its end, a cancelled request, a request whose head was not answered, and
  ``Connection: close``.
* ``Pool.request`` sends exactly once: a failure on a reused socket is the caller's attempt to
  count, never retried here. Idle sockets older than ``idle_ttl_s`` (below the upstream's own
  keep-alive timeout, uvicorn's 5 s for vLLM) are not reused, so that race stays rare.
"""

from .errors import ConnectError, Refused, ResponseTooLarge, UpstreamError, UpstreamTimeout
from .pool import Cancel, Pool
from .response import DEFAULT_READ_LIMIT, Response

__all__ = [
    "DEFAULT_READ_LIMIT",
    "Cancel",
    "ConnectError",
    "Pool",
    "Refused",
    "Response",
    "ResponseTooLarge",
    "UpstreamError",
    "UpstreamTimeout",
]
