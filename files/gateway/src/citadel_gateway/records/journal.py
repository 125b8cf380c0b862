"""The on-disk journal: batches of rows the database could not take, kept in order until it can.

One file per batch (``<sequence>.json``, written to a temporary name, fsynced, then renamed, so a
crash leaves whole batches only), read back oldest first. Bounded by ``max_bytes``: a batch that
would go over it is refused (the writer counts it as dropped). Its methods do blocking file I/O:
the writer calls them from a thread, except at shutdown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class Journal:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.dir.glob("*.tmp"):  # a write cut by a crash: never renamed, never whole
            leftover.unlink()
        self._files = sorted(self.dir.glob("*.json"), key=lambda p: int(p.stem))
        self.bytes = sum(p.stat().st_size for p in self._files)
        self.rows = sum(self._count(p) for p in self._files)
        self._next = int(self._files[-1].stem) + 1 if self._files else 1

    @staticmethod
    def _count(path: Path) -> int:
        try:
            return len(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            return 0

    def __bool__(self) -> bool:
        return bool(self._files)

    def append(self, rows: list[tuple]) -> bool:
        """Keep ``rows`` as the newest batch; False (nothing written) when over ``max_bytes``."""
        data = json.dumps(rows, separators=(",", ":")).encode()
        if self.bytes + len(data) > self.max_bytes:
            return False
        path = self.dir / f"{self._next:012d}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
        self._next += 1
        self._files.append(path)
        self.bytes += len(data)
        self.rows += len(rows)
        return True

    def oldest(self) -> list[tuple] | None:
        """The oldest batch (its rows as tuples), or None when the journal is empty. An unreadable
        file is moved aside (``.bad``), never replayed and never deleted."""
        while self._files:
            path = self._files[0]
            try:
                return [tuple(r) for r in json.loads(path.read_bytes())]
            except (OSError, ValueError):
                self._forget(path, path.with_suffix(".bad"))
        return None

    def pop(self) -> None:
        """Remove the oldest batch (it is in the database now)."""
        if self._files:
            self._forget(self._files[0], None)

    def _forget(self, path: Path, move_to: Path | None) -> None:
        size, n = path.stat().st_size, self._count(path)
        if move_to is None:
            path.unlink()
        else:
            path.rename(move_to)
        self._files.pop(0)
        self.bytes -= size
        self.rows -= n
