"""The shared connection machinery: a flush is never cut by the cancellation of the task doing it."""

from __future__ import annotations

import trio

from interlink.net import connection
from interlink.net.connection import Connection, FlushQueue


class SlowStream(trio.abc.Stream):
    """Takes `delay` seconds per send; remembers what arrived whole."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[bytes] = []

    async def send_all(self, data: bytes) -> None:
        await trio.sleep(self.delay)
        self.received.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class Queued(Connection):
    def __init__(self, stream: trio.abc.Stream, queue: FlushQueue, name: str) -> None:
        super().__init__(stream, queue, name)
        self.out: list[bytes] = []
        self.failed: list[str] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self._mark()

    def _pending_output(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def _fail_open_calls(self, reason: str) -> None:
        self.failed.append(reason)


async def test_a_cancelled_flusher_still_finishes_the_sends_it_started_for_others():
    queue = FlushQueue()
    mine, link = Queued(SlowStream(0.0), queue, "provider"), Queued(SlowStream(0.2), queue, "peer-link")
    mine.write(b"a")
    link.write(b"answers for the peer")
    with trio.CancelScope() as reader:  # e.g. a retired provider's reader, cancelled mid-flush
        reader.deadline = trio.current_time() + 0.05
        await queue.flush()
        await trio.sleep(1)
    assert reader.cancelled_caught
    assert link._stream.received == [b"answers for the peer"] and not link.closed  # type: ignore[attr-defined]


async def test_a_send_that_stalls_closes_only_that_connection(monkeypatch, autojump_clock):
    monkeypatch.setattr(connection, "SEND_TIMEOUT", 5.0)
    queue = FlushQueue()
    stuck, fine = Queued(SlowStream(3600), queue, "stuck"), Queued(SlowStream(0.0), queue, "fine")
    stuck.write(b"x")
    fine.write(b"y")
    await queue.flush()
    assert stuck.closed and "took no data for 5s" in stuck.close_reason
    assert not fine.closed and fine._stream.received == [b"y"]  # type: ignore[attr-defined]
