"""The provider-side gateway's half of message interop, in memory (MockClock): a peer's MessageLink call goes
through the call core like any call (access domain, ACL on the producer's app, audit, access line) and its
upstream is the broker (BrokerPublish), answered only once the broker stored the message. The broker here is
an in-memory double of broker_adapters.base.Broker; tests/broker and tests/e2e/test_messages.py use a real
nats-server."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from broker_adapters.base import BrokerError, PublishAck
from interlink.config import AclRule, MessagingConfig
from interlink.gateway.messages import OrderGuard
from interlink.routes import MessageExportRoute, MessageExports
from interlink.wire import grpc, link_headers, message_link, tracecontext
from tests.gateway.harness import DOMAIN, PEER, h2_request_headers, make_snapshot, open_world, wait_until

SUBJECT = "orders.created"
PRODUCER = "order-app"


class _Pending:
    def __init__(self) -> None:
        self.result: PublishAck | BrokerError | None = None
        self.settled = trio.Event()

    @property
    def done(self) -> bool:
        return self.settled.is_set()

    def settle(self, result: PublishAck | BrokerError) -> None:
        self.result = result
        self.settled.set()

    async def wait(self, timeout: float) -> PublishAck:
        with trio.move_on_after(timeout):
            await self.settled.wait()
        if self.result is None:
            raise BrokerError(f"no acknowledgement within {timeout} s")
        if isinstance(self.result, BrokerError):
            raise self.result
        return self.result


class MemoryBroker:
    """What the call core needs of a broker: publish in call order, acknowledged later (by the test, or at
    once with `auto`)."""

    def __init__(self, *, auto: bool = True) -> None:
        self.connected = True
        self.last_error: str | None = None
        self.published: list[tuple[str, bytes, list[tuple[str, str]], str | None, str | None, _Pending]] = []
        self.auto = auto
        self.sequence = 0
        self.ids: set[str] = set()

    def publish(self, subject, data, *, headers=None, msg_id=None, stream=None):
        pending = _Pending()
        self.published.append((subject, data, list(headers or ()), msg_id, stream, pending))
        if self.auto:
            self.ack(pending, msg_id, stream)
        return pending

    def ack(self, pending: _Pending, msg_id: str | None, stream: str | None) -> None:
        duplicate = msg_id in self.ids
        if not duplicate:
            self.ids.add(msg_id)  # type: ignore[arg-type]
            self.sequence += 1
        pending.settle(PublishAck(stream or "", self.sequence, duplicate))


def message_snapshot(max_message_bytes: int = 1 << 20):
    snapshot = make_snapshot()
    routes = (MessageExportRoute(SUBJECT, "ORDERS", {PEER: AclRule(apps=frozenset({PRODUCER}))}),
              MessageExportRoute("audit.>", "AUDIT", {PEER: AclRule()}))
    config = replace(snapshot.config, messaging=MessagingConfig(max_message_bytes=max_message_bytes))
    return replace(snapshot, config=config, message_exports=MessageExports({SUBJECT: routes[0]}, routes[1:]))


def delivery(sequence: int = 7, data: bytes = b"order 7", **fields) -> bytes:
    item = message_link.Delivery(
        data=data, headers=(("order-kind", "express"),), message_id=f"site-a:OUT:{sequence}", origin_site=PEER,
        origin_stream="OUT", origin_sequence=sequence, published_unix_nanos=1, attempt=1,
    )
    return message_link.encode_delivery(replace(item, **fields))


def message_headers(subject: str = SUBJECT, app: str | None = PRODUCER, traceparent: bytes | None = None):
    extra = [(tracecontext.TRACEPARENT, traceparent)] if traceparent else []
    headers = h2_request_headers(message_link.SERVICE, subject, authority=DOMAIN, app=app, peer=True, extra=extra)
    return headers


async def send(world, body: bytes, **head) -> int:
    sid = world.caller.open(message_headers(**head))
    world.caller.send_message(sid, body, end=True)
    return sid


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


async def open_message_world(broker: MemoryBroker, **options):
    return open_world("peer", "h2", snapshot=options.pop("snapshot", message_snapshot()), group="none", **options)


async def test_a_message_is_published_then_answered_with_where_it_landed(broker, autojump_clock):
    trace = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        sid = await send(world, delivery(), traceparent=trace)
        stream = world.caller.stream(sid)
        await wait_until(lambda: stream.outcome is not None)
        assert stream.outcome == ("OK", "")
        ack = message_link.decode_ack(stream.messages[0])
        assert (ack.stream, ack.sequence, ack.duplicate) == ("ORDERS", 1, False)
        subject, data, headers, msg_id, target, _ = broker.published[0]
        assert (subject, data, msg_id, target) == (SUBJECT, b"order 7", "site-a:OUT:7", "ORDERS")
        named = dict(headers)
        assert named["order-kind"] == "express"
        assert named[message_link.ORIGIN_SITE] == PEER and named[message_link.ORIGIN_SEQUENCE] == "7"
        assert named[message_link.CALLER_APP] == PRODUCER
        # the consumer continues the trace: same trace id, this hop's span as the parent
        assert named["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
        assert world.audits()[0]["decision"] == "allow"
        line = world.access()[0]
        assert (line["status"], line["service"], line["method"], line["upstream"]) == (
            "OK", message_link.SERVICE, SUBJECT, "stream ORDERS")
        assert line["message_id"] == "site-a:OUT:7" and line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert world.core.message_metrics.stored == {(PEER, SUBJECT, False): 1}
        world.assert_clean()


async def test_the_same_message_twice_is_stored_once(broker, autojump_clock):
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        for _ in range(2):
            sid = await send(world, delivery())
            await wait_until(lambda: world.caller.stream(sid).outcome is not None)
            assert world.caller.stream(sid).outcome == ("OK", "")
        assert broker.sequence == 1
        assert world.core.message_metrics.stored == {(PEER, SUBJECT, False): 1, (PEER, SUBJECT, True): 1}


async def test_a_wildcard_export_takes_every_subject_it_matches(broker, autojump_clock):
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        sid = await send(world, delivery(), subject="audit.login.failed", app=None)
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        assert world.caller.stream(sid).outcome == ("OK", "")
        assert broker.published[0][0] == "audit.login.failed" and broker.published[0][4] == "AUDIT"


@pytest.mark.parametrize("head, status, words", [
    ({"subject": "payments.settled"}, "UNIMPLEMENTED", "subject payments.settled is not exported by site site-b"),
    ({"app": "other-app"}, "PERMISSION_DENIED", "app other-app of site site-a may not call subject orders.created"),
    ({"app": None}, "PERMISSION_DENIED", "app (none) of site site-a may not call subject orders.created"),
])
async def test_refused_messages_are_audited_and_never_published(broker, head, status, words, autojump_clock):
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        sid = await send(world, delivery(), **head)
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        assert world.caller.stream(sid).outcome == (status, words)
        assert broker.published == []
        assert world.audits()[0]["decision"] == "deny" and world.audits()[0]["reason"] == words
        world.assert_clean()


async def test_a_message_over_the_limit_is_refused_for_good(broker, autojump_clock):
    async with await open_message_world(broker, snapshot=message_snapshot(max_message_bytes=100)) as world:
        world.core.broker = broker
        sid = await send(world, delivery(data=b"x" * 101, headers=()))
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        code, text = world.caller.stream(sid).outcome
        assert code == "INVALID_ARGUMENT" and "101 bytes (data and headers) exceeds site site-b's limit of 100" in text
        assert broker.published == []


async def test_a_body_that_is_no_delivery_is_refused(broker, autojump_clock):
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        sid = await send(world, b"\xff\xff\xff")
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        code, text = world.caller.stream(sid).outcome
        assert code == "INVALID_ARGUMENT" and text.startswith("malformed Delivery")
        assert broker.published == []
        world.assert_clean()


async def test_without_a_broker_a_message_is_unavailable(autojump_clock):
    async with await open_message_world(MemoryBroker()) as world:
        sid = await send(world, delivery())
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        assert world.caller.stream(sid).outcome == ("UNAVAILABLE", "site site-b has no messaging.broker running")


async def test_after_a_failed_message_its_successors_wait_until_it_is_stored(broker, autojump_clock):
    """Order: message 7 could not be stored (broker away), so 8 is refused until 7 is sent again and stored."""
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        broker.connected, broker.last_error = False, "connection refused"
        sid = await send(world, delivery(7))
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        assert world.caller.stream(sid).outcome == ("UNAVAILABLE", "the broker of site site-b is not connected: connection refused")
        broker.connected = True
        sid = await send(world, delivery(8))
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        assert world.caller.stream(sid).outcome == (
            "UNAVAILABLE", "an earlier message of subject orders.created (origin sequence 7) is not stored yet; it goes first")
        for sequence in (7, 8):
            sid = await send(world, delivery(sequence))
            await wait_until(lambda: world.caller.stream(sid).outcome is not None)
            assert world.caller.stream(sid).outcome == ("OK", "")
        assert [entry[3] for entry in broker.published] == ["site-a:OUT:7", "site-a:OUT:8"]


async def test_a_lost_acknowledgement_fails_the_call_and_holds_the_subject(autojump_clock):
    broker = MemoryBroker(auto=False)
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        first = await send(world, delivery(7))
        second = await send(world, delivery(8))
        await wait_until(lambda: len(broker.published) == 2)
        # published in the order they arrived, before either was acknowledged
        assert [entry[3] for entry in broker.published] == ["site-a:OUT:7", "site-a:OUT:8"]
        broker.published[0][5].settle(BrokerError("connection lost"))
        broker.ack(broker.published[1][5], "site-a:OUT:8", "ORDERS")
        await wait_until(lambda: world.caller.stream(first).outcome is not None
                         and world.caller.stream(second).outcome is not None)
        assert world.caller.stream(first).outcome == (
            "UNAVAILABLE", "stream ORDERS of site site-b did not store the message: connection lost")
        assert world.caller.stream(second).outcome == ("OK", "")
        third = await send(world, delivery(9))
        await wait_until(lambda: world.caller.stream(third).outcome is not None)
        assert world.caller.stream(third).outcome[0] == "UNAVAILABLE"


async def test_a_broker_refusal_for_good_is_failed_precondition(autojump_clock):
    broker = MemoryBroker(auto=False)
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        sid = await send(world, delivery())
        await wait_until(lambda: broker.published)
        broker.published[0][5].settle(BrokerError("expected stream does not match", retriable=False))
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        assert world.caller.stream(sid).outcome == (
            "FAILED_PRECONDITION", "stream ORDERS of site site-b refused the message: expected stream does not match")


async def test_the_deadline_passes_while_the_broker_is_slow(autojump_clock):
    broker = MemoryBroker(auto=False)
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        headers = message_headers() + [(b"grpc-timeout", b"2S")]
        sid = world.caller.open(headers)
        world.caller.send_message(sid, delivery(), end=True)
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        assert world.caller.stream(sid).outcome == ("DEADLINE_EXCEEDED", "deadline exceeded at the gateway")
        broker.ack(broker.published[0][5], "site-a:OUT:7", "ORDERS")  # stored after all: only counted
        await trio.sleep(1)
        assert world.core.message_metrics.stored == {(PEER, SUBJECT, False): 1}
        world.assert_clean()


def test_the_order_guard_is_bounded_and_lets_go():
    guard = OrderGuard()
    for index in range(OrderGuard.MAX_ENTRIES + 10):
        guard.failed((PEER, "OUT", f"s{index}"), 5, 0.0)
    assert len(guard) == OrderGuard.MAX_ENTRIES
    assert guard.blocking((PEER, "OUT", "s0"), 6, 1.0) is None  # the oldest was let go
    key = (PEER, "OUT", f"s{OrderGuard.MAX_ENTRIES + 9}")
    assert guard.blocking(key, 6, 1.0) == 5 and guard.blocking(key, 5, 1.0) is None
    guard.failed(key, 9, 2.0)  # a later failure does not move the hold forward
    assert guard.blocking(key, 6, 2.0) == 5
    assert guard.blocking(key, 6, OrderGuard.HOLD + 1) is None  # held at most HOLD seconds
    guard.failed(key, 5, 0.0)
    guard.stored(key, 6)  # a successor stored meanwhile does not release the hold
    assert guard.blocking(key, 6, 1.0) == 5
    guard.stored(key, 5)
    assert guard.blocking(key, 6, 1.0) is None


def test_link_headers_name_the_message_subject_nowhere():
    """The subject travels as the method (one place); the link headers stay what link_headers says."""
    assert message_link.path_of(SUBJECT) == b"/interlink.messaging.v1.MessageLink/orders.created"
    assert grpc.split_path(message_link.path_of(SUBJECT)) == (message_link.SERVICE, SUBJECT)
    assert not any(name.startswith(link_headers.PREFIX) for name, _ in message_headers(app=None))


async def test_a_peer_is_believed_only_as_far_as_its_certificate(broker, autojump_clock):
    """Forged gateway and broker headers are dropped; the de-duplication id is made from the certificate's site,
    so a peer cannot suppress another site's messages by sending their ids."""
    forged = (("Interlink-Origin-Site", "site-x"), ("Interlink-Caller-App", "admin"), ("Nats-Msg-Id", "site-x:OUT:7"),
              ("Nats-Expected-Last-Sequence", "1"), ("order-kind", "express"))
    async with await open_message_world(broker) as world:
        world.core.broker = broker
        sid = await send(world, delivery(headers=forged, message_id="site-x:OUT:7", origin_site="site-x"))
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        assert world.caller.stream(sid).outcome == ("OK", "")
        _, _, headers, msg_id, _, _ = broker.published[0]
        assert msg_id == "site-a:OUT:7"
        assert [name for name, _ in headers] == ["order-kind", message_link.ORIGIN_SITE, message_link.ORIGIN_SEQUENCE,
                                                 message_link.CALLER_APP, "traceparent"]
        assert dict(headers)[message_link.ORIGIN_SITE] == PEER


async def test_headers_count_toward_the_size_limit(broker, autojump_clock):
    async with await open_message_world(broker, snapshot=message_snapshot(max_message_bytes=1000)) as world:
        world.core.broker = broker
        sid = await send(world, delivery(data=b"x", headers=tuple((f"h{i}", "v" * 50) for i in range(30))))
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
        code, text = world.caller.stream(sid).outcome
        assert code == "INVALID_ARGUMENT" and "(data and headers) exceeds site site-b's limit of 1000" in text
        assert broker.published == []
