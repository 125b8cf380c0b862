"""The on-disk journal: batches of rows the database could not take, kept in order until it can.

One file per batch (``<sequence>.json``: the batch's JSON array of access-log lines, written to a
temporary name, fsynced, then renamed, so a crash leaves whole batches only), read back oldest
first. Bounded by ``max_bytes``: a batch that would go over it is refused (the writer counts it as
dropped). A file that is not a JSON array, or a batch the database refused for its data, is set
aside as ``<sequence>.bad``: never replayed, never deleted. Its methods do blocking file I/O: the
writer calls them from a thread, except at shutdown.
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
        found = sorted(self.dir.glob("*.json"), key=lambda p: int(p.stem))
        # after every batch file, kept or set aside: no name is ever used twice
        self._next = 1 + max((int(p.stem) for p in (*found, *self.dir.glob("*.bad")) if p.stem.isdigit()), default=0)
        self._files: list[tuple[Path, int]] = []  # (file, rows), oldest first
        for path in found:
            n = self._count(path)
            if n is None:
                path.rename(path.with_suffix(".bad"))
            else:
                self._files.append((path, n))
        self.bytes = sum(p.stat().st_size for p, _ in self._files)
        self.rows = sum(n for _, n in self._files)

    @staticmethod
    def _count(path: Path) -> int | None:
        """The rows of a batch file; None when it is not a JSON array."""
        try:
            rows = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return len(rows) if isinstance(rows, list) else None

    def __bool__(self) -> bool:
        return bool(self._files)

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
        self._next += 1

    def append(self, text: str, rows: int) -> bool:
        """Keep the batch ``text`` (``rows`` rows) as the newest; False (nothing written) when
        over ``max_bytes``."""
        data = text.encode()
        if self.bytes + len(data) > self.max_bytes:
            return False
        path = self.dir / f"{self._next:012d}.json"
        self._write(path, data)
        self._files.append((path, rows))
        self.bytes += len(data)
        self.rows += rows
        return True

    def oldest(self) -> tuple[str, int] | None:
        """The oldest batch (its text and rows), or None when the journal is empty."""
        while self._files:
            path, n = self._files[0]
            try:
                return path.read_text(), n
            except (OSError, ValueError):
                self.pop(bad=True)
        return None

    def pop(self, bad: bool = False) -> None:
        """Remove the oldest batch: it is in the database now, or (``bad``) set aside."""
        if not self._files:
            return
        path, n = self._files.pop(0)
        size = path.stat().st_size
        if bad:
            path.rename(path.with_suffix(".bad"))
        else:
            path.unlink()
        self.bytes -= size
        self.rows -= n

    def set_aside(self, text: str) -> None:
        """A batch the database refused for its data: kept for the operator, never replayed."""
        self._write(self.dir / f"{self._next:012d}.bad", text.encode())
