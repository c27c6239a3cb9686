"""The consumer-side gateway's half of message interop, in memory (MockClock): MessagePump reads an import's
messages from the broker, sends each as a MessageLink call in order on one peer connection (h2, played by the
test as GW-A), and acknowledges, dead-letters or holds and resends each by the answer. The broker is an
in-memory double of broker_adapters.base.Broker; tests/e2e/test_messages.py runs the same against nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from broker_adapters.base import BrokerError, BrokerMessage, PublishAck
from interlink.config import MessageImportConfig, MessagingConfig
from interlink.gateway.messages import DEAD_LETTER_STREAM, ImportCounters, MessagePump
from interlink.gateway.metrics import CallMetrics
from interlink.net.connection import FlushQueue
from interlink.net.h2link import H2Endpoint
from interlink.net.pool import ConnectionPool, PoolGroup
from interlink.net.transport import memory_transport_pair
from interlink.model import Status
from interlink.wire import link_headers, message_link
from tests.gateway.harness import RESPONSE_HEAD, H2Peer, grpc_trailers, wait_until

AUTHORITY = b"site-b.gw.site-a.test"


class _Ack:
    done = True

    def __init__(self, sequence: int) -> None:
        self.sequence = sequence

    async def wait(self, timeout: float) -> PublishAck:
        return PublishAck(DEAD_LETTER_STREAM, self.sequence)


class QueueBroker:
    """A stream of messages for one durable consumer: fetch hands out what is not acknowledged and not out."""

    def __init__(self, messages: list[BrokerMessage]) -> None:
        self.connected = True
        self.last_error: str | None = None
        self.waiting = list(messages)
        self.acked: list[int] = []
        self.progress: list[int] = []
        self.naks: list[int] = []
        self.dead: list[tuple[str, bytes, dict[str, str], str | None]] = []
        self.streams: dict[str, list[str]] = {}

    async def wait_connected(self, timeout: float) -> bool:
        return True

    async def stream_of_subject(self, subject: str) -> str | None:
        return "OUT"

    async def ensure_stream(self, name: str, subjects: list[str], *, duplicate_window: float = 120.0) -> None:
        self.streams[name] = subjects

    async def ensure_consumer(self, stream, durable, *, filter_subject, max_ack_pending, ack_wait) -> None:
        self.consumer = (stream, durable, filter_subject, max_ack_pending, ack_wait)

    async def fetch(self, stream, durable, *, batch, wait) -> list[BrokerMessage]:
        if not self.waiting:
            await trio.sleep(wait)
            return []
        taken, self.waiting = self.waiting[:batch], self.waiting[batch:]
        return taken

    async def ack(self, message: BrokerMessage) -> None:
        self.acked.append(message.stream_sequence)

    async def nak(self, message: BrokerMessage, delay: float = 0.0) -> None:
        self.naks.append(message.stream_sequence)

    async def in_progress(self, message: BrokerMessage) -> None:
        self.progress.append(message.stream_sequence)

    async def term(self, message: BrokerMessage) -> None:
        raise AssertionError("the pump never terminates a message")

    def publish(self, subject, data, *, headers=None, msg_id=None, stream=None):
        if stream != DEAD_LETTER_STREAM:
            raise BrokerError("only dead letters are published by the pump", retriable=False)
        self.dead.append((subject, data, dict(headers or ()), msg_id))
        return _Ack(len(self.dead))


def message(sequence: int, data: bytes = b"m", subject: str = "orders.created", app: str = "order-app",
            headers: list[tuple[str, str]] | None = None) -> BrokerMessage:
    return BrokerMessage(subject, data, [("Interlink-App", app), *(headers or [])], "OUT", sequence, 1, 5, 0)


class PeerGateway:
    """The test's GW-A: an h2 server on the pump's connection; answers by hand or by a rule."""

    def __init__(self, peer: H2Peer) -> None:
        self.peer = peer

    @property
    def requests(self) -> list[int]:
        return self.peer.requests

    def delivery(self, sid: int) -> message_link.Delivery:
        return message_link.decode_delivery(self.peer.stream(sid).messages[0])

    def head(self, sid: int) -> dict[bytes, bytes]:
        return dict(self.peer.stream(sid).headers[0])

    def answer(self, sid: int, status: int = 0, text: str = "") -> None:
        if status == 0:
            self.peer.send_headers(sid, RESPONSE_HEAD)
            self.peer.send_message(sid, message_link.encode_ack(message_link.DeliveryAck("ORDERS", sid)))
            self.peer.send_trailers(sid, grpc_trailers())
        else:
            self.peer.send_headers(sid, RESPONSE_HEAD + grpc_trailers(status, text), end=True)


@asynccontextmanager
async def open_pump(messages: list[BrokerMessage], **settings) -> AsyncIterator[tuple[MessagePump, QueueBroker, list]]:
    broker = QueueBroker(messages)
    flush = FlushQueue()
    peers: list[PeerGateway] = []

    async def connect() -> H2Endpoint:
        ours, theirs = memory_transport_pair()
        peer = H2Peer(theirs, client_side=False)
        peers.append(PeerGateway(peer))
        nursery.start_soon(peer.run)
        return H2Endpoint(ours, client_side=True, flush_queue=flush, name="peer")

    item = MessageImportConfig("orders.created", "site-a", max_in_flight=settings.pop("max_in_flight", 8))
    config = MessagingConfig(imports=(item,), **{"delivery_timeout_ms": 2000, "ack_wait_ms": 6000, **settings})
    async with trio.open_nursery() as nursery:
        pool = ConnectionPool("site-a", connect, size=1, keepalive_interval=1e6, backoff_initial=1e4, backoff_max=1e4)
        group = PoolGroup("site site-a", [pool])
        nursery.start_soon(pool.run)
        pump = MessagePump("site-b", item, config, broker, group=lambda: group, authority=lambda: AUTHORITY,
                           flush=flush.flush, calls=CallMetrics(), counters=ImportCounters())
        await wait_until(lambda: group.up and peers and peers[0].peer.settings_seen)
        nursery.start_soon(pump.run)
        yield pump, broker, peers
        nursery.cancel_scope.cancel()


async def answer_all(peers, status: int = 0, text: str = "", count: int | None = None) -> None:
    gateway = peers[0]
    answered: set[int] = set()
    while count is None or len(answered) < count:
        for sid in list(gateway.requests):
            if sid not in answered and gateway.peer.stream(sid).ended:
                gateway.answer(sid, status, text)
                answered.add(sid)
        await trio.sleep(0.001)


async def test_messages_cross_in_order_and_are_acknowledged_after_the_peer_stored_them(autojump_clock):
    async with open_pump([message(n, b"m%d" % n, headers=[("kind", "x"), ("Nats-Msg-Id", "p")]) for n in (1, 2, 3)]) \
            as (pump, broker, peers):
        gateway = peers[0]
        await wait_until(lambda: len(gateway.requests) == 3 and gateway.peer.stream(gateway.requests[-1]).ended)
        assert broker.acked == []  # nothing is acknowledged before the peer answered
        deliveries = [gateway.delivery(sid) for sid in gateway.requests]
        assert [(d.data, d.origin_sequence, d.message_id, d.attempt) for d in deliveries] == [
            (b"m1", 1, "site-b:OUT:1", 1), (b"m2", 2, "site-b:OUT:2", 1), (b"m3", 3, "site-b:OUT:3", 1)]
        assert deliveries[0].headers == (("kind", "x"),)  # Interlink-App became the caller app; Nats-* stay home
        head = gateway.head(gateway.requests[0])
        assert head[b":path"] == b"/interlink.messaging.v1.MessageLink/orders.created"
        assert head[b":authority"] == AUTHORITY and head[link_headers.CALLER_APP] == b"order-app"
        assert head[b"grpc-timeout"].endswith(b"m") or head[b"grpc-timeout"].endswith(b"S")
        for sid in gateway.requests:
            gateway.answer(sid)
        await wait_until(lambda: broker.acked == [1, 2, 3])
        assert (pump.counters.delivered, pump.counters.dead_lettered, pump.counters.redelivered) == (3, 0, 0)


async def test_a_refusal_for_good_is_dead_lettered_with_its_reason_then_acknowledged(autojump_clock):
    async with open_pump([message(1, b"nope", app="intruder")]) as (pump, broker, peers):
        await wait_until(lambda: peers[0].requests and peers[0].peer.stream(peers[0].requests[0]).ended)
        peers[0].answer(peers[0].requests[0], 7, "app intruder of site site-b may not call subject orders.created")
        await wait_until(lambda: broker.acked == [1])
        ((subject, data, headers, msg_id),) = broker.dead
        assert (subject, data, msg_id) == ("interlink.dead.orders.created", b"nope", "site-b:OUT:1:dead")
        assert headers[message_link.DEAD_LETTER_STATUS] == "PERMISSION_DENIED"
        assert headers[message_link.DEAD_LETTER_REASON] == "app intruder of site site-b may not call subject orders.created"
        assert headers[message_link.DEAD_LETTER_PEER] == "site-a" and headers["Interlink-App"] == "intruder"
        assert pump.counters.dead_letter_reasons == {"PERMISSION_DENIED": 1}


async def test_a_transient_failure_holds_the_messages_and_sends_them_again_in_order(autojump_clock):
    async with open_pump([message(n) for n in (1, 2, 3)]) as (pump, broker, peers):
        gateway = peers[0]
        await wait_until(lambda: len(gateway.requests) == 3 and gateway.peer.stream(gateway.requests[-1]).ended)
        first, second, third = gateway.requests
        gateway.answer(first)
        gateway.answer(second, 14, "stream ORDERS of site site-a did not store the message: connection lost")
        gateway.answer(third, 14, "an earlier message of subject orders.created (origin sequence 2) is not stored yet")
        await wait_until(lambda: len(gateway.requests) == 5)
        assert broker.acked == [1] and broker.progress[:2] == [2, 3]  # held, not redelivered by the broker
        resent = [gateway.delivery(sid) for sid in gateway.requests[3:]]
        assert [(d.origin_sequence, d.attempt) for d in resent] == [(2, 2), (3, 2)]
        await wait_until(lambda: gateway.peer.stream(gateway.requests[-1]).ended)
        for sid in gateway.requests[3:]:
            gateway.answer(sid)
        await wait_until(lambda: broker.acked == [1, 2, 3])
        assert pump.counters.redelivered == 2 and broker.dead == []


async def test_no_answer_within_the_delivery_timeout_is_sent_again(autojump_clock):
    async with open_pump([message(1)], delivery_timeout_ms=1000) as (pump, broker, peers):
        gateway = peers[0]
        await wait_until(lambda: len(gateway.requests) == 2, timeout=30)
        assert gateway.peer.stream(gateway.requests[0]).reset is not None  # the first one was given up
        assert gateway.delivery(gateway.requests[1]).attempt == 2
        assert pump.counters.last_error.startswith("DEADLINE_EXCEEDED: no answer from site site-a within 1000 ms")
        await wait_until(lambda: gateway.peer.stream(gateway.requests[1]).ended)
        gateway.answer(gateway.requests[1])
        await wait_until(lambda: broker.acked == [1])


async def test_what_cannot_cross_is_dead_lettered_unsent_and_the_rest_still_go(autojump_clock):
    async with open_pump([message(1, b"x" * 101), message(2, subject="orders.a/b"), message(3)],
                         max_message_bytes=100) as (pump, broker, peers):
        gateway = peers[0]
        await wait_until(lambda: gateway.requests and gateway.peer.stream(gateway.requests[0]).ended)
        assert [gateway.delivery(sid).origin_sequence for sid in gateway.requests] == [3]
        gateway.answer(gateway.requests[0])
        await wait_until(lambda: sorted(broker.acked) == [1, 2, 3])
        reasons = {headers[message_link.DEAD_LETTER_STATUS] for _, _, headers, _ in broker.dead}
        assert reasons == {"INVALID_ARGUMENT"} and len(broker.dead) == 2


async def test_the_peers_stream_limit_paces_the_window(autojump_clock):
    """More messages than the connection may carry at once: the pump waits for answers, never overruns."""
    async with open_pump([message(n) for n in range(1, 21)], max_in_flight=20) as (pump, broker, peers):
        gateway = peers[0]
        gateway.peer.conn.update_settings({3: 4})  # MAX_CONCURRENT_STREAMS = 4
        gateway.peer.flush()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_all, peers)
            await wait_until(lambda: len(broker.acked) == 20)
            nursery.cancel_scope.cancel()
        assert broker.acked == list(range(1, 21))
        assert [gateway.delivery(sid).origin_sequence for sid in gateway.requests] == list(range(1, 21))


@pytest.mark.parametrize("status", [Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED, Status.INTERNAL])
async def test_only_refusals_for_good_dead_letter(status, autojump_clock):
    async with open_pump([message(1)]) as (pump, broker, peers):
        gateway = peers[0]
        await wait_until(lambda: gateway.requests and gateway.peer.stream(gateway.requests[0]).ended)
        gateway.answer(gateway.requests[0], int(status), "busy")
        await wait_until(lambda: len(gateway.requests) == 2)
        assert broker.dead == [] and broker.acked == []
