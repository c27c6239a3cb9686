"""Calls whose providers speak the other protocol: translated once, at the provider-side gateway, through
`Call`/`Reply` (wire/bolt_call.py and wire/triple_call.py are the two adapters).

    peer --Bolt-->  BoltForwarder._route_peer, export speaks Triple:
                    call_from_bolt -> Call -> Triple HEADERS + one message (protobuf body unchanged, or the
                    SofaRequest split into a TripleRequestWrapper) -> h2c stream to a provider
                    (TripleUpstream collects the response) -> Reply -> Bolt response, caller's request id
    peer --h2-->    TripleForwarder.on_peer_request, export speaks Bolt: TripleToBolt is the caller stream's
                    handler; it takes the one request message -> Call -> Bolt request (protobuf content, or a
                    SofaRequest built from the wrapper) -> Bolt provider -> Reply -> gRPC response

Bolt is request/response only: a Triple call that sends a second message is refused with UNIMPLEMENTED.
Deadlines cross both ways (grpc-timeout <-> Bolt timeout, reduced by the time spent here); errors map as
PROTOCOLS.md 3.3 proposes, and a body that cannot be translated is answered with INTERNAL, never guessed.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable

import h2.errors
from google.protobuf.message import DecodeError

from interlink.routes import ExportRoute
from interlink.gateway.forwarding import log_call, remaining, remaining_ms
from interlink.gateway.relay import status_for_reset
from interlink.model import Call, Identity, PayloadKind, Reply, Status
from interlink.net.boltlink import BoltEndpoint
from interlink.net.h2link import H2Endpoint, Headers
from interlink.net.pool import PoolGroup
from interlink.wire import bolt, bolt_call, grpc, triple_call, triple_wrapper, triple_wrapper_pb2
from interlink.wire.hessian2 import HessianError
from interlink.wire.triple_call import TranslationRefused

if TYPE_CHECKING:
    from interlink.gateway.bolt import BoltCallRelay
    from interlink.gateway.relay import DeadlineTimers

# What a translation can fail with besides a refusal: bodies the codecs cannot read or write.
TRANSLATION_ERRORS = (HessianError, triple_wrapper.TranslationError, bolt.BoltProtocolError, ValueError)

_SERIALIZE_OF_FLAVOUR = {"sofa": triple_wrapper.SERIALIZE_SOFA, "dubbo": triple_wrapper.SERIALIZE_DUBBO}


# --- Bolt caller, Triple provider ------------------------------------------------------------------------


def bolt_to_triple_request(
    relay: BoltCallRelay, route: ExportRoute, peer: str, app: str | None
) -> tuple[Headers, bytes, str | None]:
    """The Triple request (HEADERS, one gRPC message, wrapper serializeType or None for IDL) for a Bolt
    call to a Triple export. Raises TranslationRefused or one of TRANSLATION_ERRORS."""
    call = bolt_call.call_from_bolt(relay.request, route.service, relay.deadline)
    call.caller = Identity(peer, app or (call.caller.app if call.caller else None))
    serialize = None
    payload = call.payload
    assert payload is not None
    if payload.kind == PayloadKind.SOFA_HESSIAN:
        serialize = _SERIALIZE_OF_FLAVOUR.get(route.flavour)
        if serialize is None:
            raise TranslationRefused(
                Status.UNIMPLEMENTED,
                f"{route.service} is exported from IDL (protobuf) gRPC providers; a hessian2 Bolt call cannot be "
                "translated to it: call it with the protobuf codec, or export it with flavour: sofa or dubbo",
            )
        _, message = triple_wrapper.sofa_request_to_wrapper(payload.data, serialize)
    else:
        message = payload.data
    stamps = [(grpc.CALLER_SITE, peer.encode())]
    if call.caller.app:
        stamps.append((grpc.CALLER_APP, call.caller.app.encode()))
    headers = triple_call.request_headers(
        call,
        authority=route.service.encode(),
        timeout=remaining(relay.deadline),
        flavour=route.flavour,
        unique_name=route.bolt_name,
        version=route.version,
        unique_id=route.unique_id,
        group=route.group,
        stamps=stamps,
    )
    return headers, grpc.encode_message(message), serialize


class TripleUpstream:
    """The provider's side of a Bolt call translated to Triple: an h2 client stream's handler that sends the
    one request message and turns the whole response into the Bolt answer."""

    __slots__ = ("relay", "serialize", "up", "sid", "_out", "_head", "_decoder", "_messages")

    def __init__(self, relay: BoltCallRelay, serialize: str | None) -> None:
        self.relay = relay
        self.serialize = serialize
        self.up: H2Endpoint | None = None
        self.sid = 0
        self._out = b""
        self._head: Headers | None = None
        self._decoder = grpc.MessageDecoder()
        self._messages: list[bytes] = []

    def start(self, up: H2Endpoint, headers: Headers, message: bytes) -> None:
        self.up = up
        self.sid = up.open_stream(headers, self)
        self.relay.cancel_up = self._cancel
        self._out = message
        self.on_writable()

    def _cancel(self) -> None:
        if self.up is not None:
            self.up.reset(self.sid, h2.errors.ErrorCodes.CANCEL)

    def on_writable(self) -> None:
        if self._out and self.up is not None:
            sent = self.up.send_data(self.sid, self._out, end_stream=True)
            self._out = self._out[sent:]

    def on_headers(self, headers: Headers, end_stream: bool) -> None:
        if self._head is None and not end_stream:
            status = next((value for name, value in headers if name == b":status"), b"")
            if status != b"200":
                self._cancel()
                self._fail(Status.UNAVAILABLE if status in (b"502", b"503", b"504") else Status.INTERNAL,
                           f"the provider answered HTTP {status.decode(errors='replace')}")
                return
            self._head = headers
            return
        if self._head is None:  # Trailers-Only
            self._complete(headers, None)
        else:
            self._complete(self._head, headers)

    def on_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        assert self.up is not None
        self.up.acknowledge(self.sid, flow_length)
        try:
            self._messages.extend(message.data for message in self._decoder.feed(data))
        except grpc.GrpcFramingError as exc:
            self._cancel()
            self._fail(Status.INTERNAL, f"malformed response from the provider: {exc}")
            return
        if end_stream:
            self.on_end()

    def on_end(self) -> None:
        self._fail(Status.INTERNAL, "the provider ended the response without grpc-status trailers")

    def on_reset(self, error_code: int) -> None:
        self._fail(status_for_reset(error_code), f"the provider reset the stream ({getattr(error_code, 'name', error_code)})")

    def on_connection_lost(self, reason: str) -> None:
        self._fail(Status.UNAVAILABLE, f"connection to the provider lost: {reason}")

    def _complete(self, head: Headers, trailers: Headers | None) -> None:
        relay = self.relay
        if self.up is not None:
            self.up.detach(self.sid)
        if relay.done:
            return
        reply = triple_call.reply_from_triple(head, self._messages, trailers, self.serialize)
        try:
            frame = bolt_call.response_frame(reply, relay.request)
        except TranslationRefused as exc:
            relay.fail(exc.status, exc.message)
            return
        except TRANSLATION_ERRORS as exc:
            relay.fail(Status.INTERNAL, f"cannot translate the provider's response: {exc}")
            return
        outcome = "APPLICATION_ERROR" if reply.exception else reply.status.name  # as response_status() names it
        relay.answer(bolt.encode(frame), outcome, reply.message)

    def _fail(self, status: Status, message: str) -> None:
        if self.up is not None:
            self.up.detach(self.sid)
        self.relay.fail(status, message)


# --- Triple caller, Bolt provider ------------------------------------------------------------------------


class TripleToBolt:
    """A Triple call to a Bolt export: the caller stream's handler from admission to the last trailer."""

    __slots__ = (
        "down", "sid", "head", "route", "peer", "log_fields", "started", "deadline", "done", "serialize", "upstream_group",
        "_timers", "_timer", "_decoder", "_messages", "_caller_ended", "_cancel_up", "_out", "_trailers", "_status",
        "_logged", "_dispatch",
    )

    def __init__(
        self, down: H2Endpoint, sid: int, head: grpc.RequestHead, route: ExportRoute, peer: str,
        log_fields: dict[str, object], timers: DeadlineTimers, deadline: float, caller_ended: bool,
        dispatch: Callable[[TripleToBolt], None],
    ) -> None:
        self.down, self.sid, self.head, self.route, self.peer = down, sid, head, route, peer
        self.log_fields = log_fields
        self.started = time.perf_counter()
        self.deadline = deadline
        self.done = False
        self.upstream_group: PoolGroup | None = None  # whose fair share this call holds
        self.serialize: str | None = None
        self._timers = timers
        self._timer = timers.add(deadline, self) if deadline != math.inf else None  # type: ignore[arg-type]
        self._decoder = grpc.MessageDecoder()
        self._messages: list[grpc.Message] = []
        self._caller_ended = caller_ended
        self._cancel_up: Callable[[], None] | None = None
        self._out = b""
        self._trailers: Headers | None = None
        self._status = Status.UNKNOWN
        self._logged = False
        self._dispatch = dispatch  # sends the Bolt request once the caller's request is complete
        down.attach(sid, self)
        if caller_ended:
            dispatch(self)

    # --- the request, from the caller --------------------------------------------------------------------

    def on_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        self.down.acknowledge(self.sid, flow_length)
        if self.done:
            return
        try:
            self._messages.extend(self._decoder.feed(data))
        except grpc.GrpcFramingError as exc:
            self.fail(Status.INTERNAL, f"malformed request: {exc}")
            return
        if len(self._messages) > 1:
            self.fail(Status.UNIMPLEMENTED, self._streaming_refusal())
            return
        if end_stream:
            self.on_end()

    def on_headers(self, headers: Headers, end_stream: bool) -> None:
        self.on_end()  # trailers from a caller are not gRPC; treat them as the end of the request

    def on_end(self) -> None:
        if not self._caller_ended:
            self._caller_ended = True
            if not self.done:
                self._dispatch(self)

    def request_message(self) -> bytes | None:
        """The one request message, once the request is complete and valid; otherwise the call is failed
        (or still waiting for more) and None."""
        if self.done or not self._caller_ended:
            return None
        if self._decoder.pending or len(self._messages) != 1:
            self.fail(Status.UNIMPLEMENTED if self._messages else Status.INTERNAL,
                      self._streaming_refusal() if self._messages else "the request carried no complete message")
            return None
        message = self._messages[0]
        if message.compressed:
            self.fail(Status.UNIMPLEMENTED, "compressed messages cannot be translated to Bolt; call without compression")
            return None
        return message.data

    def _streaming_refusal(self) -> str:
        return (f"{self.head.service}/{self.head.method} is served by Bolt providers, which are request/response "
                "only: streaming calls cannot cross to them")

    def bolt_request(self) -> bolt.BoltFrame | None:
        """The Bolt request for this call, or None (the call was answered with the reason)."""
        message = self.request_message()
        if message is None:
            return None
        route = self.route
        kind = PayloadKind.PROTOBUF if route.codec == "protobuf" else PayloadKind.WRAPPER
        call: Call = triple_call.call_from_triple(self.head, message, kind, self.deadline)
        call.caller = Identity(self.peer, self.head.caller_app)
        stamps = {
            bolt_call.GATEWAY_PREFIX + "caller-site": self.peer,
            bolt_call.GATEWAY_PREFIX + "caller-app": self.head.caller_app,
        }
        try:
            if kind == PayloadKind.WRAPPER:
                self.serialize = _serialize_type(message)
            return bolt_call.request_frame(
                call, unique_name=route.bolt_name, codec=route.codec,
                timeout_ms=remaining_ms(self.deadline), stamps=stamps,
            )
        except TranslationRefused as exc:
            self.fail(exc.status, exc.message)
        except TRANSLATION_ERRORS as exc:
            self.fail(Status.INTERNAL, f"cannot translate the request to Bolt: {exc}")
        return None

    def send(self, upstream: BoltEndpoint, frame: bolt.BoltFrame) -> None:
        if self.done:
            return
        side = _BoltSide(self)
        up_id = upstream.send_request(frame, bolt.encode(frame), side)
        self._cancel_up = lambda: upstream.forget(up_id)

    def on_reset(self, error_code: int) -> None:
        self._abandon_upstream()
        self._finish(Status.CANCELLED, f"the caller reset the stream ({getattr(error_code, 'name', error_code)})")

    def on_connection_lost(self, reason: str) -> None:
        self._abandon_upstream()
        self._finish(Status.CANCELLED, f"the caller's connection ended: {reason}")

    # --- the response, from the provider -----------------------------------------------------------------

    def upstream_response(self, frame: bolt.BoltFrame) -> None:
        if self.done:
            return
        self._cancel_up = None
        try:
            reply = bolt_call.reply_from_bolt(frame, self.serialize)
        except TranslationRefused as exc:
            reply = Reply(exc.status, exc.message)
        except TRANSLATION_ERRORS as exc:
            reply = Reply(Status.INTERNAL, f"cannot translate the provider's response: {exc}")
        self._respond(reply)

    def deadline_passed(self) -> None:
        if not self.done:
            self._abandon_upstream()
            self.fail(Status.DEADLINE_EXCEEDED, "deadline exceeded at the gateway")

    def fail(self, status: Status, message: str) -> None:
        if not self.done:
            self._abandon_upstream()
            self._respond(Reply(status, message))

    def _respond(self, reply: Reply) -> None:
        content_type = b"application/grpc+proto" if self.route.flavour == "dubbo" else grpc.CONTENT_TYPE
        head, data, trailers = triple_call.response(reply, content_type)
        self._status = Status.INTERNAL if reply.status == Status.OK and reply.payload is None else reply.status
        self.done = True
        if not head:  # Trailers-Only
            self.down.send_headers(self.sid, trailers, end_stream=True)
            self._finish(self._status, reply.message)
            return
        self.down.send_headers(self.sid, head)
        self._out, self._trailers = data or b"", trailers
        self.on_writable()

    def on_writable(self) -> None:
        if self._out and not self.down.closed:
            sent = self.down.send_data(self.sid, self._out)
            self._out = self._out[sent:]
        if not self._out and self._trailers is not None:
            self.down.send_headers(self.sid, self._trailers, end_stream=True)
            self._trailers = None
            self._finish(self._status, "")

    def _abandon_upstream(self) -> None:
        if self._cancel_up is not None:
            self._cancel_up()
            self._cancel_up = None

    def _finish(self, status: Status, message: str) -> None:
        """The call is over (answered, or the caller went away): once, with its access line."""
        if self.upstream_group is not None:
            self.upstream_group.release(self.down)
            self.upstream_group = None
        if self._timer is not None:
            self._timers.cancel(self._timer)
            self._timer = None
        self._out, self._trailers = b"", None
        self.down.detach(self.sid)
        if not self._caller_ended and not self.down.closed:
            self.down.reset(self.sid, h2.errors.ErrorCodes.NO_ERROR)  # the response is complete (RFC 9113 8.1)
        self._caller_ended = True
        if not self._logged:
            self._logged = True
            log_call(status.name, self.started, message, self.log_fields)


class _BoltSide:
    """The Bolt provider's side of a TripleToBolt call (the BoltCall a BoltEndpoint reports to)."""

    __slots__ = ("call",)

    def __init__(self, call: TripleToBolt) -> None:
        self.call = call

    def on_response(self, frame: bolt.BoltFrame) -> None:
        self.call.upstream_response(frame)

    def on_connection_lost(self, reason: str) -> None:
        self.call._cancel_up = None
        self.call.fail(Status.UNAVAILABLE, f"connection to the provider lost: {reason}")


def _serialize_type(message: bytes) -> str:
    """The serializeType of a TripleRequestWrapper, which the response is written in too."""
    try:
        return triple_wrapper_pb2.TripleRequestWrapper.FromString(message).serializeType
    except DecodeError as exc:
        raise TranslationRefused(Status.INTERNAL, f"the request is not a TripleRequestWrapper: {exc}") from None
