"""H2Endpoint against a hostile or careless client, over in-memory transports (no sockets).

The client is h2 itself (the reference implementation), driven by hand so that it can do what real
attackers do: reset streams in the same write that opened them, flood control frames, never read.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
import pytest
import trio

from interlink.net.connection import ConnectionPolicy, FlushQueue
from interlink.net.h2link import H2Endpoint, H2Settings, _RelayH2Connection
from interlink.net.transport import memory_transport_pair

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/m"), (b":authority", b"x"),
           (b"content-type", b"application/grpc"), (b"te", b"trailers")]
CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


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
            while not owner.requests or endpoint.conn.local_flow_control_window(1) < 1 << 20:
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
    client.conn = _RelayH2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
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
