"""H2Endpoint against a hostile or careless client, over in-memory transports (no sockets).

The client is h2 itself (the reference implementation), driven by hand so that it can do what real
attackers do: reset streams in the same write that opened them, flood control frames, never read.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import h2.config
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
import pytest
import structlog
import trio

from interlink.net.connection import ConnectionPolicy, FlushQueue
from interlink.net.h2link import H2Endpoint, H2Settings
from interlink.model import Status
from interlink.net.transport import memory_transport_pair

from tests.net.support import eventually

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/m"), (b":authority", b"x"),
           (b"content-type", b"application/grpc"), (b"te", b"trailers")]
CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


class _KeepReadingH2Connection(h2.connection.H2Connection):
    """h2 as a client that keeps reading after a GOAWAY, as grpc and nghttp2 do (plain h2 closes its state
    machine at the first GOAWAY and would never answer the PING between the two of a graceful shutdown)."""

    def _receive_goaway_frame(self, frame: hyperframe.frame.GoAwayFrame):  # type: ignore[override]
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)  # noqa: SLF001
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def frame_types(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each whole frame in `data`."""
    frames, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        frames.append((data[pos + 3], data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return frames


class Owner:
    """Records requests; answers nothing unless told to."""

    def __init__(self) -> None:
        self.requests: list[int] = []
        self.refused: list[str] = []

    def on_request(self, endpoint: H2Endpoint, stream_id: int, headers, end_stream: bool) -> None:
        self.requests.append(stream_id)
        endpoint.attach(stream_id, Stream(endpoint, stream_id))

    def on_refused(self, endpoint: H2Endpoint, stream_id: int, reason: str) -> None:
        self.refused.append(reason)


class Stream:
    def __init__(self, endpoint: H2Endpoint, stream_id: int) -> None:
        self.endpoint, self.stream_id = endpoint, stream_id
        self.data = b""
        self.resets: list[int] = []
        self.lost: list[str] = []

    def on_headers(self, headers, end_stream):
        pass

    def on_data(self, data, flow_length, end_stream):
        self.data += data  # never acknowledged: a stalled consumer

    def on_end(self):
        pass

    def on_reset(self, error_code):
        self.resets.append(error_code)

    def on_writable(self):
        pass

    def on_connection_lost(self, reason):
        self.lost.append(reason)


class Client:
    """h2 as the client on the other end of a memory transport."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.closed = False

    def send(self) -> None:
        self.transport.write(self.conn.data_to_send())

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    async def pump(self, until, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not until():
                try:
                    data = await self.transport.receive()
                except Exception:
                    self.closed = True
                    return
                if not data:
                    self.closed = True
                    return
                try:
                    self.events += self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    pass
                self.send()

    def goaways(self) -> list[h2.events.ConnectionTerminated]:
        return [e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)]


async def serve(settings: H2Settings = H2Settings(), policy: ConnectionPolicy = ConnectionPolicy(), capacity=1 << 20):
    ours, theirs = memory_transport_pair(capacity=capacity)
    owner = Owner()
    endpoint = H2Endpoint(ours, client_side=False, flush_queue=FlushQueue(), settings=settings,
                          on_request=owner.on_request, on_refused=owner.on_refused, name="test", policy=policy)
    return endpoint, owner, Client(theirs)


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((frame_type, flags)) + stream_id.to_bytes(4, "big") + payload


async def test_streams_reset_in_the_batch_that_opened_them_are_never_dispatched():
    endpoint, owner, client = await serve()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.send()
        await client.pump(lambda: endpoint.preface_done)
        for _ in range(100):  # HEADERS + RST_STREAM in one write, 100 times: below the cut
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream_id, REQUEST)
            client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        client.send()
        await trio.sleep(0.05)
        assert owner.requests == [] and not endpoint.closed
        assert endpoint.premature_resets == 100
        nursery.cancel_scope.cancel()


async def test_rapid_reset_is_cut_with_enhance_your_calm():
    endpoint, owner, client = await serve(H2Settings(premature_reset_streams=100))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        for _ in range(400):
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream_id, REQUEST)
            client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            client.send()
        await client.pump(lambda: client.goaways() or client.closed)
        assert endpoint.closed
        assert client.goaways() and client.goaways()[-1].error_code == CALM
        assert owner.requests == []
        assert any("rapid reset" in reason for reason in owner.refused)


async def test_resets_after_dispatch_but_before_an_answer_count_as_premature():
    endpoint, owner, client = await serve(H2Settings(premature_reset_streams=20))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.send()
        for _ in range(30):
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream_id, REQUEST)
            client.send()
            await trio.sleep(0.002)  # its own batch: dispatched
            client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            client.send()
            await trio.sleep(0.002)
            if endpoint.closed:
                break
        await client.pump(lambda: client.goaways() or client.closed)
        assert endpoint.closed and client.goaways()[-1].error_code == CALM
        assert 0 < len(owner.requests) <= 11  # cut once half of 20 were premature


async def test_answered_streams_that_are_reset_are_not_premature():
    endpoint, owner, client = await serve(H2Settings(premature_reset_streams=10))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.send()
        for _ in range(40):
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream_id, REQUEST)
            client.send()
            await trio.sleep(0.002)
            endpoint.send_headers(stream_id, [(b":status", b"200")])  # answered
            endpoint.flush()
            await client.pump(lambda: any(isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream_id
                                          for e in client.events))
            client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            client.send()
        await trio.sleep(0.05)
        assert not endpoint.closed and endpoint.premature_resets == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("name", "flood"),
    [
        ("PING", lambda i: frame(0x6, 0, 0, i.to_bytes(8, "big"))),
        ("SETTINGS", lambda i: frame(0x4, 0, 0, b"")),
        ("PRIORITY", lambda i: frame(0x2, 0, 1, b"\x00\x00\x00\x00\x10")),
        ("WINDOW_UPDATE", lambda i: frame(0x8, 0, 0, (1).to_bytes(4, "big"))),
        ("empty DATA", lambda i: frame(0x0, 0, 1, b"")),
    ],
)
async def test_control_frame_floods_are_cut_with_enhance_your_calm(name, flood):
    endpoint, owner, client = await serve(H2Settings(control_frame_burst=200, control_frames_per_second=10))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.conn.send_headers(1, REQUEST)  # stream 1 exists for the DATA and PRIORITY floods
        client.send()
        client.send_raw(b"".join(flood(i) for i in range(2000)))
        await client.pump(lambda: client.goaways() or client.closed)
        assert endpoint.closed and "flood" in endpoint.close_reason
        assert client.goaways() and client.goaways()[-1].error_code == CALM


async def test_a_header_block_that_never_ends_is_cut_before_it_grows():
    endpoint, owner, client = await serve(H2Settings(max_header_list_bytes=4096))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.send()
        client.send_raw(frame(0x1, 0, 1, b"\x00" * 100))  # HEADERS without END_HEADERS
        client.send_raw(b"".join(frame(0x9, 0, 1, b"\x00" * 1000) for _ in range(10)))  # CONTINUATION...
        await client.pump(lambda: client.goaways() or client.closed)
        assert endpoint.closed and "header block" in endpoint.close_reason
        assert owner.requests == []


async def test_writes_to_a_stream_the_client_reset_are_quiet_and_the_handler_is_told():
    """The issue's h2load case: SEND_DATA in state CLOSED raised into the relay and hung the shared link."""
    endpoint, owner, client = await serve()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.conn.send_headers(1, REQUEST, end_stream=True)
        client.send()
        await client.pump(lambda: owner.requests)
        handler = endpoint.streams[1]
        endpoint.send_headers(1, [(b":status", b"200")])
        endpoint.flush()
        client.conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
        client.send()
        with trio.fail_after(5):
            while not handler.resets:
                await trio.sleep(0.01)
        assert endpoint.send_data(1, b"x" * 100) == 0  # no exception
        assert endpoint.send_headers(1, [(b"grpc-status", b"0")], end_stream=True) is False
        assert not endpoint.closed
        nursery.cancel_scope.cancel()


async def test_a_client_goaway_does_not_stop_the_answers_to_its_open_streams():
    endpoint, owner, client = await serve()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.conn.send_headers(1, REQUEST, end_stream=True)
        client.conn.close_connection()  # GOAWAY from the client, stream 1 still open
        client.send()
        await client.pump(lambda: owner.requests)
        await trio.sleep(0.01)
        assert endpoint.send_headers(1, [(b":status", b"200")])
        assert endpoint.send_data(1, b"answer", end_stream=False) == 6
        endpoint.flush()
        received = b""
        with trio.fail_after(5):  # (h2 as a client refuses to read after its own GOAWAY: look at the bytes)
            while b"answer" not in received:
                received += await client.transport.receive()
        nursery.cancel_scope.cancel()


async def test_a_stream_that_does_not_consume_never_blocks_the_connection_window():
    """Connection-level flow control is returned on receipt: one stalled stream cannot hold the link."""
    endpoint, owner, client = await serve(H2Settings(initial_window=65_536, connection_window=131_072))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65_535})
        client.send()
        await client.pump(lambda: endpoint.preface_done)
        total = 0
        for _ in range(6):  # 6 streams x 60 KB = 360 KB > the 128 KB connection window
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream_id, REQUEST)
            await client.pump(lambda: client.conn.local_flow_control_window(stream_id) >= 60_000, timeout=2)
            client.conn.send_data(stream_id, b"d" * 60_000)
            client.send()
            total += 60_000
            await trio.sleep(0.01)
            await client.pump(lambda: client.conn.outbound_flow_control_window >= 60_000, timeout=2)
        assert sum(len(endpoint.streams[s].data) for s in owner.requests) == total
        nursery.cancel_scope.cancel()


