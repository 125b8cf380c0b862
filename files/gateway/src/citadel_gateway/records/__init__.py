"""Usage records: one row per answered request, written to PostgreSQL off the hot path.

A request's row is its access-log line (accesslog.line, made once for both); the
``UsageWriter`` (writer.py) queues lines in memory and inserts them in batches; while the database
is away, batches go to a bounded on-disk ``Journal`` (journal.py), replayed in order once it is
back. The request path only appends a string to a deque: it never waits on the database or the
disk.
"""

from .journal import Journal
from .writer import UsageWriter

__all__ = ["Journal", "UsageWriter"]
