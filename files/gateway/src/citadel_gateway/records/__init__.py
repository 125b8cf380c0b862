"""Usage records: one event per answered request, written to PostgreSQL off the hot path.

``event`` turns a finished request into a row (event.py); the ``UsageWriter`` (writer.py) queues
rows in memory and inserts them in batches; while the database is away, batches go to a bounded
on-disk ``Journal`` (journal.py), replayed in order once it is back. The request path only appends
a tuple to a deque: it never waits on the database or the disk.
"""

from .event import COLUMNS, event
from .journal import Journal
from .writer import UsageWriter

__all__ = ["COLUMNS", "Journal", "UsageWriter", "event"]