async def test_output_is_limited_by_the_connection_output_limit():
    endpoint, owner, client = await serve(policy=ConnectionPolicy(output_limit=20_000), capacity=1024)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30})
        client.conn.increment_flow_control_window(1 << 30)
        client.conn.send_headers(1, REQUEST, end_stream=True)
        client.send()
        with trio.fail_after(5):
            while not owner.requests or endpoint.conn.window(1) < 1 << 20:
                data = await client.transport.receive()
                client.events += client.conn.receive_data(data)
                client.send()
        endpoint.send_headers(1, [(b":status", b"200")])
        sent = endpoint.send_data(1, b"x" * (1 << 20))
        assert 0 < sent <= 20_000  # the client reads nothing more: it may not make us buffer a megabyte
        endpoint.flush()
        assert endpoint.send_data(1, b"x" * (1 << 20)) <= 20_000
        nursery.cancel_scope.cancel()


async def test_graceful_goaway_takes_two_steps():
    endpoint, owner, client = await serve()
    # h2 as a client stops reading at the first GOAWAY (it would never answer the PING in between); a
    # client that keeps reading, as grpc and nghttp2 do:
    client.conn = _KeepReadingH2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.conn.initiate_connection()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.conn.send_headers(1, REQUEST, end_stream=True)
        client.send()
        await client.pump(lambda: owner.requests)
        endpoint.goaway()
        endpoint.flush()
        await client.pump(lambda: len(client.goaways()) >= 2)
        first, final = client.goaways()[:2]
        assert first.last_stream_id == 0x7FFFFFFF and final.last_stream_id == 1
        assert not endpoint.closed  # stream 1 is still open
        endpoint.send_headers(1, [(b":status", b"200"), (b"grpc-status", b"0")], end_stream=True)
        endpoint.detach(1)
        endpoint.flush()
        with trio.fail_after(5):
            while not endpoint.closed:
                await trio.sleep(0.01)


