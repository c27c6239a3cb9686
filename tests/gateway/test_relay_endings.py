"""A caller's stream may end at any moment (reset, connection closed, GOAWAY + close): the relay never raises,
the shared upstream connection is not disturbed, the provider's stream is cancelled, the call ends once.

Everything in memory: caller (h2 client) -> H2Endpoint (server) -> Relay -> H2Endpoint (client) -> provider
(h2 server driven by the test). No sockets, no gateway process.
"""

from __future__ import annotations

import math

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import structlog
import trio

from interlink.gateway.relay import DeadlineTimers, Relay
from interlink.net.connection import FlushQueue
from interlink.net.h2link import H2Endpoint
from interlink.net.transport import memory_transport_pair

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/m"), (b":authority", b"x"),
           (b"content-type", b"application/grpc"), (b"te", b"trailers")]
UPSTREAM = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/m"), (b":authority", b"provider"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers")]


class Peer:
    """An h2 connection driven by the test on the far end of a memory transport."""

    def __init__(self, transport, client_side: bool, window: int = 65_535) -> None:
        self.transport = transport
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(
            client=client_side, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []

    def send(self) -> None:
        self.transport.write(self.conn.data_to_send())

    async def pump_until(self, condition, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not condition():
                data = await self.transport.receive()
                if not data:
                    return
                self.events += self.conn.receive_data(data)
                self.send()

    def has(self, kind, stream_id: int | None = None) -> bool:
        return any(isinstance(e, kind) and (stream_id is None or e.stream_id == stream_id) for e in self.events)


class World:
    def __init__(self) -> None:
        self.queue = FlushQueue()
        self.timers = DeadlineTimers(self.queue)
        caller_t, down_t = memory_transport_pair()
        up_t, provider_t = memory_transport_pair()
        self.relays: list[Relay] = []
        self.down = H2Endpoint(down_t, client_side=False, flush_queue=self.queue, on_request=self.on_request, name="down")
        self.up = H2Endpoint(up_t, client_side=True, flush_queue=self.queue, name="up")
        self.caller = Peer(caller_t, client_side=True)
        self.provider = Peer(provider_t, client_side=False)
        self.connect_at_once = True

    def on_request(self, down: H2Endpoint, stream_id: int, headers, end_stream: bool) -> None:
        relay = Relay(down, stream_id, {"service": "svc", "method": "m"}, self.timers, math.inf, end_stream)
        self.relays.append(relay)
        if self.connect_at_once:
            relay.connect(self.up, UPSTREAM, end_stream)

    async def run(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.down.run)
        nursery.start_soon(self.up.run)
        nursery.start_soon(self.timers.run)
        self.caller.send()
        self.provider.send()
        await self.provider.pump_until(lambda: self.up.preface_done)


STATES = ["waiting-for-upstream", "request-streaming", "response-headers-sent", "response-data-pending",
          "trailers-pending"]
ENDINGS = ["reset", "connection-closed", "goaway-then-close"]


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("state", STATES)
async def test_a_caller_leaving_in_any_state_never_disturbs_the_upstream(state, ending):
    world = World()
    world.connect_at_once = state != "waiting-for-upstream"
    if state in ("response-data-pending", "trailers-pending"):
        world.caller = Peer(world.caller.transport, client_side=True, window=10)  # reads almost nothing
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await world.run(nursery)
            world.caller.conn.send_headers(1, REQUEST)
            world.caller.conn.send_data(1, b"\x00\x00\x00\x00\x05hello", end_stream=state != "request-streaming")
            world.caller.send()
            with trio.fail_after(5):
                while not world.relays:
                    await trio.sleep(0.005)
            relay = world.relays[0]
            if world.connect_at_once:
                await world.provider.pump_until(lambda: world.provider.has(h2.events.RequestReceived))
                up_sid = next(e.stream_id for e in world.provider.events if isinstance(e, h2.events.RequestReceived))
                if state != "request-streaming":
                    world.provider.conn.send_headers(up_sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
                    if state in ("response-data-pending", "trailers-pending"):
                        world.provider.conn.send_data(up_sid, b"\x00\x00\x00\x00\x40" + b"r" * 64)
                    if state == "trailers-pending":
                        world.provider.conn.send_headers(up_sid, [(b"grpc-status", b"0")], end_stream=True)
                    world.provider.send()
                    await world.caller.pump_until(lambda: world.caller.has(h2.events.ResponseReceived))
            # the caller leaves
            if ending == "reset":
                world.caller.conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
                world.caller.send()
            elif ending == "connection-closed":
                world.caller.transport.close()
            else:
                world.caller.conn.close_connection()
                world.caller.send()
                world.caller.transport.close()
            with trio.fail_after(5):
                while not relay.done:
                    await trio.sleep(0.005)
            if world.connect_at_once:
                if state != "trailers-pending":
                    await world.provider.pump_until(lambda: world.provider.has(h2.events.StreamReset, up_sid)
                                                    or world.provider.has(h2.events.StreamEnded, up_sid))
                # the shared upstream connection carries on: a second call on it works
                assert world.up.usable and not world.up.closed
                probe = Probe()
                sid = world.up.open_stream(UPSTREAM, probe, end_stream=True)
                world.queue.flush()
                await world.provider.pump_until(lambda: world.provider.has(h2.events.RequestReceived, sid))
                world.provider.conn.send_headers(sid, [(b":status", b"200"), (b"grpc-status", b"0")], end_stream=True)
                world.provider.send()
                with trio.fail_after(5):
                    while not probe.ended:
                        await trio.sleep(0.005)
            else:  # it never got an upstream: nothing may reach the provider
                await trio.sleep(0.05)
                assert not world.provider.has(h2.events.RequestReceived)
            nursery.cancel_scope.cancel()
    failures = [e for e in logs if e["event"] in ("h2.handler_failed", "call.deadline_failed") or e.get("exc_info")]
    assert not failures, failures
    assert sum(1 for e in logs if e["event"] == "call") == 1  # ended exactly once, one access line
    assert not world.up.streams  # nothing left behind on the shared connection


class Probe:
    def __init__(self) -> None:
        self.ended = False

    def on_headers(self, headers, end_stream):
        self.ended = self.ended or end_stream

    def on_data(self, data, flow_length, end_stream):
        pass

    def on_end(self):
        self.ended = True

    def on_reset(self, error_code):
        self.ended = True

    def on_writable(self):
        pass

    def on_connection_lost(self, reason):
        self.ended = True
