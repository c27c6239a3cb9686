"""Messages across the peer link (message interop): how one message crosses between two gateways, and the
NATS subject rules both gateways apply. Sans-I/O: bytes and names in, bytes and names out.

A message crosses as one unary gRPC call of the reserved service `interlink.messaging.v1.MessageLink`, whose
method is the message's subject:

    :path = /interlink.messaging.v1.MessageLink/orders.created      (the subject is the method)
    x-interlink-caller-app: <the producer's app>                      (link_headers, like any call)
    traceparent: <the consumer-side gateway's span>
    body: Delivery {data, headers, message_id, origin_site, origin_stream, origin_sequence, ...}
    answer: DeliveryAck {stream, sequence, duplicate} once the destination broker stored it, or a gRPC status

So the serving gateway routes and applies the access domain and the ACL from the request head, as for any
call, and audits, counts and traces it the same way. A subject that cannot be a gRPC method name (one with
`/`, `?`, `#`, `%`, spaces or non-ASCII) cannot cross: `subject_crosses` says so before it is sent.

The message id is `<origin site>:<origin stream>:<stream sequence>`: the destination broker's
de-duplication id, the same however often the message is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from interlink.model import Status

SERVICE = "interlink.messaging.v1.MessageLink"
PATH_PREFIX = b"/" + SERVICE.encode() + b"/"

# Message headers the gateways read or write (NATS headers are case-sensitive on the wire; these are what the
# gateways write and what a producer or consumer application reads).
PRODUCER_APP = "Interlink-App"  # set by a producer: its application (believed in its own site, like a caller's)
ORIGIN_SITE = "Interlink-Origin-Site"  # set by the destination gateway on what it publishes
ORIGIN_SEQUENCE = "Interlink-Origin-Sequence"  # ... the message's sequence in its origin stream
CALLER_APP = "Interlink-Caller-App"  # ... the producer's app, as its site's gateway stamped it
DEAD_LETTER_REASON = "Interlink-Dead-Letter-Reason"  # set on a dead letter: what refused it and why
DEAD_LETTER_STATUS = "Interlink-Dead-Letter-Status"  # ... the gRPC status name of that refusal
DEAD_LETTER_PEER = "Interlink-Dead-Letter-Peer"  # ... the peer site it was meant for
TRACEPARENT = "traceparent"
# Header names a message never carries across: the broker's own (Nats-Msg-Id, Nats-Expected-*: they meant
# something to the origin's broker only) and the gateways' (Interlink-*: only a gateway sets them).
_RESERVED_PREFIXES = ("nats-", "interlink-")

# Refusals that will never succeed by sending the message again (not exported, ACL, too large, malformed):
# the message is dead-lettered. Anything else (peer down, broker busy, deadline) is tried again.
PERMANENT = frozenset({
    Status.PERMISSION_DENIED, Status.UNIMPLEMENTED, Status.INVALID_ARGUMENT, Status.FAILED_PRECONDITION,
    Status.NOT_FOUND, Status.OUT_OF_RANGE,
})

_PATH_UNSAFE = frozenset(b"/?#%")


class MessageLinkError(ValueError):
    """A Delivery or DeliveryAck that cannot be read."""


@dataclass(frozen=True, slots=True)
class Delivery:
    data: bytes
    headers: tuple[tuple[str, str], ...]
    message_id: str
    origin_site: str
    origin_stream: str
    origin_sequence: int
    published_unix_nanos: int = 0
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class DeliveryAck:
    stream: str
    sequence: int
    duplicate: bool = False


def message_id(origin_site: str, stream: str, sequence: int) -> str:
    return f"{origin_site}:{stream}:{sequence}"


def path_of(subject: str) -> bytes:
    return PATH_PREFIX + subject.encode("ascii")


def carried_headers(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The producer's headers that cross: all but the broker's and the gateways' own (and the trace context,
    which the call carries)."""
    return tuple((name, value) for name, value in headers
                 if not name.lower().startswith(_RESERVED_PREFIXES) and name.lower() != TRACEPARENT)