# --- an H2Endpoint client and an H2Endpoint server, linked in memory -------------------------------------------

RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]


class Recorder:
    """A client-side stream handler that records what its stream saw, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_headers(self, headers, end_stream):
        self.events.append(("headers", headers, end_stream))

    def on_data(self, data, flow_length, end_stream):
        self.events.append(("data", data, end_stream))

    def on_end(self):
        self.events.append(("end",))

    def on_reset(self, error_code):
        self.events.append(("reset", error_code))

    def on_writable(self):
        self.events.append(("writable",))

    def on_connection_lost(self, reason):
        self.events.append(("lost", reason))

    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]


class Link:
    """A client H2Endpoint and a server H2Endpoint over a memory pair, each with its own flush queue (as two
    gateways would have); `flush()` hands both endpoints' queued frames over."""

    def __init__(self, client: H2Endpoint, server: H2Endpoint, owner: Owner) -> None:
        self.client, self.server, self.owner = client, server, owner

    def flush(self) -> None:
        self.client._flush_queue.flush()  # noqa: SLF001 - what the reader does after each batch
        self.server._flush_queue.flush()  # noqa: SLF001

    def call(self, handler: Recorder, headers=REQUEST, end_stream: bool = False) -> int:
        stream_id = self.client.open_stream(headers, handler, end_stream=end_stream)
        self.flush()
        return stream_id


