"""What one hot-path request carries through the modules (auth → admission → forward → relay → log)."""

from __future__ import annotations

HOT = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


TOO_LARGE = _Marker("TOO_LARGE")  # the body went over server.max_body_bytes (its rest was dropped)
GONE = _Marker("GONE")  # the client left before its body was complete


class Request:
    """Per-request facts, filled in as the request goes through; the access log reads them."""

    __slots__ = (
        "path",
        "endpoint",
        "rid",
        "upstream_rid",
        "key",
        "model",
        "replica",
        "attempts",
        "error",
        "upstream_s",
        "started",
        "served_by",
        "auto",
        "allowed",
        "client_gone",
        "conn",
        "waiting",
        "hooked",
        "state",
        "t0",
        "requested",
        "hide_usage",
        "prompt_tokens",
        "completion_tokens",
        "ttft_s",
        "cut",
    )

    def __init__(self, path: str, t0: float) -> None:
        self.path = path
        self.endpoint = HOT[path]
        self.rid: bytes | None = None  # the client's id (or ours): logs and the answer
        self.upstream_rid: bytes | None = None  # the id of the last attempt sent upstream
        self.key = None  # config.ApiKey
        self.model: str | None = None
        self.replica: str | None = None
        self.attempts = 0  # sends to a replica
        self.error: str | None = None
        self.upstream_s: float | None = None
        self.started = False  # something reached the client
        self.served_by: str | None = None  # set when a fallback or auto chose the model
        self.auto: tuple[str, str] | None = None  # (task, priority) of model: "auto"
        self.allowed: frozenset[str] | None = None  # the key's models (None: all)
        self.client_gone = False
        self.conn = None  # the upstream connection in flight (aborted when the client leaves)
        self.waiting = None  # the task waiting in a model's queue (cancelled when the client leaves)
        self.hooked = False  # the server tells us of a disconnect (else the stream relay watches)
        self.state = None  # the gateway.State whose keys check_head judged it by (None: not judged)
        self.t0 = t0
        self.requested: str | None = None  # the model name the client sent
        self.hide_usage = False  # a stream whose usage event the gateway asked for (not passed on)
        self.prompt_tokens: int | None = None  # from the upstream's usage
        self.completion_tokens: int | None = None
        self.ttft_s: float | None = None  # streams: time to the first byte relayed
        self.cut = False  # a stream that broke after its first byte

    @property
    def fired(self) -> bool:  # the upstream pool's cancel handle interface
        return self.client_gone

    def on_disconnect(self) -> None:
        """The client went away: abort the upstream request, leave the queue."""
        self.client_gone = True
        if self.conn is not None:
            self.conn.abort()
        if self.waiting is not None:
            self.waiting.cancel()
