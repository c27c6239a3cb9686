"""DeadlineTimers (one heap, one task) and FilterChains (which filters run, which observe call ends)."""

from __future__ import annotations

import structlog
import trio

from interlink.gateway.deadlines import DeadlineTimers
from interlink.gateway.filters import AccessDomainFilter, ExportAclFilter, Filter, FilterChains, _observers
from interlink.net.connection import FlushQueue
from tests.gateway.harness import TRIPLE, h2_request_headers, make_snapshot, open_world, wait_until


class Item:
    def __init__(self, name: str, fired: list, broken: bool = False) -> None:
        self.log_fields = {"name": name}
        self.fired, self.broken, self.name = fired, broken, name

    def deadline_passed(self) -> None:
        self.fired.append((self.name, trio.current_time()))
        if self.broken:
            raise RuntimeError("a broken call")


async def test_items_fire_in_deadline_order_and_a_broken_one_stops_no_other(autojump_clock):
    timers, fired = DeadlineTimers(FlushQueue()), []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        timers.add(start + 3, Item("late", fired))
        await trio.sleep(0.5)
        timers.add(start + 1, Item("broken", fired, broken=True))  # earlier than the running wait: rescheduled
        timers.add(start + 1, Item("same-time", fired))
        cancelled = timers.add(start + 2, Item("cancelled", fired))
        timers.cancel(cancelled)
        timers.cancel(cancelled)  # twice is once
        assert len(timers) == 3
        with structlog.testing.capture_logs() as logs:
            await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert [(name, round(at - start, 6)) for name, at in fired] == [("broken", 1), ("same-time", 1), ("late", 3)]
    assert [(entry["event"], entry["name"]) for entry in logs] == [("call.deadline_failed", "broken")]
    assert len(timers) == 0 and timers._heap == []  # the cancelled entry was dropped when its time came


def test_cancelled_entries_are_compacted_once_they_are_the_majority():
    async def scenario() -> None:
        timers, fired = DeadlineTimers(FlushQueue()), []
        entries = [timers.add(100.0 + index, Item(str(index), fired)) for index in range(1200)]
        for entry in entries[:600]:
            timers.cancel(entry)
        assert len(timers._heap) == 1200 and len(timers) == 600  # 600 of 1200: not yet the majority
        timers.cancel(entries[600])
        assert len(timers._heap) == 599 and len(timers) == 599  # compacted: only live entries remain
        assert min(entry[0] for entry in timers._heap) == timers._heap[0][0]  # still a heap
        assert timers._cancelled == 0

    trio.run(scenario)


class Observing(Filter):
    def on_finish(self, call, status: str, message: str) -> None:
        pass


class Refusing(Filter):
    def on_request(self, call) -> None:
        pass


class ObservingSubclass(Observing):
    pass


def test_the_snapshots_chains_check_the_access_domain_then_the_acl_on_the_peer_port_only():
    chains = FilterChains.of(make_snapshot())
    assert [type(item) for item in chains.peer] == [AccessDomainFilter, ExportAclFilter]
    assert chains.local == () and chains.local_finish == () and chains.peer_finish == ()


def test_only_filters_that_override_on_finish_observe_call_ends():
    chain = (Filter(), Refusing(), Observing(), AccessDomainFilter(), ObservingSubclass())
    assert [type(item) for item in _observers(chain)] == [Observing, ObservingSubclass]


async def test_the_base_filter_does_nothing_with_a_call(autojump_clock):
    """(A real call: in the compiled build a filter's `call` must be a GatewayCall.)"""
    async with open_world("local", "h2") as world:
        sid = world.caller.open(h2_request_headers(TRIPLE, authority=b"localhost:9000"))
        world.caller.send_message(sid, b"ping-0", end=True)
        await wait_until(lambda: world.calls)
        call = world.calls[0]
        state, fields = call.state, dict(call.log_fields)
        assert Filter().on_request(call) is None and Filter().on_finish(call, "OK", "") is None
        assert (call.state, call.log_fields) == (state, fields)