@asynccontextmanager
async def linked(client_settings: H2Settings = H2Settings(), server_settings: H2Settings = H2Settings(),
                 owner: Owner | None = None, capacity: int = 256 * 1024):
    ours, theirs = memory_transport_pair(capacity)
    owner = owner or Owner()
    client = H2Endpoint(ours, client_side=True, flush_queue=FlushQueue(), settings=client_settings, name="client")
    server = H2Endpoint(theirs, client_side=False, flush_queue=FlushQueue(), settings=server_settings,
                        on_request=owner.on_request, on_refused=owner.on_refused, name="server",
                        policy=ConnectionPolicy())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        nursery.start_soon(server.run)
        await eventually(lambda: client.preface_done and server.preface_done and client.slots > 0)
        yield Link(client, server, owner)
        nursery.cancel_scope.cancel()


async def test_a_call_between_two_endpoints_carries_headers_data_and_trailers_both_ways():
    async with linked() as link:
        handler = Recorder()
        assert link.client.has_capacity() and link.client.slots == 100
        stream_id = link.call(handler)
        assert link.client.send_data(stream_id, b"request body", end_stream=True) == len(b"request body")
        link.flush()
        await eventually(lambda: link.owner.requests == [stream_id])
        served = link.server.streams[stream_id]
        await eventually(lambda: served.data == b"request body")
        assert link.server.in_flight == 1 and link.client.in_flight == 1
        link.server.send_headers(stream_id, RESPONSE)
        link.server.send_data(stream_id, b"reply")
        link.server.send_headers(stream_id, TRAILERS, end_stream=True)
        link.flush()
        await eventually(lambda: len(handler.events) == 3)
        assert handler.events == [("headers", RESPONSE, False), ("data", b"reply", False), ("headers", TRAILERS, True)]


async def test_end_stream_without_data_ends_the_stream_alone():
    async with linked() as link:
        handler = Recorder()
        stream_id = link.call(handler)
        await eventually(lambda: link.owner.requests)
        link.server.send_headers(stream_id, RESPONSE)
        assert link.server.send_data(stream_id, b"") == 0  # nothing to send, nothing ends
        assert link.server.send_data(stream_id, b"", end_stream=True) == 0
        link.flush()
        await eventually(lambda: len(handler.events) == 2)
        assert handler.events[1] == ("data", b"", True)


async def test_a_stream_window_reopens_only_when_its_bytes_were_acknowledged_and_then_it_is_writable():
    settings = H2Settings(initial_window=1000)
    async with linked(server_settings=settings) as link:
        handler = Recorder()
        stream_id = link.call(handler)
        assert link.client.send_data(stream_id, b"a" * 5000) == 1000  # the server's stream window
        assert link.client.send_data(stream_id, b"a") == 0  # no room until the server passes them on
        link.flush()
        await eventually(lambda: stream_id in link.server.streams and len(link.server.streams[stream_id].data) == 1000)
        link.server.acknowledge(stream_id, 0)  # nothing to acknowledge: nothing happens
        link.server.acknowledge(stream_id + 100, 10)  # no such stream: ignored
        link.server.acknowledge(stream_id, 1000)
        link.flush()
        await eventually(lambda: ("writable",) in handler.events)
        assert link.client.send_data(stream_id, b"b" * 5000) == 1000


