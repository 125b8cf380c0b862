"""The usage writer: each request's access-log line queued in memory, inserted in batches,
journaled while the database is away.

- ``record`` (the request path) appends the request's line (accesslog.line, made once for the log
  and for this) to a deque: no await, no I/O, no encoding of its own. The queue holds at most
  ``queue_max`` rows (size it above the request rate times ``insert_timeout_s``); a row beyond it
  is dropped and counted.
- The flusher wakes every ``flush_interval_s`` or when a batch is full. It replays the journal
  first (the order holds), then inserts what is queued, ``batch_size`` rows per statement: the
  lines joined into one JSON array, ``INSERT ... SELECT FROM jsonb_to_recordset($1) ON CONFLICT
  DO NOTHING`` (the gateway's role may only INSERT; a replayed batch that was partly written
  inserts nothing twice). The gateway's share is a string join per batch; the database parses
  (jsonb: once per row, half the database's CPU of reading a json text element by element).
- The database away (connect or insert fails, or takes longer than its timeout): the batch goes
  to the journal, and the next connection attempt waits (1 s doubling to 30 s); until then every
  full batch goes to the journal too. Dropped only when the journal is full (logged, counted). A
  batch the database refuses for its data (SQLSTATE class 22) is never retried: it is set aside
  in the journal directory (``.bad``) for the operator, logged and counted as dropped.
- ``stop`` (SIGTERM) inserts what it can within its timeout; the rest is journaled. A crash
  (SIGKILL, power) loses what was queued: at most a flush interval's rows, or one batch while
  the database is away.

Why asyncpg: one connection, binary protocol, no per-row work of ours; the queue and the journal
are ours because no driver keeps rows across a database outage.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import asyncpg

from .journal import Journal

log = logging.getLogger("citadel_gateway")

# The line's keys (accesslog.line) as the table's columns; the gateway's name is $2 (one per writer).
_INSERT = (
    "INSERT INTO citadel.usage_events (ts, event_id, request_id, key_name, requested_model, model, endpoint, "
    "status, prompt_tokens, completion_tokens, latency_ms, ttft_ms, replica, attempts, cut, gateway) "
    "SELECT to_timestamp(r.ts - r.duration_ms / 1000), r.event_id, r.request_id, r.key, r.requested, r.model, "
    "r.endpoint, r.status, r.prompt_tokens, r.completion_tokens, r.duration_ms, r.ttft_ms, r.replica, r.attempts, "
    "coalesce(r.cut, false), $2 "
    "FROM jsonb_to_recordset($1::jsonb) AS r(ts float8, event_id text, request_id text, key text, requested text, "
    "model text, endpoint text, status smallint, prompt_tokens integer, completion_tokens integer, "
    "duration_ms float8, ttft_ms real, replica text, attempts smallint, cut boolean) "
    "ON CONFLICT DO NOTHING"
)


def batch(lines: list[str]) -> str:
    """The rows of one statement: their lines as one JSON array."""
    return "[" + ",".join(lines) + "]"


class UsageWriter:
    def __init__(self, cfg, counts: dict) -> None:
        self.cfg = cfg  # config.Usage
        self.counts = counts  # metrics: outcome -> events (queued, written, journaled, dropped)
        self.queue: collections.deque[str] = collections.deque()
        # Opened by start(): on a reload the writer it replaces still owns the directory until it stopped.
        self.journal: Journal | None = None
        self._conn: asyncpg.Connection | None = None
        self._retry_at = 0.0
        self._backoff = 1.0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._io_lock: asyncio.Lock | None = None
        self._closing = False

    # -- the request path
    def record(self, row: str) -> None:
        q = self.queue
        if len(q) >= self.cfg.queue_max:  # the flusher is stuck longer than the queue lasts
            self.counts["dropped"] += 1
            return
        q.append(row)
        self.counts["queued"] += 1
        if len(q) == self.cfg.batch_size and self._wake is not None:
            self._wake.set()

    # -- lifecycle
    def start(self) -> None:
        self.journal = Journal(self.cfg.journal_dir, self.cfg.journal_max_bytes)
        self._wake = asyncio.Event()
        self._io_lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, timeout: float) -> None:
        """Insert what is queued within ``timeout``; journal the rest; close the connection.
        The flusher is let finish its round, never cancelled: a batch it holds is in no queue."""
        if self._task is None:  # never started (replaced by a reload before it began)
            self.journal = Journal(self.cfg.journal_dir, self.cfg.journal_max_bytes)
            self._io_lock = asyncio.Lock()
        else:
            self._closing = True
            self._wake.set()
            await self._task
        try:
            async with asyncio.timeout(timeout):
                await self._flush()
        except TimeoutError:
            log.error("usage: database not done within %.0f s at shutdown; journaling the rest", timeout)
        while self.queue:  # anything the database did not take: to disk before we exit
            self._journal(*self._take())
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    # -- the flusher
    async def _run(self) -> None:
        wake, interval = self._wake, self.cfg.flush_interval_s
        while not self._closing:
            try:
                async with asyncio.timeout(interval):
                    await wake.wait()
            except TimeoutError:
                pass
            wake.clear()
            if self._closing:
                return  # stop() does the last round, under its timeout
            try:
                await self._flush()
            except Exception:  # noqa: BLE001 - never let the flusher die: log and go on
                log.exception("usage: flush failed")

    def _take(self) -> tuple[str, int]:
        """The next batch: its JSON text and its number of rows."""
        q, n = self.queue, min(len(self.queue), self.cfg.batch_size)
        return batch([q.popleft() for _ in range(n)]), n

    async def _flush(self) -> None:
        async with self._io_lock:
            while self.journal:  # the journal first: the database gets rows in order
                oldest = await asyncio.to_thread(self.journal.oldest)
                if oldest is None:
                    break
                done = await self._insert(*oldest)
                if done is None:
                    await self._spill()
                    return
                await asyncio.to_thread(self.journal.pop, not done)
                self.counts["replayed" if done else "dropped"] += oldest[1]
            while self.queue:
                text, n = self._take()
                done = await self._insert(text, n)
                if done is None:
                    await asyncio.to_thread(self._journal, text, n)
                    await self._spill()
                    return
                if not done:
                    await asyncio.to_thread(self.journal.set_aside, text)
                    self.counts["dropped"] += n

    async def _spill(self) -> None:
        """The database is away: every full batch to disk, so a crash loses at most one batch."""
        while len(self.queue) >= self.cfg.batch_size:
            await asyncio.to_thread(self._journal, *self._take())

    def _journal(self, text: str, n: int) -> None:
        if self.journal.append(text, n):
            self.counts["journaled"] += n
        else:
            self.counts["dropped"] += n
            log.error(
                "usage: journal full (%d bytes, usage.journal_max_bytes); %d events dropped",
                self.journal.bytes,
                n,
            )

    async def _insert(self, text: str, n: int) -> bool | None:
        """True when the database has the batch; None when it is away (journal it, try later);
        False when it refused the batch's data, which no retry will change."""
        conn = await self._connection()
        if conn is None:
            return None
        try:
            await conn.execute(_INSERT, text, self.cfg.gateway, timeout=self.cfg.insert_timeout_s)
        except asyncpg.DataError as e:
            log.error("usage: the database refused a batch of %d events (%s); set aside in %s", n, e, self.journal.dir)
            return False
        except Exception as e:  # noqa: BLE001 - any other failure (asyncpg has client errors outside
            # its PostgresError/InterfaceError tree, e.g. a connection lost mid-protocol): the batch
            # is journaled, and a replay of a batch the server did commit inserts nothing twice
            self._away(f"insert failed: {type(e).__name__}: {e}")
            return None
        self.counts["written"] += n
        return True

    async def _connection(self) -> asyncpg.Connection | None:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        if time.monotonic() < self._retry_at:
            return None
        cfg = self.cfg
        try:
            self._conn = await asyncpg.connect(
                cfg.database_url,
                password=cfg.password,
                timeout=cfg.connect_timeout_s,
                command_timeout=cfg.insert_timeout_s,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            self._away(f"cannot connect: {e}")
            return None
        if self._backoff > 1.0:
            log.warning("usage: database back; replaying %d journaled events", self.journal.rows)
        self._backoff = 1.0
        return self._conn

    def _away(self, why: str) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        log.error("usage: database unavailable (%s); journaling, next try in %.0f s", why, self._backoff)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)
