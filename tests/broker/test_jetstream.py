"""JetStreamBroker (broker_adapters/nats.py) against a real nats-server 2.9 with JetStream: streams,
consumers, ordered pipelined publishing, de-duplication, the ack/nak/in-progress/term cycle, server crash,
stall and restart, the bounded outgoing buffer, and interoperability with an independent client (nats-py).

Every server is the test's own (tests/servers/nats.py, ~20 ms to start) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from structlog.testing import capture_logs

from broker_adapters.base import Broker, BrokerBusy, BrokerError, BrokerMessage, PublishAck
from broker_adapters.nats import (
    JetStreamBroker,
    JetStreamError,
    NatsServerAddress,
    parse_ack_subject,
    parse_servers,
    subject_covers,
)
from tests.servers.nats import NatsServer

KIB = b"x" * 1024


@pytest.fixture
async def broker(nats_server: NatsServer) -> AsyncIterator[JetStreamBroker]:
    async with JetStreamBroker(nats_server.url, name="test", request_timeout=2.0) as opened:
        assert await opened.wait_connected(5.0), opened.last_error
        yield opened


async def stream_info(broker: JetStreamBroker, name: str) -> dict:
    return await broker._api(f"$JS.API.STREAM.INFO.{name}")


async def consumer_info(broker: JetStreamBroker, stream: str, durable: str) -> dict:
    return await broker._api(f"$JS.API.CONSUMER.INFO.{stream}.{durable}")


async def orders(broker: JetStreamBroker, *, ack_wait: float = 30.0, max_ack_pending: int = 1000) -> None:
    """Stream ORDERS on orders.> and its consumer `worker` on all of it."""
    await broker.ensure_stream("ORDERS", ["orders.>"])
    await broker.ensure_consumer("ORDERS", "worker", filter_subject="orders.>", max_ack_pending=max_ack_pending,
                                 ack_wait=ack_wait)


async def fetch_one(broker: JetStreamBroker, wait: float = 2.0) -> BrokerMessage:
    messages = await broker.fetch("ORDERS", "worker", batch=1, wait=wait)
    assert len(messages) == 1, messages
    return messages[0]


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), f"{what} did not happen within {timeout} s"


# --- pure parts (no server) ---------------------------------------------------------------------------------


PROTOCOL_METHODS = [name for name, value in vars(Broker).items()
                    if callable(value) and (not name.startswith("_") or name in ("__aenter__", "__aexit__"))]


@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_methods_follow_the_broker_protocol(method: str) -> None:
    wanted = inspect.signature(getattr(Broker, method))
    built = inspect.signature(getattr(JetStreamBroker, method))
    assert [(p.name, p.kind, p.default) for p in built.parameters.values()][:len(wanted.parameters)] == [
        (p.name, p.kind, p.default) for p in wanted.parameters.values()]
    assert inspect.iscoroutinefunction(getattr(JetStreamBroker, method)) == inspect.iscoroutinefunction(
        getattr(Broker, method))


def test_attributes_follow_the_broker_protocol() -> None:
    assert len(PROTOCOL_METHODS) == 12
    broker = JetStreamBroker("nats://127.0.0.1:1")
    assert set(Broker.__annotations__) == {"connected", "last_error"}
    assert (broker.connected, broker.last_error) == (False, None)


def test_ack_subject_v1_and_v2() -> None:
    assert parse_ack_subject("$JS.ACK.ORDERS.worker.2.17.9.1700000000000000000.4") == (
        "ORDERS", 2, 17, 1700000000000000000, 4)
    assert parse_ack_subject("$JS.ACK.hub.ACCHASH.ORDERS.worker.3.18.10.1700000000000000001.0.x7Yz") == (
        "ORDERS", 3, 18, 1700000000000000001, 0)
    assert parse_ack_subject("$JS.ACK._.ACCHASH.ORDERS.worker.1.5.5.1700000000000000001.9") == (
        "ORDERS", 1, 5, 1700000000000000001, 9)
    for bad in ("", "orders.new", "$JS.ACK.ORDERS.worker.1.2.3.4", "$JS.ACK.S.c.x.2.3.4.5",
                "$JS.NAK.S.c.1.2.3.4.5", "$JS.ACK.a.b.S.c.1.2.3.4.5.6.7.8"):
        assert parse_ack_subject(bad) is None, bad


@pytest.mark.parametrize("pattern,subject,covered", [
    ("orders.>", "orders.new", True),
    ("orders.>", "orders.eu.new", True),
    ("orders.>", "orders.*", True),
    ("orders.>", "orders.>", True),
    ("orders.>", "orders", False),
    ("orders.*", "orders.new", True),
    ("orders.*", "orders.*", True),
    ("orders.*", "orders.>", False),
    ("orders.*", "orders.eu.new", False),
    ("orders.new", "orders.new", True),
    ("orders.new", "orders.*", False),
    ("orders.new", "orders.newer", False),
    ("*.new", "orders.new", True),
    (">", "anything.at.all", True),
])
def test_subject_covers(pattern: str, subject: str, covered: bool) -> None:
    assert subject_covers(pattern, subject) is covered


def test_parse_servers() -> None:
    assert parse_servers("nats://127.0.0.1:4333") == [NatsServerAddress("127.0.0.1", 4333)]
    assert parse_servers("localhost") == [NatsServerAddress("localhost", 4222)]
    assert parse_servers("nats://al%40ce:p%3Ass@h:1, nats://t0k@h2") == [
        NatsServerAddress("h", 1, user="al@ce", password="p:ss"), NatsServerAddress("h2", 4222, token="t0k")]
    assert str(NatsServerAddress("h", 1, user="u", password="secret")) == "nats://h:1"
    for bad in ("tls://h:4222", "nats://h:99999", "", "nats://h:1/path", "http://h"):
        with pytest.raises(ValueError):
            parse_servers(bad)


# --- streams -------------------------------------------------------------------------------------------------


async def test_ensure_stream_creates_once_and_adds_missing_subjects(broker: JetStreamBroker) -> None:
    await broker.ensure_stream("ORDERS", ["orders.>"], duplicate_window=30.0)
    info = await stream_info(broker, "ORDERS")
    config = info["config"]
    assert config["subjects"] == ["orders.>"]
    assert (config["storage"], config["retention"]) == ("file", "limits")
    assert config["duplicate_window"] == 30 * 10**9
    await broker.ensure_stream("ORDERS", ["orders.>", "orders.eu.new"])  # already captured: nothing to do
    again = await stream_info(broker, "ORDERS")
    assert again["config"]["subjects"] == ["orders.>"] and again["created"] == info["created"]
    await broker.ensure_stream("ORDERS", ["orders.>", "invoices.*", "refunds"])
    assert (await stream_info(broker, "ORDERS"))["config"]["subjects"] == ["orders.>", "invoices.*", "refunds"]


async def test_adding_a_subject_keeps_the_rest_of_the_configuration(broker: JetStreamBroker) -> None:
    await broker._api("$JS.API.STREAM.CREATE.KEEP", {
        "name": "KEEP", "subjects": ["keep.a"], "storage": "memory", "max_msgs": 123, "retention": "limits",
        "duplicate_window": 5 * 10**9, "num_replicas": 1})
    await broker.ensure_stream("KEEP", ["keep.a", "keep.b"])
    config = (await stream_info(broker, "KEEP"))["config"]
    assert config["subjects"] == ["keep.a", "keep.b"]
    assert (config["storage"], config["max_msgs"], config["duplicate_window"]) == ("memory", 123, 5 * 10**9)


async def test_ensure_stream_refusals_are_not_retriable(broker: JetStreamBroker) -> None:
    await broker.ensure_stream("ORDERS", ["orders.>"])
    with pytest.raises(JetStreamError) as overlap:
        await broker.ensure_stream("OTHER", ["orders.eu"])
    assert overlap.value.retriable is False and "overlap" in str(overlap.value)
    with pytest.raises(BrokerError) as bad_name:
        await broker.ensure_stream("A.B", ["x"])
    assert bad_name.value.retriable is False


async def test_stream_of_subject(broker: JetStreamBroker) -> None:
    await broker.ensure_stream("ORDERS", ["orders.>"])
    await broker.ensure_stream("EU", ["shipments.eu"])
    assert await broker.stream_of_subject("orders.new") == "ORDERS"
    assert await broker.stream_of_subject("orders.*.new") == "ORDERS"
    assert await broker.stream_of_subject("shipments.eu") == "EU"
    assert await broker.stream_of_subject("shipments.*") is None  # overlaps EU, not captured by it
    assert await broker.stream_of_subject("payments.new") is None


# --- publishing ----------------------------------------------------------------------------------------------


async def test_2000_pipelined_publishes_are_stored_in_call_order(broker: JetStreamBroker) -> None:
    await broker.ensure_stream("ORDERS", ["orders.>"])
    pending = [broker.publish(f"orders.{i % 7}", b"%d:" % i + KIB) for i in range(2000)]  # no await between
    with trio.fail_after(10.0):
        acks = [await p.wait(10.0) for p in pending]
    assert [a.sequence for a in acks] == list(range(1, 2001))
    assert all(a.stream == "ORDERS" and not a.duplicate for a in acks)
    await broker.ensure_consumer("ORDERS", "check", filter_subject="orders.>", max_ack_pending=5000, ack_wait=30)
    stored = []
    for _ in range(100):
        stored += await broker.fetch("ORDERS", "check", batch=500, wait=1.0)
        if len(stored) >= 2000:
            break
    assert [m.data.split(b":")[0] for m in stored] == [b"%d" % i for i in range(2000)]
    assert [m.stream_sequence for m in stored] == list(range(1, 2001))


async def test_msg_id_deduplicates(broker: JetStreamBroker) -> None:
    await broker.ensure_stream("ORDERS", ["orders.>"])
    first = await broker.publish("orders.new", b"one", msg_id="site-a:1").wait(2.0)
    second = await broker.publish("orders.new", b"one again", msg_id="site-a:1").wait(2.0)
    other = await broker.publish("orders.new", b"two", msg_id="site-a:2").wait(2.0)
    assert first == PublishAck("ORDERS", 1, False)
    assert second == PublishAck("ORDERS", 1, True)
    assert other == PublishAck("ORDERS", 2, False)
    assert (await stream_info(broker, "ORDERS"))["state"]["messages"] == 2


async def test_expected_stream_mismatch_is_not_retriable(broker: JetStreamBroker) -> None:
    await broker.ensure_stream("ORDERS", ["orders.>"])
    with pytest.raises(JetStreamError) as refused:
        await broker.publish("orders.new", b"x", stream="INVOICES").wait(2.0)
    assert refused.value.retriable is False and refused.value.err_code == 10060
    assert "expected stream does not match" in str(refused.value)
    assert await broker.publish("orders.new", b"x", stream="ORDERS").wait(2.0) == PublishAck("ORDERS", 1)


async def test_no_stream_for_the_subject_is_retriable(broker: JetStreamBroker) -> None:
    with pytest.raises(BrokerError) as refused:
        await broker.publish("nowhere.new", b"x").wait(2.0)
    assert refused.value.retriable is True and "no stream captures 'nowhere.new'" in str(refused.value)


async def test_message_above_max_payload_is_refused_before_sending(nats_servers: Callable[..., NatsServer]) -> None:
    server = nats_servers("max_payload: 4096")
    async with JetStreamBroker(server.url) as broker:
        assert await broker.wait_connected(5.0)
        await broker.ensure_stream("ORDERS", ["orders.>"])
        with pytest.raises(BrokerError) as refused:
            await broker.publish("orders.new", b"y" * 4097).wait(2.0)
        assert refused.value.retriable is False and "max_payload is 4096" in str(refused.value)
        with pytest.raises(BrokerError):  # headers count too
            await broker.publish("orders.new", b"y" * 4090, msg_id="m").wait(2.0)
        assert (await broker.publish("orders.new", b"y" * 4096).wait(2.0)).sequence == 1
        assert broker.connected and broker.reconnects == 0


async def test_stream_max_msg_size_refusal_is_not_retriable(broker: JetStreamBroker) -> None:
    await broker._api("$JS.API.STREAM.CREATE.SMALL", {"name": "SMALL", "subjects": ["small"], "max_msg_size": 10,
                                                      "storage": "memory", "num_replicas": 1})
    with pytest.raises(JetStreamError) as refused:
        await broker.publish("small", b"z" * 11).wait(2.0)
    assert refused.value.err_code == 10054 and refused.value.retriable is False


async def test_bad_header_is_a_non_retriable_failed_publish(broker: JetStreamBroker) -> None:
    await broker.ensure_stream("ORDERS", ["orders.>"])
    with pytest.raises(BrokerError) as refused:
        await broker.publish("orders.new", b"x", headers=[("X-Evil", "a\r\nInjected: 1")]).wait(1.0)
    assert refused.value.retriable is False and "CR or LF" in str(refused.value)
    with pytest.raises(BrokerError):
        await broker.publish("orders new", b"x").wait(1.0)
    assert (await broker.publish("orders.new", b"fine").wait(2.0)).sequence == 1


# --- consuming -----------------------------------------------------------------------------------------------


async def test_fetch_gives_headers_sequence_delivered_and_pending(broker: JetStreamBroker) -> None:
    await orders(broker)
    before = time.time_ns()
    for i in range(5):
        await broker.publish(f"orders.{i}", b"body-%d" % i, headers=[("X-Trace", "t%d" % i), ("X-Trace", "again")],
                             msg_id=f"id-{i}").wait(2.0)
    first_two = await broker.fetch("ORDERS", "worker", batch=2, wait=2.0)
    assert [(m.subject, m.data, m.stream, m.stream_sequence, m.delivered, m.pending) for m in first_two] == [
        ("orders.0", b"body-0", "ORDERS", 1, 1, 4), ("orders.1", b"body-1", "ORDERS", 2, 1, 3)]
    assert first_two[0].headers[:3] == [("X-Trace", "t0"), ("X-Trace", "again"), ("Nats-Msg-Id", "id-0")]
    assert before <= first_two[0].timestamp_ns <= time.time_ns()
    rest = await broker.fetch("ORDERS", "worker", batch=10, wait=2.0)
    assert [m.stream_sequence for m in rest] == [3, 4, 5] and rest[-1].pending == 0


async def test_fetch_with_nothing_available_returns_empty_within_wait(broker: JetStreamBroker) -> None:
    await orders(broker)
    started = trio.current_time()
    assert await broker.fetch("ORDERS", "worker", batch=10, wait=0.3) == []
    assert 0.25 <= trio.current_time() - started < 1.0
    started = trio.current_time()
    assert await broker.fetch("ORDERS", "worker", batch=10, wait=0) == []
    assert trio.current_time() - started < 0.5


async def test_fetch_returns_as_soon_as_a_message_arrives(broker: JetStreamBroker) -> None:
    await orders(broker)

    async def publish_later() -> None:
        await trio.sleep(0.2)
        await broker.publish("orders.new", b"late").wait(2.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish_later)
        started = trio.current_time()
        messages = await broker.fetch("ORDERS", "worker", batch=50, wait=5.0)
    assert [m.data for m in messages] == [b"late"]
    assert trio.current_time() - started < 1.5


async def test_what_a_pull_delivers_after_its_fetch_stopped_waiting_comes_first_next_time(
        broker: JetStreamBroker) -> None:
    """A fetch given up (cancelled here; a stalled server likewise) leaves its pull request on the server: what
    that pull still delivers is kept for the next fetch, in order, instead of waiting out the ack wait (30 s)
    and arriving behind later messages."""
    await orders(broker)
    with trio.move_on_after(0.2):
        await broker.fetch("ORDERS", "worker", batch=2, wait=5.0)  # the server holds this pull for 5 s
    for index in range(3):
        await broker.publish("orders.new", b"m%d" % index).wait(2.0)
    started = trio.current_time()
    first = await broker.fetch("ORDERS", "worker", batch=10, wait=2.0)
    second = await broker.fetch("ORDERS", "worker", batch=10, wait=2.0)
    assert [m.data for m in first + second] == [b"m0", b"m1", b"m2"]
    assert [m.delivered for m in first + second] == [1, 1, 1]  # none waited for a redelivery
    # (without keeping them, the next fetch waited out its whole `wait` behind the old pull: 2.0 s here)
    assert trio.current_time() - started < 1.0


async def test_fetch_of_a_missing_consumer_is_a_retriable_error(broker: JetStreamBroker) -> None:
    await broker.ensure_stream("ORDERS", ["orders.>"])
    with pytest.raises(BrokerError, match="ensure_consumer"):
        await broker.fetch("ORDERS", "nobody", batch=1, wait=0.2)


async def test_ack_stops_redelivery_and_ack_wait_expiry_redelivers(broker: JetStreamBroker) -> None:
    await orders(broker, ack_wait=0.5)
    for i in range(2):
        await broker.publish("orders.new", b"%d" % i).wait(2.0)
    first, second = await broker.fetch("ORDERS", "worker", batch=2, wait=2.0)
    await broker.ack(first)
    redelivered = await broker.fetch("ORDERS", "worker", batch=2, wait=2.0)
    assert [(m.stream_sequence, m.delivered) for m in redelivered] == [(second.stream_sequence, 2)]
    await broker.ack(redelivered[0])
    assert await broker.fetch("ORDERS", "worker", batch=2, wait=0.8) == []


async def test_nak_with_delay_redelivers_after_the_delay(broker: JetStreamBroker) -> None:
    await orders(broker, ack_wait=30.0)
    await broker.publish("orders.new", b"retry me").wait(2.0)
    message = await fetch_one(broker)
    nak_at = trio.current_time()
    await broker.nak(message, delay=0.6)
    assert await broker.fetch("ORDERS", "worker", batch=1, wait=0.3) == []  # not before the delay
    again = await fetch_one(broker, wait=3.0)
    assert (again.stream_sequence, again.delivered, again.data) == (message.stream_sequence, 2, b"retry me")
    assert trio.current_time() - nak_at >= 0.5
    await broker.nak(again)  # no delay: at once
    third = await fetch_one(broker, wait=1.0)
    assert third.delivered == 3


async def test_in_progress_extends_the_ack_wait(broker: JetStreamBroker) -> None:
    await orders(broker, ack_wait=1.0)
    await broker.publish("orders.new", b"slow work").wait(2.0)
    message = await fetch_one(broker)
    fetched_at = trio.current_time()
    await trio.sleep(0.7)
    await broker.in_progress(message)  # the ack wait starts again: due at ~1.7 s instead of 1.0 s
    await trio.sleep_until(fetched_at + 1.15)
    assert await broker.fetch("ORDERS", "worker", batch=1, wait=0.3) == []  # would have come at 1.0 s
    again = await fetch_one(broker, wait=2.0)
    assert again.delivered == 2 and trio.current_time() - fetched_at >= 1.5


async def test_term_stops_redelivery(broker: JetStreamBroker) -> None:
    await orders(broker, ack_wait=0.4)
    await broker.publish("orders.new", b"poison").wait(2.0)
    await broker.publish("orders.new", b"good").wait(2.0)
    poison = await fetch_one(broker)
    await broker.term(poison)
    good = await fetch_one(broker)
    await broker.ack(good)
    assert await broker.fetch("ORDERS", "worker", batch=5, wait=1.0) == []  # past ack_wait: nothing returns


async def test_ensure_consumer_creates_updates_and_refuses_a_filter_change(broker: JetStreamBroker) -> None:
    await broker.ensure_stream("ORDERS", ["orders.>"])
    await broker.ensure_consumer("ORDERS", "worker", filter_subject="orders.eu.*", max_ack_pending=10, ack_wait=5)
    config = (await consumer_info(broker, "ORDERS", "worker"))["config"]
    assert (config["ack_policy"], config["deliver_policy"]) == ("explicit", "all")
    assert config["filter_subject"] == "orders.eu.*"
    assert (config["max_ack_pending"], config["ack_wait"], config["max_deliver"]) == (10, 5 * 10**9, -1)
    assert "deliver_subject" not in config  # a pull consumer
    await broker.ensure_consumer("ORDERS", "worker", filter_subject="orders.eu.*", max_ack_pending=20, ack_wait=7)
    config = (await consumer_info(broker, "ORDERS", "worker"))["config"]
    assert (config["max_ack_pending"], config["ack_wait"]) == (20, 7 * 10**9)
    with pytest.raises(BrokerError) as refused:
        await broker.ensure_consumer("ORDERS", "worker", filter_subject="orders.>", max_ack_pending=20, ack_wait=7)
    assert refused.value.retriable is False and "filter_subject" in str(refused.value)
    assert (await consumer_info(broker, "ORDERS", "worker"))["config"]["filter_subject"] == "orders.eu.*"


# --- the connection: crash, stall, restart, busy ---------------------------------------------------------------


async def test_server_crash_fails_in_flight_fast_then_reconnects_and_data_survives(nats_server: NatsServer) -> None:
    with capture_logs() as logs:
        async with JetStreamBroker(nats_server.url) as broker:
            assert await broker.wait_connected(5.0)
            await orders(broker)
            assert (await broker.publish("orders.new", b"stored").wait(2.0)).sequence == 1
            nats_server.pause()  # nothing gets acknowledged from here on
            in_flight = [broker.publish("orders.new", b"%d" % i) for i in range(50)]
            await trio.sleep(0.05)
            nats_server.kill()
            with trio.fail_after(1.0):  # all of them fail at once, none waits for its own timeout
                for pending in in_flight:
                    with pytest.raises(BrokerError) as lost:
                        await pending.wait(10.0)
                    assert lost.value.retriable is True
            assert "connection to nats://127.0.0.1" in str(lost.value) and "lost" in str(lost.value)
            await wait_for(lambda: not broker.connected, 1.0, "disconnect")
            assert broker.last_error
            refused_now = broker.publish("orders.new", b"while down")
            with pytest.raises(BrokerError, match="not connected"):
                await refused_now.wait(1.0)
            await trio.to_thread.run_sync(nats_server.restart)
            assert await broker.wait_connected(8.0), broker.last_error
            assert broker.reconnects == 1 and broker.last_error is None
            ack = await broker.publish("orders.new", b"after restart").wait(5.0)
            assert ack.sequence == 2  # the stream and its first message survived the crash
            messages = await broker.fetch("ORDERS", "worker", batch=10, wait=2.0)
            assert [m.data for m in messages] == [b"stored", b"after restart"]
    events = [entry["event"] for entry in logs]
    assert events.count("broker.connected") == 2 and "broker.disconnected" in events
    assert events.index("broker.disconnected") < len(events) - 1 - events[::-1].index("broker.connected")


async def test_paused_server_publish_wait_times_out_without_hanging(nats_server: NatsServer) -> None:
    async with JetStreamBroker(nats_server.url, request_timeout=0.5) as broker:
        assert await broker.wait_connected(5.0)
        await orders(broker)
        nats_server.pause()
        try:
            started = trio.current_time()
            with pytest.raises(BrokerError) as timed_out:
                await broker.publish("orders.new", b"stalled").wait(0.3)
            assert timed_out.value.retriable is True and "no acknowledgement" in str(timed_out.value)
            with pytest.raises(BrokerError, match="no answer"):
                await broker.stream_of_subject("orders.new")
            with pytest.raises(BrokerError, match="no answer") as fetch_failed:
                await broker.fetch("ORDERS", "worker", batch=1, wait=0.2)
            assert fetch_failed.value.retriable is True
            assert trio.current_time() - started < 4.0
        finally:
            nats_server.resume()
        ack = await broker.publish("orders.new", b"resumed").wait(5.0)
        assert ack.sequence == 2  # the stalled one was stored once the server ran again
        assert broker.reconnects == 0


async def test_outgoing_buffer_is_capped_with_broker_busy(nats_server: NatsServer) -> None:
    cap = 256 * 1024
    async with JetStreamBroker(nats_server.url, max_pending_bytes=cap) as broker:
        assert await broker.wait_connected(5.0)
        await orders(broker)
        nats_server.pause()
        accepted = []
        try:
            with pytest.raises(BrokerBusy) as busy:
                for i in range(4000):  # the kernel's socket buffers take some megabytes first
                    accepted.append(broker.publish("orders.new", b"%06d" % i + KIB * 63))
                    assert len(broker._connection.out) <= cap
            assert busy.value.retriable is True and f"cap {cap}" in str(busy.value)
            print(f"BrokerBusy after {len(accepted)} publishes of 64 KiB")
            with pytest.raises(BrokerBusy):  # small ones fill the rest: then an ack (a bigger frame) is refused too
                for i in range(cap // 50):
                    accepted.append(broker.publish("orders.new", b"%06d" % i))
            consumer = "c" * 200
            with pytest.raises(BrokerBusy):
                await broker.ack(BrokerMessage("s", b"", [], "S", 1, 1, 0, 0, reply=f"$JS.ACK.S.{consumer}.1.1.1.1.0"))
        finally:
            nats_server.resume()
        with trio.fail_after(10.0):
            acks = [await pending.wait(10.0) for pending in accepted]
        assert [a.sequence for a in acks] == list(range(1, len(accepted) + 1))
        assert (await broker.publish("orders.new", b"room again").wait(5.0)).sequence == len(accepted) + 1


async def test_missing_pongs_drop_a_stalled_connection(nats_server: NatsServer) -> None:
    async with JetStreamBroker(nats_server.url, ping_interval=0.2, ping_timeout=0.3) as broker:
        assert await broker.wait_connected(5.0)
        await trio.sleep(0.6)
        assert broker.connected  # PONGs come back while the server runs
        nats_server.pause()
        try:
            await wait_for(lambda: not broker.connected, 2.0, "dropping the stalled connection")
            assert "no PONG" in (broker.last_error or "")
        finally:
            nats_server.resume()
        assert await broker.wait_connected(8.0)


async def test_reconnects_with_backoff_until_the_server_is_there(nats_server: NatsServer) -> None:
    nats_server.kill()
    with capture_logs() as logs:
        async with JetStreamBroker(nats_server.url, connect_timeout=0.5) as broker:
            assert await broker.wait_connected(0.6) is False
            assert "refused" in (broker.last_error or "")
            with pytest.raises(BrokerError, match="not connected"):
                await broker.publish("orders.new", b"x").wait(1.0)
            await trio.sleep(0.5)
            await trio.to_thread.run_sync(nats_server.restart)
            assert await broker.wait_connected(8.0), broker.last_error
    reconnecting = [entry["error"] for entry in logs if entry["event"] == "broker.reconnecting"]
    assert "refused" in reconnecting[0]
    assert len(reconnecting) == len(set(reconnecting))  # a line per new reason, not one per attempt


async def test_second_url_is_used_when_the_first_is_down(nats_servers: Callable[..., NatsServer]) -> None:
    down = nats_servers()
    up = nats_servers()
    down.kill()
    async with JetStreamBroker(f"{down.url},{up.url}") as broker:
        assert await broker.wait_connected(5.0)
        assert broker.server_info["port"] == up.port


async def test_user_password_and_token_authentication(nats_servers: Callable[..., NatsServer]) -> None:
    with_user = nats_servers('authorization { user: alice, password: "s3cret:pw" }')
    with_token = nats_servers('authorization { token: "t0k3n" }')
    with capture_logs() as logs:
        async with JetStreamBroker(f"nats://alice:s3cret%3Apw@127.0.0.1:{with_user.port}") as broker:
            assert await broker.wait_connected(5.0), broker.last_error
            await broker.ensure_stream("ORDERS", ["orders.>"])
        async with JetStreamBroker(f"nats://alice:wr0ng@127.0.0.1:{with_user.port}", connect_timeout=1.0) as broker:
            assert await broker.wait_connected(1.0) is False
            assert "Authorization Violation" in (broker.last_error or "") and "wr0ng" not in broker.last_error
        async with JetStreamBroker(f"nats://t0k3n@127.0.0.1:{with_token.port}") as broker:
            assert await broker.wait_connected(5.0), broker.last_error
        async with JetStreamBroker(f"nats://127.0.0.1:{with_token.port}", connect_timeout=1.0) as broker:
            assert await broker.wait_connected(1.0) is False
            assert "user:pass@ or token@" in (broker.last_error or "")
    assert any(entry["event"] == "broker.reconnecting" for entry in logs)
    assert not any(secret in str(logs) for secret in ("s3cret", "wr0ng", "t0k3n"))


async def test_server_without_jetstream(nats_servers: Callable[..., NatsServer]) -> None:
    plain = nats_servers(jetstream=False)
    async with JetStreamBroker(plain.url, request_timeout=1.0) as broker:
        assert await broker.wait_connected(5.0)
        with pytest.raises(BrokerError) as no_js:
            await broker.publish("orders.new", b"x").wait(2.0)
        assert no_js.value.retriable is True and "JetStream is not enabled" in str(no_js.value)
        with pytest.raises(BrokerError, match="JetStream is not enabled"):
            await broker.ensure_stream("ORDERS", ["orders.>"])


async def test_leaving_the_adapter_fails_what_is_in_flight(nats_server: NatsServer) -> None:
    async with JetStreamBroker(nats_server.url) as broker:
        assert await broker.wait_connected(5.0)
        await orders(broker)
        nats_server.pause()
        in_flight = broker.publish("orders.new", b"never acknowledged")
        started = trio.current_time()
    assert trio.current_time() - started < 2.0
    nats_server.resume()
    with pytest.raises(BrokerError, match="closed"):
        await in_flight.wait(1.0)
    assert broker.connected is False


# --- interoperability with an independent client (nats-py) ----------------------------------------------------


def _nats_py(url: str, work: Callable) -> object:
    nats = pytest.importorskip("nats", reason="nats-py is not installed (pip install nats-py)")

    async def run() -> object:
        client = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
        try:
            return await asyncio.wait_for(work(client), 10)
        finally:
            await client.close()

    return asyncio.run(run())


async def test_interop_with_nats_py(nats_server: NatsServer) -> None:
    async def nats_py_publishes(client) -> list[int]:
        js = client.jetstream()
        acks = [await js.publish("orders.from-py", b"py-%d" % i, headers={"X-Origin": "nats-py", "X-N": str(i)})
                for i in range(3)]
        return [ack.seq for ack in acks]

    async def nats_py_reads(client) -> list[tuple]:
        js = client.jetstream()
        sub = await js.pull_subscribe("orders.from-trio", durable="py-reader", stream="ORDERS")
        messages = await sub.fetch(3, timeout=5)
        for message in messages:
            await message.ack()
        return [(m.subject, m.data, dict(m.headers or {}), m.metadata.sequence.stream, m.metadata.num_delivered)
                for m in messages]

    async with JetStreamBroker(nats_server.url) as broker:
        assert await broker.wait_connected(5.0)
        await broker.ensure_stream("ORDERS", ["orders.>"])
        await broker.ensure_consumer("ORDERS", "trio-reader", filter_subject="orders.from-py", max_ack_pending=10,
                                     ack_wait=5)
        sequences = await trio.to_thread.run_sync(_nats_py, nats_server.url, nats_py_publishes)
        assert sequences == [1, 2, 3]
        received = await broker.fetch("ORDERS", "trio-reader", batch=10, wait=2.0)
        assert [(m.subject, m.data, m.stream_sequence) for m in received] == [
            ("orders.from-py", b"py-%d" % i, i + 1) for i in range(3)]
        assert [dict(m.headers) for m in received] == [{"X-Origin": "nats-py", "X-N": str(i)} for i in range(3)]
        for message in received:
            await broker.ack(message)

        for i in range(3):
            await broker.publish("orders.from-trio", b"trio-%d" % i, headers=[("X-Origin", "trio"), ("X-N", str(i))],
                                 msg_id=f"trio-{i}").wait(2.0)
        read = await trio.to_thread.run_sync(_nats_py, nats_server.url, nats_py_reads)
        assert [(subject, data, sequence, delivered) for subject, data, _, sequence, delivered in read] == [
            ("orders.from-trio", b"trio-%d" % i, 4 + i, 1) for i in range(3)]
        assert [headers for _, _, headers, _, _ in read] == [
            {"X-Origin": "trio", "X-N": str(i), "Nats-Msg-Id": f"trio-{i}"} for i in range(3)]
        assert (await consumer_info(broker, "ORDERS", "trio-reader"))["num_ack_pending"] == 0


# --- what the server says when it gives up on us, and servers that are not NATS ------------------------------


async def test_server_error_then_close_is_reported_and_survived(nats_server: NatsServer) -> None:
    with capture_logs() as logs:
        async with JetStreamBroker(nats_server.url) as broker:
            assert await broker.wait_connected(5.0)
            await broker.ensure_stream("ORDERS", ["orders.>"])
            broker._connection.write(b"PUB orders.new 99999999\r\n")  # what publish itself refuses to send
            await wait_for(lambda: broker.reconnects == 1 and broker.connected, 5.0, "reconnecting")
            assert (await broker.publish("orders.new", b"fine").wait(2.0)).sequence == 1
    (disconnected,) = [entry for entry in logs if entry["event"] == "broker.disconnected"]
    assert "Maximum Payload Violation" in disconnected["reason"]
    assert any(entry["event"] == "broker.server_error" for entry in logs)


@pytest.mark.parametrize("greeting,expected", [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not the NATS protocol: unknown operation"),
    (b"INFO {not json}\r\n", "not the NATS protocol: INFO is not JSON"),
    (b"PING\r\n", "first message is Ping, not INFO"),
    (b"", "no INFO and PONG within 0.3 s"),
])
async def test_a_server_that_is_not_nats_is_refused(greeting: bytes, expected: str) -> None:
    async def fake(stream: trio.SocketStream) -> None:
        await stream.send_all(greeting)  # b"": says nothing at all
        await trio.sleep(5)  # and keeps the connection open: the adapter must give up on its own

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(functools.partial(trio.serve_tcp, fake, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        async with JetStreamBroker(f"nats://127.0.0.1:{port}", connect_timeout=0.3) as broker:
            assert await broker.wait_connected(0.5) is False
            assert expected in (broker.last_error or "")
        nursery.cancel_scope.cancel()