async def test_room_in_the_connection_window_wakes_the_streams_that_sent_least_first():
    settings = H2Settings(initial_window=1 << 20, connection_window=65_535)
    async with linked(server_settings=settings) as link:
        bulk, small = Recorder(), Recorder()
        order: list[str] = []
        bulk.on_writable = lambda: order.append("bulk")
        small.on_writable = lambda: order.append("small")
        bulk_id, small_id = link.call(bulk), link.call(small)
        await eventually(lambda: len(link.owner.requests) == 2)
        assert link.client.send_data(bulk_id, b"x" * 65_535) == 65_535  # the whole connection window
        assert link.client.send_data(small_id, b"y") == 0
        link.flush()
        await eventually(lambda: order)  # the server returned the connection window on receipt
        assert order == ["small", "bulk"]


async def test_a_stream_held_back_by_the_output_limit_is_woken_when_the_flush_hands_the_bytes_over():
    """Bytes queued in one batch count against the output limit before they are flushed. When the flush hands
    them to a transport that takes them all at once, no drain event follows: the streams refused meanwhile
    must be woken by the flush itself, or a small answer waits behind bulk that has long left (found by
    tests/hostile: legit calls hung for their whole deadline while a slow reader's echoes filled the link)."""
    settings = H2Settings(initial_window=4 << 20, connection_window=8 << 20)
    async with linked(server_settings=settings, capacity=8 << 20) as link:
        bulk, small = Recorder(), Recorder()
        bulk_id, small_id = link.call(bulk), link.call(small)
        await eventually(lambda: len(link.owner.requests) == 2 and link.client.conn.window(bulk_id) >= 2 << 20)
        limit = link.client.policy.output_limit
        assert link.client.send_data(bulk_id, b"x" * (2 * limit)) == limit  # held back by the output limit
        assert link.client.send_data(small_id, b"y") == 0
        link.client.flush()
        assert link.client.transport.buffered == 0  # all taken at once: no drain event will come
        await eventually(lambda: ("writable",) in small.events)
        assert link.client.send_data(small_id, b"y") == 1


async def test_a_write_to_a_stream_that_ended_tells_its_handler_at_the_next_flush_instead_of_raising():
    async with linked() as link:
        handler = Recorder()
        stream_id = link.call(handler, end_stream=True)
        await eventually(lambda: link.owner.requests)
        link.server.send_headers(stream_id, RESPONSE + [(b"grpc-status", b"0")], end_stream=True)
        link.flush()
        await eventually(lambda: handler.events)
        assert link.client.send_data(stream_id, b"late") == 0  # both sides ended it: h2 refuses quietly
        assert link.client.send_headers(stream_id, TRAILERS) is False
        assert handler.kinds() == ["headers"]
        link.flush()
        assert handler.kinds() == ["headers", "reset"] and stream_id not in link.client.streams


async def test_a_reset_stream_tells_the_other_sides_handler_and_a_second_reset_is_quiet():
    async with linked() as link:
        handler = Recorder()
        stream_id = link.call(handler)
        await eventually(lambda: link.owner.requests)
        served = link.server.streams[stream_id]
        link.client.reset(stream_id, h2.errors.ErrorCodes.CANCEL)
        link.client.reset(stream_id)  # already closed: nothing raised
        link.flush()
        await eventually(lambda: served.resets)
        assert served.resets == [h2.errors.ErrorCodes.CANCEL] and stream_id not in link.client.streams


async def test_a_server_handler_that_raises_resets_only_its_stream():
    class Broken(Owner):
        def on_request(self, endpoint, stream_id, headers, end_stream):
            super().on_request(endpoint, stream_id, headers, end_stream)
            if len(self.requests) == 1:
                raise RuntimeError("bug in the handler")

    async with linked(owner=Broken()) as link:
        first, second = Recorder(), Recorder()
        with structlog.testing.capture_logs() as logs:
            link.call(first)
            await eventually(lambda: first.events)
        assert first.events == [("reset", h2.errors.ErrorCodes.INTERNAL_ERROR)]
        assert any(e["event"] == "h2.handler_failed" for e in logs)
        second_id = link.call(second)
        await eventually(lambda: second_id in link.server.streams)
        assert not link.server.closed


