"""The shared connection machinery: flushing never waits on one connection, and the watchdog's deadlines."""

from __future__ import annotations

import math

import pytest
import trio

from interlink.model import Status
from interlink.net.connection import (
    CLOSE_LINGER,
    TICK,
    Connection,
    ConnectionPolicy,
    ConnectionTable,
    FlushQueue,
    IdleRule,
    overdue,
)
from interlink.net.transport import memory_transport_pair


class Queued(Connection):
    """A minimal connection: `write` queues bytes, reads are recorded."""

    def __init__(self, transport, queue: FlushQueue, name: str, policy: ConnectionPolicy = ConnectionPolicy()) -> None:
        super().__init__(transport, queue, name, policy)
        self.out: list[bytes] = []
        self.failed: list[str] = []
        self.read: list[bytes] = []
        self.calls = 0
        self.resumed = 0

    @property
    def in_flight(self) -> int:
        return self.calls

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self._mark()

    def _pending_output(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    def _received(self, data: bytes) -> None:
        self.read.append(data)
        self.preface_done = True

    def _send_probe(self) -> None:
        self.write(b"probe")

    def _fail_open_calls(self, reason: str) -> None:
        self.failed.append(reason)

    def _resume(self) -> None:
        self.resumed += 1


async def test_a_flush_never_waits_for_a_connection_whose_reader_stalled():
    """One caller that does not read must not hold up the bytes for everyone else (the issue's 16 s stall)."""
    queue = FlushQueue()
    stuck_ours, stuck_theirs = memory_transport_pair(capacity=1024)  # the other side never reads
    fine_ours, fine_theirs = memory_transport_pair()
    stuck, fine = Queued(stuck_ours, queue, "stuck"), Queued(fine_ours, queue, "fine")
    stuck.write(b"x" * 100_000)
    fine.write(b"answers for everyone else")
    queue.flush()  # synchronous: no await, so nothing can wait here
    assert await fine_theirs.receive() == b"answers for everyone else"
    assert stuck.transport.buffered == 100_000 - 1024 and stuck.congested is False
    stuck.policy = ConnectionPolicy(output_limit=4096)
    assert stuck.congested


async def test_the_backlog_is_sent_by_the_connection_own_writer_and_producers_resume():
    queue = FlushQueue()
    ours, theirs = memory_transport_pair(capacity=1000)
    connection = Queued(ours, queue, "c")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        connection.write(b"y" * 5000)
        queue.flush()
        received = b""
        with trio.fail_after(5):
            while len(received) < 5000:
                received += await theirs.receive()
            while not connection.resumed:
                await trio.sleep(0.01)
        assert received == b"y" * 5000 and connection.transport.buffered == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda c, now: setattr(c, "preface_done", False), "preface timeout"),
        (lambda c, now: setattr(c, "partial_since", now - 11), "partial-frame timeout"),
        (lambda c, now: setattr(c, "idle_since", now - 21), "idle timeout"),
        (lambda c, now: setattr(c, "calls", 1) or setattr(c, "idle_since", now - 21), None),
    ],
    ids=["preface", "partial-frame", "idle-no-calls", "busy-is-not-idle"],
)
async def test_overdue_names_the_deadline_that_passed(setup, expected, autojump_clock):
    policy = ConnectionPolicy(preface_timeout=5, idle_timeout=20, idle_rule=IdleRule.NO_CALLS, partial_frame_timeout=10,
                              write_timeout=20)
    ours, _ = memory_transport_pair()
    connection = Queued(ours, FlushQueue(), "c", policy)
    connection.preface_done = True
    await trio.sleep(30)
    now = trio.current_time()
    connection.idle_since = now
    setup(connection, now)
    reason = overdue(connection, now)
    assert (reason is None) if expected is None else reason.startswith(expected), reason


async def test_idle_by_frames_counts_anything_received(autojump_clock):
    policy = ConnectionPolicy(idle_timeout=20, idle_rule=IdleRule.NO_FRAMES)
    ours, _ = memory_transport_pair()
    connection = Queued(ours, FlushQueue(), "c", policy)
    connection.preface_done = True
    await trio.sleep(19)
    assert overdue(connection, trio.current_time()) is None
    await trio.sleep(2)
    assert overdue(connection, trio.current_time()).startswith("idle timeout")
    connection.last_receive = trio.current_time()
    assert overdue(connection, trio.current_time()) is None