def _messages():  # noqa: ANN202 - the generated module
    """The generated protobuf messages, loaded by the first gateway that carries a message (every gateway reads
    this module's names; only those with messaging: pay for the descriptors)."""
    from interlink.wire import message_link_pb2

    return message_link_pb2


def encode_delivery(delivery: Delivery) -> bytes:
    message_link_pb2 = _messages()
    message = message_link_pb2.Delivery(
        data=delivery.data, message_id=delivery.message_id, origin_site=delivery.origin_site,
        origin_stream=delivery.origin_stream, origin_sequence=delivery.origin_sequence,
        published_unix_nanos=delivery.published_unix_nanos, attempt=delivery.attempt,
    )
    message.headers.extend(message_link_pb2.Header(name=name, value=value) for name, value in delivery.headers)
    return message.SerializeToString()


def decode_delivery(data: bytes) -> Delivery:
    from google.protobuf.message import DecodeError

    try:
        message = _messages().Delivery.FromString(data)
    except DecodeError as exc:
        raise MessageLinkError(f"not a Delivery message: {exc}") from None
    if not message.message_id:
        raise MessageLinkError("the Delivery has no message_id")
    return Delivery(
        data=message.data, headers=tuple((header.name, header.value) for header in message.headers),
        message_id=message.message_id, origin_site=message.origin_site, origin_stream=message.origin_stream,
        origin_sequence=message.origin_sequence, published_unix_nanos=message.published_unix_nanos,
        attempt=message.attempt,
    )


def encode_ack(ack: DeliveryAck) -> bytes:
    return _messages().DeliveryAck(stream=ack.stream, sequence=ack.sequence, duplicate=ack.duplicate).SerializeToString()


def decode_ack(data: bytes) -> DeliveryAck:
    from google.protobuf.message import DecodeError

    try:
        message = _messages().DeliveryAck.FromString(data)
    except DecodeError as exc:
        raise MessageLinkError(f"not a DeliveryAck message: {exc}") from None
    return DeliveryAck(message.stream, message.sequence, message.duplicate)


# --- NATS subjects ------------------------------------------------------------------------------------------


def subject_problem(subject: str, *, wildcards: bool) -> str | None:
    """What is wrong with `subject` as a site file names it (None: nothing): dot-separated non-empty tokens of
    visible ASCII without `/ ? # %` (it becomes a gRPC method name); with `wildcards`, a token may be `*` (one
    token) and the last may be `>` (one or more)."""
    if not subject:
        return "it is empty"
    try:
        raw = subject.encode("ascii")
    except UnicodeEncodeError:
        return "it has characters outside ASCII"
    if any(byte <= 0x20 or byte >= 0x7F or byte in _PATH_UNSAFE for byte in raw):
        return "it has spaces, control characters or one of / ? # % (a subject crosses as a gRPC method name)"
    tokens = subject.split(".")
    if any(not token for token in tokens):
        return "it has an empty token (two dots in a row, or a dot at either end)"
    for index, token in enumerate(tokens):
        if ("*" in token or ">" in token) and not wildcards:
            return "a published subject has no wildcards"
        if token == ">" and index != len(tokens) - 1:
            return "`>` may only be the last token"
        if token not in ("*", ">") and ("*" in token or ">" in token):
            return "a wildcard is a whole token (`orders.*`, `orders.>`), never part of one"
    return None


def subject_crosses(subject: str) -> bool:
    """A published subject that can be a gRPC method name (what a wildcard import may still meet)."""
    return subject_problem(subject, wildcards=False) is None


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: `*` is one token, a last `>` one or more."""
    if pattern == subject:
        return True
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)


def subjects_overlap(a: str, b: str) -> bool:
    """Some subject matches both patterns."""
    left, right = a.split("."), b.split(".")
    for index in range(max(len(left), len(right))):
        x = left[index] if index < len(left) else None
        y = right[index] if index < len(right) else None
        if x == ">" or y == ">":
            return x is not None and y is not None  # `>` takes one token or more, whatever they are
        if x is None or y is None:
            return False
        if x != y and x != "*" and y != "*":
            return False
    return True