async def test_a_server_at_its_stream_limit_refuses_new_streams_with_refused_stream():
    async with linked() as link:
        link.server.max_concurrent_streams = 1  # the limit admission_refusal applies
        kept, refused = Recorder(), Recorder()
        link.call(kept)
        link.call(refused)
        await eventually(lambda: refused.events)
        assert refused.events == [("reset", h2.errors.ErrorCodes.REFUSED_STREAM)] and kept.events == []
        assert link.server.admission_refusal()[0] is Status.RESOURCE_EXHAUSTED


async def test_streams_opened_after_a_graceful_goaway_began_are_refused_for_retry_elsewhere():
    async with linked() as link:
        link.server.goaway()
        link.server.goaway()  # once
        link.flush()
        late = Recorder()
        link.call(late)
        await eventually(lambda: late.events)
        assert late.events == [("reset", h2.errors.ErrorCodes.REFUSED_STREAM)]
        assert link.server.admission_refusal()[0] is Status.UNAVAILABLE


async def test_malformed_request_headers_reset_that_stream_only_and_tell_the_owner():
    async with linked() as link:
        bad, good = Recorder(), Recorder()
        link.call(bad, headers=[(b":method", b"POST"), (b":bogus", b"x")])
        await eventually(lambda: bad.events)
        assert bad.events == [("reset", h2.errors.ErrorCodes.PROTOCOL_ERROR)]
        assert any("malformed request headers" in reason for reason in link.owner.refused)
        good_id = link.call(good)
        await eventually(lambda: good_id in link.server.streams)


async def test_a_malformed_response_resets_the_stream_and_tells_its_handler():
    async with linked() as link:
        handler = Recorder()
        stream_id = link.call(handler)
        await eventually(lambda: link.owner.requests)
        link.server.send_headers(stream_id, [(b":status", b"OK!")])
        link.flush()
        await eventually(lambda: handler.events)
        assert handler.events == [("reset", h2.errors.ErrorCodes.PROTOCOL_ERROR)]
        assert stream_id not in link.client.streams and not link.client.closed


async def test_a_goaway_fails_only_the_streams_the_remote_side_never_saw():
    async with linked() as link:
        seen, unseen = Recorder(), Recorder()
        link.call(seen)
        await eventually(lambda: link.owner.requests)
        link.client.open_stream(REQUEST, unseen)  # queued, not sent before the GOAWAY arrives
        link.server.shutdown("idle")  # GOAWAY(last stream = the one it took), then close
        await eventually(lambda: link.client.draining)
        assert unseen.events == [("lost", "the remote side sent GOAWAY (NO_ERROR)")]
        assert seen.kinds() in ([], ["lost"])  # ends with the connection, not refused by the GOAWAY
        assert not link.client.has_capacity()


async def test_a_retired_client_takes_no_new_streams_and_closes_when_its_last_stream_ends():
    async with linked() as link:
        handler = Recorder()
        stream_id = link.call(handler)
        link.client.goaway()  # client side: retire
        assert link.client.draining and not link.client.has_capacity() and not link.client.closed
        link.client.retire("again")  # harmless
        link.client.detach(stream_id)
        link.flush()
        assert link.client.closed and link.client.close_reason == "we are shutting down"


async def test_a_retired_idle_client_closes_at_the_next_flush():
    async with linked() as link:
        link.client.retire("certificates reloaded")
        link.flush()
        assert link.client.closed and link.client.close_reason == "certificates reloaded"
        link.client.retire("closed already")
        link.client.goaway()
        link.client.shutdown("closed already")
        link.client.abort(CALM, "closed already")
        assert link.client.send_headers(1, REQUEST) is False and link.client.send_data(1, b"x") == 0
        assert link.client.close_reason == "certificates reloaded"


async def test_keepalive_pings_are_answered_and_keep_the_connection(autojump_clock):
    async with linked() as link:
        before = link.server.conn.control_frames
        with trio.move_on_after(10):
            await link.client.keepalive(interval=1, timeout=0.5)
        assert not link.client.closed and link.server.conn.control_frames >= before + 5


