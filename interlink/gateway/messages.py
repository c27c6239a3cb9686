"""Messages across sites (message interop, `messaging:` in the site file): both gateways' halves.

    site B (producers)                                                site A (consumers)
    producer -> B's broker: stream captures the subject
        MessagePump (one per messaging import, worker 0)
          fetch from a durable consumer (messages wait in the broker while the link or we are down)
          -> one MessageLink call per message over the peer link (wire/message_link.py), in order
                                              GW-A: the call core, like any call (access domain, ACL on the
                                              producer's app, audit, metrics, trace), then BrokerPublish:
                                              publish with the message id as de-duplication id, answer
                                              once the broker stored it
          <- OK: ack in B's broker | refused for good: dead letter in B, then ack | else: send again, later

Delivery is at least once across the link and exactly once into the destination stream within its broker's
de-duplication window (the message id is `<site>:<stream>:<sequence>`, the same on every attempt).

Per-subject order: a pump sends on one connection and opens each message's stream only after the previous
request was written whole, so the provider-side gateway sees them in order; BrokerPublish queues each publish
on its one broker connection at once, so the broker stores them in that order. When a message could not be
stored, `OrderGuard` refuses its subject's later messages (from that origin stream) until it is, so a message
sent again never lands behind its successors. A transient failure makes the pump send the failed messages
again, in order, after a backoff; it holds them (extending their ack deadline) rather than letting the
broker redeliver them out of order.

Flow control: at most `max_in_flight` messages per import are read and unacknowledged (the consumer's
max_ack_pending), so a slow destination slows the origin's consumer, never the gateways' memory.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import structlog
import trio

from broker_adapters.base import Broker, BrokerError, BrokerMessage, PendingPublish
from interlink import logs
from interlink.config import MessageImportConfig, MessagingConfig
from interlink.model import Payload, PayloadKind, Refusal, Reply, Status
from interlink.net.pool import PoolGroup
from interlink.wire import grpc, h2conn, link_headers, message_link, tracecontext

if TYPE_CHECKING:
    from interlink.gateway.call import GatewayCall
    from interlink.gateway.metrics import CallMetrics
    from interlink.net.h2link import H2Endpoint, Headers
    from interlink.routes import MessageExportRoute

log = structlog.get_logger("interlink.messages")
access_log = logs.CallLog("interlink.access")

DEAD_LETTER_STREAM = "INTERLINK_DEAD"
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0
FETCH_WAIT = 1.0  # one fetch waits this long for messages (then the pump looks at the link again)
WRITE_WAIT = 5.0  # one message's request bytes must be written within this (the peer's windows)
SUBJECTS_REMEMBERED = 4096  # per import: whether a subject can cross (a wildcard import meets many)


# --- provider side --------------------------------------------------------------------------------------


class OrderGuard:
    """Per (peer site, origin stream, subject): after a message could not be stored, later messages of that
    subject are refused (UNAVAILABLE) until it is, so a retry never lands behind its successors. Bounded: at
    most MAX_ENTRIES subjects held at once (the oldest is let go), each for at most HOLD seconds (the peer may
    have dead-lettered the message meanwhile)."""

    MAX_ENTRIES = 4096
    HOLD = 60.0

    def __init__(self) -> None:
        self._held: dict[tuple[str, str, str], tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def blocking(self, key: tuple[str, str, str], sequence: int, now: float) -> int | None:
        """The origin sequence of an earlier message not stored yet, or None when `sequence` may go."""
        entry = self._held.get(key)
        if entry is None:
            return None
        held, since = entry
        if now - since > self.HOLD:
            del self._held[key]
            return None
        return held if sequence > held else None

    def failed(self, key: tuple[str, str, str], sequence: int, now: float) -> None:
        entry = self._held.get(key)
        if entry is not None and entry[0] <= sequence:
            return
        self._held.pop(key, None)
        self._held[key] = (sequence, now)
        if len(self._held) > self.MAX_ENTRIES:
            del self._held[next(iter(self._held))]

    def stored(self, key: tuple[str, str, str], sequence: int) -> None:
        """The held message itself was stored: its successors may go. (A later one stored meanwhile, sent before
        the failure was known, does not release the hold.)"""
        entry = self._held.get(key)
        if entry is not None and sequence == entry[0]:
            del self._held[key]


class BrokerPublish:
    """The upstream leg of a message call at the provider-side gateway: our broker. Opened once the request
    (one Delivery) is complete; the call is answered when the broker stored the message (DeliveryAck) or
    refused it (a gRPC status the pump on the other side acts on: message_link.PERMANENT or not)."""

    __slots__ = ("call", "route", "_key", "_sequence")

    protocol = "message"

    def __init__(self, call: GatewayCall, route: MessageExportRoute) -> None:
        self.call: GatewayCall | None = call
        self.route = route
        self._key = ("", "", "")
        self._sequence = 0

    def open(self, broker: Broker) -> None:
        """Publish now (in arrival order on the broker's connection); Refusal when it cannot be."""
        call = self.call
        assert call is not None
        core, route, subject = call.core, self.route, call.method or ""
        delivery = _delivery_of(call)
        site = call.snapshot.site
        # A peer is believed only as far as its certificate: the gateways' and the broker's own headers it sent
        # are dropped, and the de-duplication id is made here from the site its certificate proves (a peer can
        # only ever collide with its own messages, never suppress another site's).
        carried = message_link.carried_headers(list(delivery.headers))
        message_id = message_link.message_id(call.caller_site, delivery.origin_stream, delivery.origin_sequence)
        size = len(delivery.data) + sum(len(name) + len(value) + 4 for name, value in carried)
        limit = core.messaging.max_message_bytes if core.messaging is not None else 1 << 20
        if size > limit:
            raise Refusal(Status.INVALID_ARGUMENT, f"a message of {size} bytes (data and headers) exceeds site "
                          f"{site}'s limit of {limit} (messaging.max_message_bytes)", kind="too_large")
        call.log_fields["message_id"] = message_id
        now = trio.current_time()
        self._key = key = (call.caller_site, delivery.origin_stream, subject)
        self._sequence = sequence = delivery.origin_sequence
        earlier = core.order_guard.blocking(key, sequence, now)
        if earlier is not None:
            raise Refusal(Status.UNAVAILABLE, f"an earlier message of subject {subject} (origin sequence {earlier}) "
                          "is not stored yet; it goes first")
        if not broker.connected:
            core.order_guard.failed(key, sequence, now)
            raise Refusal(Status.UNAVAILABLE, f"the broker of site {site} is not connected: {broker.last_error}")
        headers = [*carried, (message_link.ORIGIN_SITE, call.caller_site),
                   (message_link.ORIGIN_SEQUENCE, str(sequence))]
        if call.caller_app:
            headers.append((message_link.CALLER_APP, call.caller_app))
        headers.append((message_link.TRACEPARENT, tracecontext.format_traceparent(
            call.trace_id, call.span_id, call.trace_flags).decode()))  # type: ignore[arg-type]
        try:
            pending = broker.publish(subject, delivery.data, headers=headers, msg_id=message_id, stream=route.stream)
        except BrokerError as exc:
            core.order_guard.failed(key, sequence, now)
            raise Refusal(Status.UNAVAILABLE, f"the broker of site {site} took no message: {exc}") from None
        core.stored_waiter(route.stream).add(self, call, pending)

    async def settle(self, call: GatewayCall, pending: PendingPublish) -> None:
        """The broker's answer, as the call's (by StoreWaiter; the flush is its)."""
        core, route = call.core, self.route
        # past the call's deadline (the deadline timer answers the caller), so that a late store is still counted
        timeout = max(0.05, min(call.deadline + 1.0, trio.current_time() + 60.0) - trio.current_time())
        try:
            ack = await pending.wait(timeout)
        except BrokerError as exc:
            where = f"stream {route.stream} of site {call.snapshot.site}"
            if exc.retriable:
                core.order_guard.failed(self._key, self._sequence, trio.current_time())
                call.fail(Status.UNAVAILABLE, f"{where} did not store the message: {exc}")
            else:
                call.fail(Status.FAILED_PRECONDITION, f"{where} refused the message: {exc}")
        else:
            core.order_guard.stored(self._key, self._sequence)
            core.message_metrics.received(call.caller_site, route.subject, ack.duplicate)
            body = message_link.encode_ack(message_link.DeliveryAck(ack.stream, ack.sequence, ack.duplicate))
            call.reply(Reply(Status.OK, payload=Payload(PayloadKind.PROTOBUF, body)))

    def cancel(self) -> None:
        """The call ended first (deadline, caller gone): a queued publish cannot be taken back; its outcome is
        still awaited (and only counted)."""

    def release(self) -> None:
        pass


class StoreWaiter:
    """Awaits the broker's answers to one stream's publishes in publish order, in one task (the broker answers
    them in that order), and flushes the answers to the peers once per run of answers that came in together:
    no task and no socket write per message."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._queue: deque[tuple[BrokerPublish, GatewayCall, PendingPublish]] = deque()
        self._more = trio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, leg: BrokerPublish, call: GatewayCall, pending: PendingPublish) -> None:
        self._queue.append((leg, call, pending))
        self._more.set()

    async def run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._flush()
                self._more = trio.Event()
                await self._more.wait()
                continue
            leg, call, pending = queue[0]
            if not pending.done:
                self._flush()  # what is answered leaves before we wait for more
            await leg.settle(call, pending)
            queue.popleft()


def _delivery_of(call: GatewayCall) -> message_link.Delivery:
    collector = call.down.collector  # type: ignore[union-attr]
    assert collector is not None
    if collector.decoder.pending or len(collector.messages) != 1 or collector.messages[0].compressed:
        raise Refusal(Status.INVALID_ARGUMENT, "a MessageLink request carries exactly one uncompressed Delivery",
                      kind="protocol")
    try:
        return message_link.decode_delivery(collector.messages[0].data)
    except message_link.MessageLinkError as exc:
        raise Refusal(Status.INVALID_ARGUMENT, f"malformed Delivery: {exc}", kind="protocol") from None


# --- counters -------------------------------------------------------------------------------------------


@dataclass
class ImportCounters:
    """One messaging import's counters (labels: its subject and peer, from the site file)."""

    delivered: int = 0  # stored by the peer (duplicates included)
    duplicates: int = 0  # ... of which the peer's broker had already
    redelivered: int = 0  # sent again (a transient failure, or the broker redelivered it)
    dead_lettered: int = 0  # refused for good, kept in our dead-letter stream
    lag: int = 0  # messages waiting in our broker behind the last one read
    last_error: str | None = None
    connected: bool = False  # the consumer is set up and reading
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # status name -> count


class MessageMetrics:
    """Message counters of one gateway process, read by the admin endpoint at scrape time. Keys come from
    the site file (import subject + peer; export subject pattern + peer site)."""

    def __init__(self) -> None:
        self.imports: dict[tuple[str, str], ImportCounters] = {}  # (subject, to) -> counters
        self.stored: dict[tuple[str, str, bool], int] = {}  # (peer site, export subject, duplicate) -> count

    def of_import(self, subject: str, to: str) -> ImportCounters:
        return self.imports.setdefault((subject, to), ImportCounters())

    def received(self, peer: str, subject: str, duplicate: bool) -> None:
        key = (peer, subject, duplicate)
        self.stored[key] = self.stored.get(key, 0) + 1


# --- consumer side --------------------------------------------------------------------------------------


def durable_name(item: MessageImportConfig) -> str:
    """The durable consumer of an import: the same name across restarts (it keeps the position)."""
    return f"interlink-{item.to}-{_name_part(item.subject)}"


def stream_name(item: MessageImportConfig) -> str:
    """The stream the gateway creates for an import whose subject no stream captures."""
    return f"INTERLINK_OUT_{_name_part(item.subject).upper()}"


def _name_part(subject: str) -> str:
    """A subject as part of a stream or consumer name (no `.`, `*`, `>`), kept unique by a short hash."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", subject)[:48]
    return f"{readable}-{hashlib.sha256(subject.encode()).hexdigest()[:8]}"


def dead_letter_subject(settings: MessagingConfig, subject: str) -> str:
    return f"{settings.dead_letter_prefix}.{subject}"


@dataclass
class _Outcome:
    status: Status
    text: str = ""
    ack: message_link.DeliveryAck | None = None
    # the status is an answer (the peer gateway's, or ours before sending: too large, a subject that cannot cross),
    # not a reset or a lost link: only answers can be refusals for good
    from_peer: bool = False


class MessagePump:
    """Carries one messaging import's messages from our broker to the peer site, in order (module docstring)."""

    def __init__(self, site: str, item: MessageImportConfig, settings: MessagingConfig, broker: Broker,
                 group: Callable[[], PoolGroup | None], authority: Callable[[], bytes | None],
                 flush: Callable[[], None], calls: CallMetrics, counters: ImportCounters) -> None:
        self.site, self.item, self.settings, self.broker = site, item, settings, broker
        self._group, self._authority, self._flush, self._calls = group, authority, flush, calls
        self.counters = counters
        self.durable = durable_name(item)
        self.stream = item.stream or ""
        self._backoff = BACKOFF_FIRST
        self._subjects: dict[str, bool] = {}  # subject -> it can cross (_crosses)

    async def run(self) -> None:
        while True:
            try:
                await self._prepare()
                await self._pump()
            except BrokerError as exc:
                self.counters.connected = False
                self.counters.last_error = str(exc)
                log.warning("messages.broker_error", subject=self.item.subject, to=self.item.to, error=str(exc))
                await self._pause()

    async def _prepare(self) -> None:
        """The stream that keeps the subject's messages, our durable consumer on it, the dead-letter stream."""
        broker, item = self.broker, self.item
        if not await broker.wait_connected(FETCH_WAIT * 5):
            raise BrokerError(f"not connected: {broker.last_error}")
        if not item.stream:
            self.stream = await broker.stream_of_subject(item.subject) or stream_name(item)
        await broker.ensure_stream(self.stream, [item.subject])
        await broker.ensure_consumer(self.stream, self.durable, filter_subject=item.subject,
                                     max_ack_pending=item.max_in_flight, ack_wait=self.settings.ack_wait_ms / 1000)
        await broker.ensure_stream(DEAD_LETTER_STREAM, [f"{self.settings.dead_letter_prefix}.>"])
        self.counters.connected = True
        self.counters.last_error = None
        log.info("messages.import_ready", subject=item.subject, to=item.to, stream=self.stream, consumer=self.durable)

    async def _pump(self) -> None:
        while True:
            group = self._group()
            if group is None or not group.up:
                self.counters.last_error = f"no link up to site {self.item.to}"
                await self._wait_for_link(group)
                continue
            batch = await self.broker.fetch(self.stream, self.durable, batch=self.item.max_in_flight, wait=FETCH_WAIT)
            if batch:
                self.counters.lag = batch[-1].pending
                await self._deliver(batch)

    async def _wait_for_link(self, group: PoolGroup | None) -> None:
        with trio.move_on_after(FETCH_WAIT):
            if group is not None:
                await group.wait_ready()
                return
            await trio.sleep_forever()

    async def _deliver(self, batch: list[BrokerMessage]) -> None:
        """Until every message of `batch` is stored by the peer or dead-lettered: send, settle, send the rest
        again after a backoff."""
        pending = batch
        attempt = 1
        for message in batch:
            if message.delivered > 1:
                self.counters.redelivered += 1
        try:
            await self._settle(pending, attempt)
        except trio.Cancelled:  # stopping: the broker may hand them out again at once, not after ack_wait
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                for message in pending:
                    await self.broker.nak(message)
            raise

    async def _settle(self, pending: list[BrokerMessage], attempt: int) -> None:
        while pending:
            outcomes = await self._send(pending, attempt)
            retry: list[BrokerMessage] = []
            for message, outcome in zip(pending, outcomes):
                if outcome.status is Status.OK:
                    await self.broker.ack(message)
                    self.counters.delivered += 1
                    if outcome.ack is not None and outcome.ack.duplicate:
                        self.counters.duplicates += 1
                elif outcome.from_peer and outcome.status in message_link.PERMANENT:
                    await self._dead_letter(message, outcome)
                else:
                    retry.append(message)
                    self.counters.last_error = f"{outcome.status.name}: {outcome.text}"
            if not retry:
                self._backoff = BACKOFF_FIRST
                return
            self.counters.redelivered += len(retry)
            await self._hold(retry)
            pending, attempt = retry, attempt + 1

    async def _hold(self, messages: list[BrokerMessage]) -> None:
        """Wait out the backoff, telling the broker every third of its ack wait that we are still working on
        them (so it hands none of them out again meanwhile)."""
        deadline = trio.current_time() + self._next_delay()
        every = self.settings.ack_wait_ms / 3000
        while True:
            for message in messages:
                await self.broker.in_progress(message)
            left = deadline - trio.current_time()
            if left <= 0:
                return
            await trio.sleep(min(left, every))

    async def _pause(self) -> None:
        await trio.sleep(self._next_delay())

    def _next_delay(self) -> float:
        """Exponential backoff with jitter: 0.2 s doubling up to BACKOFF_MAX."""
        delay = self._backoff * (0.5 + random.random())
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        return delay

    async def _dead_letter(self, message: BrokerMessage, outcome: _Outcome) -> None:
        """Keep a message the peer refused for good in our dead-letter stream (its reason in its headers), then
        take it off the import: it is never sent again."""
        item, settings = self.item, self.settings
        headers = [*message.headers,
                   (message_link.DEAD_LETTER_STATUS, outcome.status.name),
                   (message_link.DEAD_LETTER_REASON, _header_text(outcome.text)),
                   (message_link.DEAD_LETTER_PEER, item.to),
                   (message_link.ORIGIN_SEQUENCE, str(message.stream_sequence))]
        msg_id = f"{message_link.message_id(self.site, message.stream, message.stream_sequence)}:dead"
        ack = self.broker.publish(dead_letter_subject(settings, message.subject), message.data, headers=headers,
                                  msg_id=msg_id, stream=DEAD_LETTER_STREAM)
        await ack.wait(settings.delivery_timeout_ms / 1000)
        await self.broker.ack(message)
        counters = self.counters
        counters.dead_lettered += 1
        counters.dead_letter_reasons[outcome.status.name] = counters.dead_letter_reasons.get(outcome.status.name, 0) + 1
        log.warning("messages.dead_lettered", subject=message.subject, to=item.to, status=outcome.status.name,
                    reason=outcome.text, sequence=message.stream_sequence)

    # --- one round of crossings ----------------------------------------------------------------------------

    async def _send(self, messages: list[BrokerMessage], attempt: int) -> list[_Outcome]:
        """Send `messages` in order on one connection, each stream opened once the previous request was written
        whole; their outcomes, in the same order. Once one could not be sent, none after it is (a later
        message must never reach the peer before an earlier one)."""
        outcomes: list[_Outcome | None] = [None] * len(messages)
        limit = self.settings.max_message_bytes
        group, authority = self._group(), self._authority()
        endpoint = group.pick() if group is not None else None
        deadline = trio.current_time() + self.settings.delivery_timeout_ms / 1000
        crossings: list[tuple[int, _Crossing]] = []
        stopped = "" if endpoint is not None and authority is not None else f"no link up to site {self.item.to}"
        for index, message in enumerate(messages):
            if len(message.data) > limit:
                outcomes[index] = _Outcome(Status.INVALID_ARGUMENT, f"a message of {len(message.data)} bytes exceeds "
                                           f"site {self.site}'s limit of {limit} (messaging.max_message_bytes)", from_peer=True)
                continue
            if not self._crosses(message.subject):
                outcomes[index] = _Outcome(Status.INVALID_ARGUMENT, f"subject {message.subject!r} cannot cross: "
                                           "it has a character a gRPC method name cannot hold", from_peer=True)
                continue
            if not stopped and endpoint.closed:  # type: ignore[union-attr]
                stopped = f"the connection to site {self.item.to} closed"
            if not stopped:
                stopped = await self._room(endpoint, crossings, deadline)  # type: ignore[arg-type]
            if stopped:
                outcomes[index] = _Outcome(Status.UNAVAILABLE, f"not sent: {stopped}")
                continue
            crossing = _Crossing(self, message, attempt)
            crossing.open(endpoint, authority, deadline)  # type: ignore[arg-type]
            crossings.append((index, crossing))
            if not crossing.written.is_set():  # (usually it is: the next one's frames queue behind it, in order)
                self._flush()
                with trio.move_on_at(min(deadline, trio.current_time() + WRITE_WAIT)):
                    await crossing.written.wait()
                if not crossing.written.is_set():
                    crossing.give_up(Status.DEADLINE_EXCEEDED, "the request could not be written in time")
            if crossing.done.is_set() and crossing.outcome.status is not Status.OK:
                stopped = f"an earlier message failed ({crossing.outcome.status.name})"
        self._flush()  # the round's requests leave together
        with trio.move_on_at(deadline):
            for _, crossing in crossings:
                if not crossing.done.is_set():
                    await crossing.done.wait()
        for index, crossing in crossings:
            if not crossing.done.is_set():
                crossing.give_up(Status.DEADLINE_EXCEEDED, f"no answer from site {self.item.to} within "
                                 f"{self.settings.delivery_timeout_ms} ms (messaging.delivery_timeout_ms)")
            outcomes[index] = crossing.outcome
            self._log(crossing)
        self._flush()
        return outcomes  # type: ignore[return-value]

    async def _room(self, endpoint: H2Endpoint, crossings: list[tuple[int, _Crossing]], deadline: float) -> str:
        """Wait until the connection may carry one more stream (its peer's concurrent-stream limit); a reason
        not to send, or ""."""
        waiting = (crossing for _, crossing in crossings)
        if endpoint.in_flight >= endpoint.slots:
            self._flush()
        while endpoint.in_flight >= endpoint.slots:
            crossing = next(waiting, None)
            if crossing is None:
                return f"the connection to site {self.item.to} takes no more streams"
            with trio.move_on_at(deadline):
                await crossing.done.wait()
            if trio.current_time() >= deadline:
                return "the delivery timeout passed"
        return ""

    def _crosses(self, subject: str) -> bool:
        """message_link.subject_crosses, remembered per subject (a bounded few: what the import's subject matches)."""
        known = self._subjects.get(subject)
        if known is None:
            known = message_link.subject_crosses(subject)
            if len(self._subjects) < SUBJECTS_REMEMBERED:
                self._subjects[subject] = known
        return known

    def _log(self, crossing: _Crossing) -> None:
        outcome, message = crossing.outcome, crossing.message
        seconds = time.perf_counter() - crossing.started
        fields = {"site": self.site, "ingress": "messages", "peer": self.item.to, "service": message_link.SERVICE,
                  "method": message.subject, "caller_app": crossing.app, "message_id": crossing.message_id,
                  "attempt": crossing.attempt, "trace_id": crossing.trace_id, "span_id": crossing.span_id}
        lead: dict[str, object] = {"status": outcome.status.name, "ms": round(seconds * 1000, 3)}
        if outcome.text and outcome.status is not Status.OK:
            lead["error"] = outcome.text
        access_log.line("call", lead, fields)
        self._calls.observe("messages", self.item.to, message_link.SERVICE, message.subject, "triple",
                            outcome.status.name, None, False, seconds)


def _header_text(text: str) -> str:
    """A reason as a NATS header value: one line, bounded."""
    return text.replace("\r", " ").replace("\n", " ")[:1000]


class _Crossing:
    """One message's MessageLink call on a peer connection (an HTTP/2 client stream handler)."""

    def __init__(self, pump: MessagePump, message: BrokerMessage, attempt: int) -> None:
        self.pump = pump
        self.message = message
        self.attempt = attempt
        self.started = time.perf_counter()
        self.written = trio.Event()
        self.done = trio.Event()
        self.outcome = _Outcome(Status.UNKNOWN)
        self.endpoint: H2Endpoint | None = None
        self.sid = 0
        self.body = b""
        self.response_started = False
        self.decoder = grpc.MessageDecoder(max_message=64 * 1024)
        self.answer = b""
        self.app = _producer_app(message.headers)
        self.message_id = message_link.message_id(pump.site, message.stream, message.stream_sequence)
        self.trace_id, self.span_id, self.trace_flags = _trace_of(message.headers)

    def open(self, endpoint: H2Endpoint, authority: bytes, deadline: float) -> None:
        message, pump = self.message, self.pump
        delivery = message_link.Delivery(
            data=message.data, headers=message_link.carried_headers(message.headers), message_id=self.message_id,
            origin_site=pump.site, origin_stream=message.stream, origin_sequence=message.stream_sequence,
            published_unix_nanos=message.timestamp_ns, attempt=self.attempt,
        )
        headers: Headers = [
            (b":method", b"POST"), (b":scheme", b"https"), (b":path", message_link.path_of(message.subject)),
            (b":authority", authority), (b"te", b"trailers"), (b"content-type", grpc.CONTENT_TYPE),
            (b"grpc-timeout", grpc.format_timeout(max(0.001, deadline - trio.current_time()))),
        ]
        headers += [(name, value) for name, value in
                    link_headers.identity_stamps(pump.site, self.app, to_peer=True) if value is not None]
        headers.append((tracecontext.TRACEPARENT,
                        tracecontext.format_traceparent(self.trace_id, self.span_id, self.trace_flags)))
        self.endpoint = endpoint
        self.body = grpc.encode_message(message_link.encode_delivery(delivery))
        self.sid = endpoint.open_stream(headers, self)
        self.on_writable()

    def give_up(self, status: Status, text: str) -> None:
        if self.done.is_set():
            return
        if self.endpoint is not None and self.sid:
            self.endpoint.reset(self.sid, h2conn.CANCEL)
        self._end(status, text)

    def _end(self, status: Status, text: str, *, from_peer: bool = False,
             ack: message_link.DeliveryAck | None = None) -> None:
        if self.done.is_set():
            return
        self.outcome = _Outcome(status, text, ack, from_peer)
        if self.endpoint is not None and self.sid:
            self.endpoint.detach(self.sid)
        self.written.set()
        self.done.set()

    # --- StreamHandler ---------------------------------------------------------------------------------------

    def on_writable(self) -> None:
        if not self.body or self.done.is_set() or self.endpoint is None:
            return
        sent = self.endpoint.send_data(self.sid, self.body, end_stream=True)
        self.body = self.body[sent:]
        if not self.body:
            self.written.set()

    def on_headers(self, headers: Headers, end_stream: bool) -> None:
        if not end_stream and not self.response_started:
            self.response_started = True
            return
        status = grpc.status_of(headers)
        text = next((grpc.decode_grpc_message(value) for name, value in headers if name == b"grpc-message"), "")
        if status is None:
            self._end(Status.INTERNAL, "the peer gateway answered without grpc-status")
        elif status is Status.OK:
            messages = self.answer
            try:
                ack = message_link.decode_ack(messages) if messages else None
            except message_link.MessageLinkError:
                ack = None
            self._end(Status.OK, "", ack=ack, from_peer=True)
        else:
            self._end(status, text, from_peer=True)

    def on_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        if self.endpoint is not None:
            self.endpoint.acknowledge(self.sid, flow_length)
        try:
            for message in self.decoder.feed(data):
                self.answer = message.data
        except grpc.GrpcFramingError as exc:
            self.give_up(Status.INTERNAL, f"malformed answer: {exc}")
            return
        if end_stream:
            self._end(Status.INTERNAL, "the peer gateway ended the answer without grpc-status")

    def on_reset(self, error_code: int) -> None:
        self.sid = 0
        self._end(Status.UNAVAILABLE, f"the peer reset the stream ({h2conn.error_name(error_code)})")

    def on_connection_lost(self, reason: str) -> None:
        self.endpoint, self.sid = None, 0
        self._end(Status.UNAVAILABLE, f"connection to site {self.pump.item.to} lost: {reason}")


def _producer_app(headers: list[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == message_link.PRODUCER_APP.lower():
            return value[:200] or None
    return None


def _trace_of(headers: list[tuple[str, str]]) -> tuple[str, str, int]:
    """The trace a message's crossing is a span of: the producer's traceparent header, else a new trace."""
    for name, value in headers:
        if name.lower() == message_link.TRACEPARENT:
            context = tracecontext.parse_traceparent(value.encode("ascii", "replace"))
            if context is not None:
                return context[0], tracecontext.new_span_id(), context[2]
    trace_id, span_id = tracecontext.new_trace_and_span()
    return trace_id, span_id, tracecontext.SAMPLED