async def test_the_watchdog_closes_a_connection_whose_peer_takes_nothing(autojump_clock):
    queue, table = FlushQueue(), ConnectionTable()
    stuck_ours, _ = memory_transport_pair(capacity=10)
    fine_ours, _ = memory_transport_pair()
    policy = ConnectionPolicy(write_timeout=20, output_limit=1 << 20)
    stuck, fine = Queued(stuck_ours, queue, "stuck", policy), Queued(fine_ours, queue, "fine", policy)
    for connection in (stuck, fine):
        connection.preface_done = True
        table.add(connection, "triple")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(table.run)
        nursery.start_soon(stuck.run)
        nursery.start_soon(fine.run)
        stuck.write(b"z" * 1000)
        queue.flush()
        await trio.sleep(19)
        assert not stuck.closed
        await trio.sleep(3)
        assert stuck.closed and stuck.close_reason.startswith("write timeout")
        assert stuck.failed and not fine.closed
        nursery.cancel_scope.cancel()


async def test_shedding_closes_the_longest_idle_connections_first(autojump_clock):
    queue, table = FlushQueue(), ConnectionTable()
    connections = []
    for index in range(4):
        ours, _ = memory_transport_pair()
        connection = Queued(ours, queue, f"c{index}")
        connection.preface_done = True
        connection.idle_since = trio.current_time() + index  # c0 idle longest
        table.add(connection, "triple")
        connections.append(connection)
    connections[0].calls = 1  # busy: never shed
    assert table.shed_idle(2, group="triple") == 2
    assert [c.closed for c in connections] == [False, True, True, False]
    assert table.shed_idle(5, group="peer") == 0


def test_policy_defaults_have_no_deadlines():
    policy = ConnectionPolicy()
    assert policy.preface_timeout == policy.idle_timeout == policy.write_timeout == math.inf


class Admitting(Queued):
    """Server side of a protocol: `limit` calls at once."""

    limit = 2

    @property
    def inbound_calls(self) -> tuple[int, int]:
        return self.calls, self.limit


@pytest.mark.parametrize(
    ("calls", "draining", "expected"),
    [
        (0, False, None),
        (1, False, None),
        (2, False, (Status.RESOURCE_EXHAUSTED, "more than 2 calls in flight on this connection")),
        (0, True, (Status.UNAVAILABLE, "the gateway is shutting down; retry on another one")),
        (5, True, (Status.UNAVAILABLE, "the gateway is shutting down; retry on another one")),
    ],
)
async def test_admission_refuses_when_draining_first_then_over_the_call_limit(calls, draining, expected):
    ours, _ = memory_transport_pair()
    connection = Admitting(ours, FlushQueue(), "c")
    connection.calls, connection.draining = calls, draining
    assert connection.admission_refusal() == expected
    assert connection.usable is not draining


async def test_a_closing_connection_whose_last_bytes_do_not_leave_is_let_go_by_the_watchdog(autojump_clock):
    queue, table = FlushQueue(), ConnectionTable()
    ours, _ = memory_transport_pair(capacity=10)  # the other side reads nothing
    connection = Queued(ours, queue, "stuck", ConnectionPolicy(write_timeout=30))
    table.add(connection, "triple")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(table.run)
        nursery.start_soon(connection.run)
        connection.write(b"last words" * 100)
        connection.close("done")
        connection.close("again")  # the first reason stays
        assert connection.closed and not ours.closed and connection.policy.write_timeout == CLOSE_LINGER
        await trio.sleep(CLOSE_LINGER + 2 * TICK)
        assert ours.closed and connection.close_reason == "done" and connection.failed == ["done"]
        nursery.cancel_scope.cancel()


async def test_the_watchdog_shuts_an_idle_connection_down_politely(autojump_clock):
    class Polite(Queued):
        def shutdown(self, reason: str) -> None:
            self.write(b"goodbye")
            super().shutdown(reason)

    queue, table = FlushQueue(), ConnectionTable()
    ours, theirs = memory_transport_pair()
    connection = Polite(ours, queue, "idle", ConnectionPolicy(idle_timeout=5, idle_rule=IdleRule.NO_FRAMES))
    connection.preface_done = True
    table.add(connection, "triple")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(table.run)
        nursery.start_soon(connection.run)
        await trio.sleep(5 + 2 * TICK)
        assert connection.closed and connection.close_reason.startswith("idle timeout")
        assert await theirs.receive() == b"goodbye"
        nursery.cancel_scope.cancel()
