"""BoltEndpoint over in-memory transports: heartbeats, id matching, orphans, connection loss, bad frames,
admission (max_pending, draining), the partial-frame budget, congestion, keep-alive and retiring."""

from __future__ import annotations

from pathlib import Path

import structlog
import trio

from interlink.model import Status
from interlink.net.boltlink import MAX_REQUEST_ID, BoltEndpoint, PartialFrameBudget
from interlink.net.connection import ConnectionPolicy, FlushQueue
from interlink.net.transport import memory_transport_pair
from interlink.wire import bolt, link_headers

from tests.net.support import eventually

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "bolt"


def vector(name: str) -> bytes:
    return bytes.fromhex("".join((VECTORS / f"{name}.hex").read_text().split()))


class Recorder:
    def __init__(self) -> None:
        self.responses: list[bolt.BoltFrame] = []
        self.lost: list[str] = []

    def on_response(self, frame: bolt.BoltFrame) -> None:
        self.responses.append(frame)

    def on_connection_lost(self, reason: str) -> None:
        self.lost.append(reason)


async def read_frames(transport, count: int) -> list[bolt.BoltFrame]:
    decoder, frames = bolt.BoltDecoder(), []
    with trio.fail_after(5):
        while len(frames) < count:
            frames += decoder.feed(await transport.receive())
    return frames


async def test_heartbeat_is_acked_locally_and_never_reaches_the_owner():
    ours, theirs = memory_transport_pair()
    requests = []
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue(), on_request=lambda e, f: requests.append(f))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        theirs.write(vector("bolt_v1_heartbeat"))
        (ack,) = await read_frames(theirs, 1)
        assert ack.raw == vector("bolt_v1_heartbeat_ack")
        assert requests == []
        nursery.cancel_scope.cancel()


