"""BoltEndpoint over in-memory transports: heartbeats, id matching, orphans, connection loss, bad frames."""

from __future__ import annotations

from pathlib import Path

import structlog
import trio

from interlink.net.boltlink import BoltEndpoint
from interlink.net.connection import FlushQueue
from interlink.net.transport import memory_transport_pair
from interlink.wire import bolt

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
        id1 = endpoint.send_request(request, request.raw, first)
        id2 = endpoint.send_request(request, request.raw, second)
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
            endpoint.send_request(request, request.raw, call)
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
        request_id = endpoint.send_request(request, request.raw, Recorder())
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