async def test_a_preface_that_arrives_in_pieces_is_assembled():
    endpoint, owner, client = await serve()
    preface = client.conn.data_to_send()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.send_raw(preface[:10])
        await trio.sleep(0.01)
        assert not endpoint.preface_done and endpoint.partial_since is not None
        client.send_raw(preface[10:])
        client.conn.send_headers(1, REQUEST, end_stream=True)
        client.send()
        await eventually(lambda: owner.requests == [1])
        assert endpoint.partial_since is None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["goaway", "shutdown"])
async def test_stopping_a_server_before_the_preface_closes_it_with_a_goaway(how):
    endpoint, owner, client = await serve()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        await trio.sleep(0.01)
        if how == "goaway":
            endpoint.goaway()
        else:
            endpoint.shutdown("idle")
        received = b""
        with trio.fail_after(2):
            while not any(kind == 0x7 for kind, _ in frame_types(received)):
                data = await client.transport.receive()
                if not data:
                    break
                received += data
        assert endpoint.closed
        if how == "shutdown":
            goaway = [payload for kind, payload in frame_types(received) if kind == 0x7]
            assert goaway and int.from_bytes(goaway[0][4:8], "big") == 0  # GOAWAY NO_ERROR


async def test_an_h2_protocol_error_closes_the_connection_and_tells_the_owner():
    endpoint, owner, client = await serve()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.send()
        client.send_raw(frame(0x1, 0x5, 2, b"\x82"))  # HEADERS on an even stream id: only servers use those
        await client.pump(lambda: client.closed or client.goaways())
        assert endpoint.closed and endpoint.close_reason.startswith("HTTP/2 protocol error from the remote side")
        assert owner.refused and owner.refused[0] == endpoint.close_reason


async def test_a_goaway_with_an_unknown_error_code_is_reported_by_number():
    endpoint, owner, client = await serve()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.send()
        client.send_raw(frame(0x7, 0, 0, (0).to_bytes(4, "big") + (0xBEEF).to_bytes(4, "big")))
        await eventually(lambda: endpoint.closed)
        assert endpoint.close_reason == f"the remote side sent GOAWAY ({0xBEEF})"


async def test_a_long_lived_connection_is_judged_on_its_recent_resets():
    """After 10 x premature_reset_streams streams the counters are halved: old good behaviour does not
    cover for a later burst forever, and old resets are forgotten."""
    endpoint, owner, client = await serve(H2Settings(premature_reset_streams=2))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(endpoint.run)
        client.send()
        for _ in range(20):  # answered streams: never premature
            stream_id = client.conn.get_next_available_stream_id()
            client.conn.send_headers(stream_id, REQUEST, end_stream=True)
            client.send()
            await eventually(lambda: stream_id in owner.requests)
            endpoint.send_headers(stream_id, [(b":status", b"200")], end_stream=True)
            endpoint.detach(stream_id)
            endpoint.flush()
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, REQUEST)
        client.send()
        await eventually(lambda: stream_id in owner.requests)
        client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)  # before an answer: premature
        client.send()
        await eventually(lambda: endpoint.streams_opened < 21)
        assert (endpoint.streams_opened, endpoint.premature_resets) == (10, 0) and not endpoint.closed
        nursery.cancel_scope.cancel()


async def test_a_new_client_connection_takes_calls_before_the_servers_settings_arrive():
    """RFC 9113 5.1.2: the remote's stream limit is unlimited until its SETTINGS say otherwise. A pool that
    just replaced a connection (certificate reload) routes calls to the new one at once; found by the CA
    rotation e2e test failing a call with "no address" while the server's SETTINGS were in flight."""
    ours, theirs = memory_transport_pair()
    client = H2Endpoint(ours, client_side=True, flush_queue=FlushQueue(), name="client")
    assert client.has_capacity() and client.slots == H2Settings().max_concurrent_streams
    server_owner = Owner()
    server = H2Endpoint(theirs, client_side=False, flush_queue=FlushQueue(), on_request=server_owner.on_request)
    handler = Recorder()
    stream_id = client.open_stream(REQUEST, handler, end_stream=True)  # before either side has read a byte
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        nursery.start_soon(server.run)
        await eventually(lambda: server_owner.requests == [stream_id])
        nursery.cancel_scope.cancel()
