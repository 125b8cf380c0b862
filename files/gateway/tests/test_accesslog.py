"""The access log's writer thread: the loop never waits on the stream, and nothing is lost or
reordered, also when the stream stalls (a journald that stops reading)."""

from __future__ import annotations

import asyncio
import threading

from citadel_gateway.accesslog import AccessLog


class StalledStream:
    """A stream whose writes wait until the test opens it; records what it got."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.got: list[str] = []
        self.writes_started = threading.Event()

    def write(self, data: str) -> None:
        self.writes_started.set()
        self.open.wait(30)
        self.got.append(data)

    def flush(self) -> None:
        pass


def _lines(n: int, start: int = 0) -> list[str]:
    return [f'{{"n":{i}}}' for i in range(start, start + n)]


def test_a_stalled_stream_does_not_stop_the_loop_and_loses_nothing():
    async def main():
        stream = StalledStream()
        log = AccessLog(stream)
        log.start()
        for text in _lines(3 * AccessLog.BATCH):
            log.write(text)  # three batches handed over while the stream is stalled
        assert stream.writes_started.wait(10)
        assert stream.got == []  # the writer is stuck in the first write; the loop is not
        more = _lines(10, 3 * AccessLog.BATCH)
        for text in more:
            log.write(text)
        stream.open.set()
        log.stop()
        return stream.got

    got = asyncio.run(main())
    assert "".join(got).splitlines() == _lines(3 * AccessLog.BATCH + 10)


def test_far_behind_the_loop_waits_for_the_writer_in_order():
    async def main():
        stream = StalledStream()
        log = AccessLog(stream)
        log.start()
        total = (AccessLog.BEHIND + 2) * AccessLog.BATCH
        opener = threading.Timer(0.5, stream.open.set)  # the stall ends while the loop waits for room
        opener.start()
        for text in _lines(total):
            log.write(text)
        log.stop()
        opener.join()
        return stream.got, total

    got, total = asyncio.run(main())
    assert "".join(got).splitlines() == _lines(total)
