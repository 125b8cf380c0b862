"""Runtime: what lives as long as the process (metrics, upstream pool, rate limiter, failed-auth
throttle, access log, health checker) and the current State; started and stopped from the ASGI
lifespan (app.py), reloaded on SIGHUP. ``Gateway`` (gateway.py) adds the hot path on top.
"""

from __future__ import annotations

import asyncio
import logging

from . import auth
from . import config as C
from .accesslog import AccessLog
from .budgets import make_ledger
from .cache import make_store
from .limits import MemoryLimiter, RedisLimiter
from .metrics import Metrics, inc
from .records import UsageWriter
from .state import State
from .upstream import Pool

log = logging.getLogger("citadel_gateway")


class Runtime:
    def __init__(
        self, cfg: C.Config, config_path: str | None = None, log_stream=None, config_version: str | None = None
    ) -> None:
        self.config_path = config_path
        self.config_version = config_version  # sha256 of the config file in force (None: no file)
        self.metrics = Metrics()
        self.state = State(cfg)
        self.metrics.state = self.state
        self.pool = Pool(cfg.upstream.connect_timeout_s)
        self.limiter = self._make_limiter(cfg)
        self.ledger = make_ledger(self.limiter, self._limiter_error)  # token budgets, in the limiter's store
        self.cache = make_store(self.limiter, cfg.cache)  # the response cache, in the limiter's store
        self.failed_auth = auth.FailedAuthThrottle()
        self.access = AccessLog(log_stream, cfg.server.access_log)
        self.usage = self._make_usage(cfg)
        self.health = None
        self.load = None  # load.LoadPoller: vLLM's own load figures for load_aware models
        self._tasks: set[asyncio.Task] = set()
        self._handover: asyncio.Task | None = None  # the usage writer being replaced (apply)

    def _make_usage(self, cfg: C.Config):
        """The usage writer (records/), or None without usage.database_url."""
        if cfg.usage.database_url is None:
            return None
        return UsageWriter(cfg.usage, self.metrics.usage_events)

    @staticmethod
    def _make_limiter(cfg: C.Config):
        rl = cfg.rate_limit
        if rl.backend == "redis":
            return RedisLimiter(
                rl.redis_url,
                connect_timeout_s=rl.connect_timeout_s,
                timeout_s=rl.timeout_s,
                password=rl.redis_password,
            )
        return MemoryLimiter()

    async def start(self) -> None:
        from .health import HealthChecker
        from .load import LoadPoller

        self.access.start()
        if self.usage is not None:
            self.usage.start()
        cfg = self.state.cfg
        self.health = HealthChecker(self.state.router, self.fetch, cfg.health.interval_s, cfg.health.timeout_s)
        self.health.start()
        self.load = LoadPoller(self.state.router, self.fetch, cfg.health.timeout_s)
        self.load.start()
        if not cfg.auth.required:
            log.warning("AUTH IS OFF: no --api-key / auth.keys given; anyone reaching this port can use every model")

    async def stop(self) -> None:
        if self.health is not None:
            await self.health.stop()
        if self.load is not None:
            await self.load.stop()
        self.pool.close()
        await self.ledger.drain()
        await self.limiter.close()
        if self._handover is not None:
            await self._handover
        if self.usage is not None:  # after the last request: every event is queued by now
            await self.usage.stop(self.state.cfg.usage.stop_timeout_s)
        self.access.stop()

    def reload(self) -> bool:
        """Re-read the config file (SIGHUP). An invalid file keeps the running config."""
        if not self.config_path:
            log.warning("reload requested but no --config file was given")
            return False
        try:
            cfg, version = C.load_versioned(self.config_path)
        except C.ConfigError as e:
            log.error("config reload failed, keeping the running config: %s", e)
            return False
        listener = ("host", "port", "tls_cert_file", "tls_key_file", "metrics_port")
        if any(getattr(cfg.server, f) != getattr(self.state.cfg.server, f) for f in listener):
            log.warning("server.%s changed: the listener keeps its settings until a restart", "/".join(listener))
        self.apply(cfg, version)
        log.warning("config reloaded from %s: %d models, sha256 %s", self.config_path, len(cfg.models), version)
        return True

    def apply(self, cfg: C.Config, version: str | None = None) -> None:
        """Swap in the State of ``cfg`` (``version``: its file's sha256, see config.load_versioned)."""
        old = self.state
        new = State(cfg, old)
        if cfg.rate_limit != old.cfg.rate_limit:
            prev, self.limiter = self.limiter, self._make_limiter(cfg)
            prev_ledger, self.ledger = self.ledger, make_ledger(self.limiter, self._limiter_error)
            self._spawn(self._close_limiter(prev, prev_ledger))
        if cfg.rate_limit != old.cfg.rate_limit or cfg.cache != old.cfg.cache:
            self.cache = make_store(self.limiter, cfg.cache)
        if cfg.usage != old.cfg.usage:
            # the old writer inserts or journals what it holds, then the new one starts (and
            # replays that journal when the directory is the same); rows meanwhile wait in its queue
            prev, self.usage = self.usage, self._make_usage(cfg)
            self._handover = asyncio.get_running_loop().create_task(
                self._hand_over(self._handover, prev, self.usage, old.cfg.usage.stop_timeout_s)
            )
        self.pool.connect_timeout = cfg.upstream.connect_timeout_s
        self.access.enabled = cfg.server.access_log
        self.state = new
        self.metrics.state = new
        self.config_version = version
        if self.health is not None:
            self.health.router = new.router
            self.health.interval = cfg.health.interval_s
            self.health.timeout = cfg.health.timeout_s
        if self.load is not None:
            self.load.router = new.router
            self.load.timeout = cfg.health.timeout_s

    @staticmethod
    async def _close_limiter(limiter, ledger) -> None:
        await ledger.drain()  # its charges use the limiter's connection
        await limiter.close()

    def _limiter_error(self) -> None:
        inc(self.metrics.limiter_errors, ())

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _hand_over(
        self, prior: asyncio.Task | None, prev: UsageWriter | None, new: UsageWriter | None, timeout: float
    ) -> None:
        if prior is not None:  # one hand-over at a time: a journal directory has one owner
            await prior
        if prev is not None:
            await prev.stop(timeout)
        if new is not None and self.health is not None:  # started: else start() starts it
            new.start()
        log.warning("usage writer replaced: %s", "recording" if new is not None else "off")

    async def fetch(self, replica, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
        """One request to a replica outside the hot path (the health checker's probes)."""
        loop = asyncio.get_running_loop()
        body = body or b""
        head = (
            (
                f"{method} {replica.path(path)} HTTP/1.1\r\nHost: {replica.authority}\r\n"
                f"User-Agent: citadel-gateway-health\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
            ).encode()
            + replica.auth
            + b"\r\n"
        )
        resp = await self.pool.request(replica.key, head, body, loop.time() + timeout)
        try:
            data = await resp.read(self.state.cfg.upstream.max_response_bytes)
        finally:
            resp.close()
        return resp.status, data