async def test_responses_match_by_fresh_ids_and_orphans_are_dropped():
    ours, theirs = memory_transport_pair()
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue())
    first, second = Recorder(), Recorder()
    request = bolt.decode(vector("bolt_v1_req_echo"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        id1 = endpoint.send_request(request, first)
        id2 = endpoint.send_request(request, second)
        endpoint.flush()
        sent = await read_frames(theirs, 2)
        assert [f.request_id for f in sent] == [id1, id2] and id1 != id2
        endpoint.forget(id1)  # the caller gave up
        response = bolt.decode(vector("bolt_v1_resp_echo"))
        with structlog.testing.capture_logs() as logs:
            for request_id in (id2, id1):
                theirs.write(bolt.patch_request_id(response.raw, request_id))
            with trio.fail_after(5):
                while not second.responses or not any(e["event"] == "bolt.orphan_response" for e in logs):
                    await trio.sleep(0.01)
        assert [f.request_id for f in second.responses] == [id2]
        assert first.responses == []
        assert endpoint.streams == {}
        nursery.cancel_scope.cancel()


async def test_connection_loss_fails_every_pending_call():
    ours, theirs = memory_transport_pair()
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue())
    calls = [Recorder(), Recorder()]
    request = bolt.decode(vector("bolt_v1_req_add"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        for call in calls:
            endpoint.send_request(request, call)
        theirs.close()
        with trio.fail_after(5):
            while not all(call.lost for call in calls):
                await trio.sleep(0.01)
    assert endpoint.closed and not endpoint.usable


async def test_a_bad_frame_closes_only_after_answering_what_came_before():
    ours, theirs = memory_transport_pair()
    requests = []
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue(), on_request=lambda e, f: requests.append(f))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        theirs.write(vector("bolt_v1_req_echo") + vector("bolt_v1_heartbeat") + b"\x09not bolt")
        (ack,) = await read_frames(theirs, 1)
        assert ack.is_heartbeat and ack.is_response
        with trio.fail_after(5):
            while not endpoint.closed:
                await trio.sleep(0.01)
    assert [f.request_id for f in requests] == [1]
    assert "protocol error" in endpoint.close_reason


class Inbound:
    def __init__(self) -> None:
        self.gone: list[str] = []

    def caller_gone(self, reason: str) -> None:
        self.gone.append(reason)


async def test_a_link_request_cancelled_in_the_same_read_is_never_dispatched():
    from interlink.wire import bolt_call

    ours, theirs = memory_transport_pair()
    requests, calls = [], {}

    def take(endpoint, frame):
        requests.append(frame.request_id)
        calls[frame.request_id] = Inbound()
        endpoint.call_started(frame.request_id, calls[frame.request_id])

    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue(), on_request=take, link=True)
    request = bolt.decode(vector("bolt_v1_req_echo"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        theirs.write(bolt.patch_request_id(request.raw, 7) + bolt_call.cancel_frame(7)
                     + bolt.patch_request_id(request.raw, 8))
        with trio.fail_after(5):
            while not requests:
                await trio.sleep(0.01)
        assert requests == [8]  # 7 was opened and cancelled in one read
        theirs.write(bolt_call.cancel_frame(8))  # 8 was dispatched: its call learns the caller is gone
        with trio.fail_after(5):
            while not calls[8].gone:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_forgetting_a_call_on_a_link_tells_the_other_gateway():
    from interlink.wire import bolt_call

    ours, theirs = memory_transport_pair()
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue(), link=True)
    request = bolt.decode(vector("bolt_v1_req_echo"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        request_id = endpoint.send_request(request, Recorder())
        endpoint.forget(request_id)
        endpoint.flush()
        sent = await read_frames(theirs, 2)
        assert bolt_call.cancelled_id(sent[1]) == request_id
        nursery.cancel_scope.cancel()


async def test_the_callers_of_a_lost_connection_are_told():
    ours, theirs = memory_transport_pair()
    inbound = Inbound()

    def take(endpoint, frame):
        endpoint.call_started(frame.request_id, inbound)

    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue(), on_request=take)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        theirs.write(vector("bolt_v1_req_echo"))
        with trio.fail_after(5):
            while not endpoint.calls:
                await trio.sleep(0.01)
        theirs.close()
        with trio.fail_after(5):
            while not inbound.gone:
                await trio.sleep(0.01)
    assert "connection ended" in inbound.gone[0]


# --- admission, budgets, congestion, liveness, draining ------------------------------------------------------


class Server:
    """A server-side owner: takes each request as a call (until `answer` ends it) and records refusals."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.requests: list[int] = []
        self.refused: list[tuple[int, Status, str]] = []
        self.calls: dict[int, Inbound] = {}
        self.fail_on = fail_on

    def on_request(self, endpoint: BoltEndpoint, frame: bolt.BoltFrame) -> None:
        if frame.request_id == self.fail_on:
            raise RuntimeError("bug in the owner")
        self.requests.append(frame.request_id)
        self.calls[frame.request_id] = Inbound()
        endpoint.call_started(frame.request_id, self.calls[frame.request_id])

    def on_refused(self, endpoint: BoltEndpoint, request_id: int, status: Status, reason: str) -> None:
        self.refused.append((request_id, status, reason))

    def answer(self, endpoint: BoltEndpoint, request_id: int, size: int = 0) -> None:
        request = bolt.decode(bolt.patch_request_id(vector("bolt_v1_req_echo"), request_id))
        endpoint.write(bolt.encode(bolt.response_for(request, bolt.ResponseStatus.SUCCESS, content=b"r" * size)))
        endpoint.call_ended(request_id, self.calls.pop(request_id))


def request(request_id: int, name: str = "bolt_v1_req_echo") -> bytes:
    return bolt.patch_request_id(vector(name), request_id)


def status_of(frame: bolt.BoltFrame) -> bytes | None:
    return bolt.header_get(frame.header, link_headers.STATUS)


def serving(transport, owner: Server, **kwargs) -> BoltEndpoint:
    return BoltEndpoint(transport, flush_queue=FlushQueue(), on_request=owner.on_request,
                        on_refused=owner.on_refused, name="server", **kwargs)


async def test_a_connection_over_max_pending_answers_resource_exhausted_and_keeps_serving():
    ours, theirs = memory_transport_pair()
    owner = Server()
    endpoint = serving(ours, owner, max_pending=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        theirs.write(request(1) + request(2) + request(3))
        (refusal,) = await read_frames(theirs, 1)
        assert refusal.request_id == 3 and refusal.is_response and status_of(refusal) == b"RESOURCE_EXHAUSTED"
        assert owner.requests == [1, 2]
        assert owner.refused == [(3, Status.RESOURCE_EXHAUSTED, "more than 2 calls in flight on this connection")]
        assert endpoint.inbound_calls == (2, 2) and endpoint.in_flight == 2
        owner.answer(endpoint, 1)
        endpoint.flush()
        theirs.write(request(4))  # room again: served
        await eventually(lambda: owner.requests == [1, 2, 4])
        assert not endpoint.closed
        nursery.cancel_scope.cancel()


async def test_a_draining_connection_answers_unavailable_and_a_refused_oneway_gets_no_answer():
    ours, theirs = memory_transport_pair()
    owner = Server()
    endpoint = serving(ours, owner)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        theirs.write(request(1))
        await eventually(lambda: owner.requests == [1])
        endpoint.goaway()  # Bolt has no GOAWAY: refuse new requests, finish the open one
        theirs.write(request(7, "bolt_v1_oneway_echo") + request(8))
        (refusal,) = await read_frames(theirs, 1)
        assert refusal.request_id == 8 and status_of(refusal) == b"UNAVAILABLE"
        assert [(request_id, status) for request_id, status, _ in owner.refused] == [
            (7, Status.UNAVAILABLE), (8, Status.UNAVAILABLE)]
        assert "shutting down" in owner.refused[0][2]
        owner.answer(endpoint, 1)  # the last open call ends: the draining connection closes
        assert endpoint.closed and endpoint.close_reason == "drained"
        assert [frame.request_id for frame in await read_frames(theirs, 1)] == [1]


async def test_a_refusal_without_an_owner_callback_still_answers_the_caller():
    ours, theirs = memory_transport_pair()
    requests: list[bolt.BoltFrame] = []
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue(), on_request=lambda e, f: requests.append(f))
    endpoint.draining = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        theirs.write(request(5))
        (refusal,) = await read_frames(theirs, 1)
        assert refusal.request_id == 5 and status_of(refusal) == b"UNAVAILABLE" and requests == []
        nursery.cancel_scope.cancel()


async def test_a_bug_in_the_request_callback_is_logged_and_the_connection_keeps_serving():
    ours, theirs = memory_transport_pair()
    owner = Server(fail_on=1)
    endpoint = serving(ours, owner)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.run)
            theirs.write(request(1) + request(2))
            await eventually(lambda: owner.requests == [2])
            nursery.cancel_scope.cancel()
    assert [e["request_id"] for e in logs if e["event"] == "bolt.handler_failed"] == [1]


async def test_the_partial_frame_budget_closes_the_connection_whose_frame_waited_longest(autojump_clock):
    budget = PartialFrameBudget(limit=300)
    pairs = [memory_transport_pair() for _ in range(2)]
    owners = [Server(), Server()]
    old, new = (serving(ours, owner, partial_budget=budget) for (ours, _), owner in zip(pairs, owners))
    whole = request(1)
    async with trio.open_nursery() as nursery:
        for endpoint in (old, new):
            nursery.start_soon(endpoint.run)
        pairs[0][1].write(whole[:200])
        await trio.sleep(5)
        pairs[1][1].write(whole[:200])  # 400 bytes held in all: over the budget
        await eventually(lambda: old.closed)
        assert "incomplete frames of all connections exceed 300 bytes" in old.close_reason
        assert not new.closed and budget.total == 200
        pairs[1][1].write(whole[200:])  # the frame completes: nothing held any more
        await eventually(lambda: owners[1].requests == [1])
        assert budget.total == 0 and new.partial_since is None
        nursery.cancel_scope.cancel()


async def test_a_caller_that_does_not_read_its_answers_is_not_read_from_until_they_drain():
    ours, theirs = memory_transport_pair(capacity=4096)
    owner = Server()
    endpoint = serving(ours, owner, policy=ConnectionPolicy(output_limit=10_000))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        theirs.write(request(1))
        await eventually(lambda: owner.requests == [1])
        owner.answer(endpoint, 1, size=50_000)  # the caller reads none of it
        endpoint.flush()
        assert endpoint.congested and not endpoint.has_capacity()
        theirs.write(request(2))  # the read already under way takes this one ...
        await eventually(lambda: owner.requests == [1, 2])
        theirs.write(request(3))
        await trio.sleep(0.05)
        assert owner.requests == [1, 2]  # ... then no more reads: its pending calls stay bounded
        await read_frames(theirs, 1)  # the caller reads its answer ...
        await eventually(lambda: owner.requests == [1, 2, 3])  # ... and is read from again
        nursery.cancel_scope.cancel()


async def test_heartbeats_keep_an_answering_connection_and_close_a_silent_one(autojump_clock):
    link_ours, link_theirs = memory_transport_pair()
    silent_ours, _ = memory_transport_pair()
    answered = BoltEndpoint(link_ours, flush_queue=FlushQueue(), name="answered")
    remote = BoltEndpoint(link_theirs, flush_queue=FlushQueue(), on_request=Server().on_request)
    silent = BoltEndpoint(silent_ours, flush_queue=FlushQueue(), name="silent")
    async with trio.open_nursery() as nursery:
        for endpoint in (answered, remote, silent):
            nursery.start_soon(endpoint.run)
        nursery.start_soon(answered.keepalive, 1, 2)
        with trio.move_on_after(20):
            await silent.keepalive(1, 2)
        assert silent.closed and silent.close_reason == "no heartbeat acknowledgement within 2s"
        await trio.sleep(20)
        assert not answered.closed and answered.preface_done
        nursery.cancel_scope.cancel()


async def test_a_retired_client_closes_when_its_last_call_is_answered_or_forgotten():
    ours, theirs = memory_transport_pair()
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue(), max_pending=4)
    echo = bolt.decode(vector("bolt_v1_req_echo"))
    answered, forgotten = Recorder(), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        assert endpoint.has_capacity() and endpoint.slots == 4
        first = endpoint.send_request(echo, answered)
        second = endpoint.send_request(echo, forgotten)
        endpoint.retire("certificates reloaded")
        assert endpoint.draining and not endpoint.has_capacity() and not endpoint.closed
        endpoint.forget(second)
        assert not endpoint.closed  # `first` is still waiting
        theirs.write(bolt.patch_request_id(vector("bolt_v1_resp_echo"), first))
        await eventually(lambda: endpoint.closed)
    assert [f.request_id for f in answered.responses] == [first] and forgotten.responses == []
    assert endpoint.close_reason == "certificates reloaded"
    endpoint.retire("closed already")  # harmless
    assert endpoint.close_reason == "certificates reloaded"


async def test_a_retired_client_without_calls_closes_at_once():
    ours, _ = memory_transport_pair()
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue())
    endpoint.retire("pool shrunk")
    assert endpoint.closed and endpoint.close_reason == "pool shrunk"


async def test_request_ids_wrap_around_before_the_int32_limit():
    ours, theirs = memory_transport_pair()
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue())
    echo = bolt.decode(vector("bolt_v1_req_echo"))
    endpoint._next_id = MAX_REQUEST_ID - 1  # noqa: SLF001 - two billion requests later
    ids = [endpoint.send_request(echo, None) for _ in range(3)]
    assert ids == [MAX_REQUEST_ID, 1, 2] and endpoint.streams == {}  # oneway: nothing waits
    endpoint.flush()
    assert [f.request_id for f in await read_frames(theirs, 3)] == ids


async def test_a_bug_in_a_call_told_of_the_loss_does_not_keep_the_others_from_hearing():
    class Failing(Recorder):
        def on_connection_lost(self, reason: str) -> None:
            raise RuntimeError("bug in the call")

    class FailingInbound(Inbound):
        def caller_gone(self, reason: str) -> None:
            raise RuntimeError("bug in the call")

    ours, _ = memory_transport_pair()
    endpoint = BoltEndpoint(ours, flush_queue=FlushQueue(), on_request=Server().on_request)
    echo = bolt.decode(vector("bolt_v1_req_echo"))
    told = Recorder()
    endpoint.send_request(echo, Failing())
    endpoint.send_request(echo, told)
    endpoint.call_started(9, FailingInbound())
    with structlog.testing.capture_logs() as logs:
        endpoint.close("test over")
    assert told.lost == ["test over"]
    assert len([e for e in logs if e["event"] == "bolt.handler_failed"]) == 2


async def test_a_read_that_waited_for_data_costs_one_wake_up_of_the_reader():
    """Count wake-ups: a reader that waited for its data has been scheduled once already and does not yield
    again before it dispatches (the yield per read is for data that was waiting: fairness, not a second trip
    through the scheduler per read)."""

    class ReaderSteps(trio.abc.Instrument):
        def __init__(self) -> None:
            self.task: trio.lowlevel.Task | None = None
            self.steps = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task is self.task:
                self.steps += 1

    ours, theirs = memory_transport_pair()
    owner = Server()
    endpoint = serving(ours, owner)
    counter = ReaderSteps()

    async def reader() -> None:
        counter.task = trio.lowlevel.current_task()
        await endpoint.run()

    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()  # the reader waits for its first bytes
            before = counter.steps
            for request_id in range(1, 11):
                theirs.write(request(request_id))
                await eventually(lambda: len(owner.requests) == request_id)
                await trio.testing.wait_all_tasks_blocked()
            assert counter.steps - before == 10  # one per read (each read here waited for its request)
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)
