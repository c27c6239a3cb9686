"""The one small interface every broker adapter implements (message interop; issue 15).

    broker = SomeBroker(url, name=...)       # from the site file's `messaging.broker` block
    async with broker:                        # connects (and keeps reconnecting); leaving it closes
        await broker.ensure_stream(name, subjects)              # create if missing, else add missing subjects
        stream = await broker.stream_of_subject(subject)        # the stream that captures a subject, or None
        await broker.ensure_consumer(stream, durable, filter_subject=..., max_ack_pending=..., ack_wait=...)
        messages = await broker.fetch(stream, durable, batch=..., wait=...)   # [] when none arrived in `wait`
        await broker.ack(message) / nak(message, delay=...) / in_progress(message) / term(message)
        ack = broker.publish(subject, data, headers=..., msg_id=..., stream=...)  # queued now, in call order
        result = await ack.wait(timeout)      # PublishAck (stream, sequence, duplicate) or BrokerError

Rules every adapter keeps (and its tests check against a real broker):
- `publish` is synchronous up to the point where the message is queued on the connection: publishes made in
  one order reach the broker in that order (per-subject order across the link depends on it); its result is
  awaited separately, so many publishes can be in flight on one connection. It raises only BrokerBusy;
  anything else (not connected, too large, bad headers) comes out of `wait`, which gives one answer: after
  it timed out, a late acknowledgement is dropped and waiting again raises at once;
- a publish is acknowledged only after the broker stored it (JetStream's PubAck), and `msg_id` is the
  broker's de-duplication id (a duplicate inside the stream's window is acknowledged with duplicate=True and
  stored once);
- every wait has a timeout; a lost connection fails what is in flight with BrokerError (never hangs) and the
  adapter reconnects with backoff; `connected` says whether it is up now, `last_error` why not;
- acknowledgements (ack / nak / in_progress / term) are sent, not confirmed: one lost with its connection
  means the message is handed out again after the consumer's ack wait (at least once);
- a consumer's filter subject cannot change once it exists (refused: use another durable name);
- buffers are bounded: what is queued and not yet written is capped in bytes; `publish` beyond the cap
  raises BrokerBusy (a retriable BrokerError) instead of growing.

Adapters depend only on trio and their wire protocol, never on the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Broker", "BrokerBusy", "BrokerError", "BrokerMessage", "PendingPublish", "PublishAck"]


class BrokerError(Exception):
    """The broker refused or could not do what was asked (or the connection is down); the message says
    what and, where it can, what to do. `retriable`: worth trying again later (connection down, timeout,
    busy) rather than a refusal for good (no such stream, message too large, ...)."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class BrokerBusy(BrokerError):
    """Too much is queued on the connection already: try again once acknowledgements come back."""


@dataclass(frozen=True)
class PublishAck:
    stream: str
    sequence: int
    duplicate: bool = False


@dataclass
class BrokerMessage:
    """One message read from a durable consumer. `headers` keep the publisher's order and repeats."""

    subject: str
    data: bytes
    headers: list[tuple[str, str]]
    stream: str
    stream_sequence: int  # the message's position in its stream: with the origin site, its id across sites
    delivered: int  # 1 on the first delivery, more on redeliveries
    timestamp_ns: int  # when the broker stored it
    pending: int  # messages left for this consumer after this one (lag)
    reply: str = field(default="", repr=False)  # adapter-private: where acknowledgements go


class PendingPublish(Protocol):
    done: bool  # the answer is in: `wait` returns (or raises) without waiting

    async def wait(self, timeout: float) -> PublishAck:
        """The broker's acknowledgement; BrokerError when it refused, the connection was lost, or `timeout`
        passed (the message may still have been stored: publish it again with the same msg_id)."""
        ...


class Broker(Protocol):
    connected: bool
    last_error: str | None

    async def __aenter__(self) -> Broker: ...
    async def __aexit__(self, *exc: object) -> None: ...

    async def wait_connected(self, timeout: float) -> bool: ...
    async def ensure_stream(self, name: str, subjects: list[str], *, duplicate_window: float = 120.0) -> None: ...
    async def stream_of_subject(self, subject: str) -> str | None: ...
    async def ensure_consumer(self, stream: str, durable: str, *, filter_subject: str, max_ack_pending: int,
                              ack_wait: float) -> None: ...
    async def fetch(self, stream: str, durable: str, *, batch: int, wait: float) -> list[BrokerMessage]: ...
    async def ack(self, message: BrokerMessage) -> None: ...
    async def nak(self, message: BrokerMessage, delay: float = 0.0) -> None: ...
    async def in_progress(self, message: BrokerMessage) -> None: ...
    async def term(self, message: BrokerMessage) -> None: ...
    def publish(self, subject: str, data: bytes, *, headers: list[tuple[str, str]] | None = None,
                msg_id: str | None = None, stream: str | None = None) -> PendingPublish: ...
