"""The HTTP/2 legs of a call: a caller's stream (`H2Downstream`) and a stream the gateway opens to a peer
gateway or a provider (`H2Upstream`). A leg adapts one stream to the call (gateway/call.py): head in,
messages in, answer out. It knows HTTP/2 and gRPC, never routes or ACLs.

Between two HTTP/2 legs (Triple→Triple) DATA and trailers pass through untouched: the gateway never
re-frames gRPC messages. Flow control is end to end: bytes received on one leg are acknowledged only when
the other leg has sent them, so a slow receiver slows its sender and the gateway holds at most one window
per stream. When the other side speaks Bolt, a leg collects the one request (or response) message and the
call translates through `Call`/`Reply` (gateway/translation.py).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from interlink.gateway.retries import REPLAY_LIMIT
from interlink.model import Call, PayloadKind, Refusal, Reply, Status
from interlink.net.h2link import H2Endpoint, Headers
from interlink.routes import ExportRoute
from interlink.wire import grpc, h2conn, triple_call
from interlink.wire.link_headers import UNPROCESSED

if TYPE_CHECKING:
    from interlink.gateway.call import GatewayCall

CANCEL = h2conn.CANCEL
NO_ERROR = h2conn.NO_ERROR


class _Pending:
    """Bytes (and maybe END_STREAM, then trailers) waiting for this leg's stream window. Each chunk keeps
    the flow-controlled length still to acknowledge to the leg it came from (0 for bytes the gateway made)."""

    __slots__ = ("chunks", "end", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[list] = deque()  # [data, flow_length_not_yet_acknowledged]
        self.end = False
        self.trailers: Headers | None = None

    def __bool__(self) -> bool:
        return bool(self.chunks) or self.end or self.trailers is not None


class H2Leg:
    """One HTTP/2 stream as one side of a call, with what is queued for it (`out`) and the leg those bytes
    came from (`source`: acknowledged as they leave; None when the gateway made them)."""

    __slots__ = ("call", "endpoint", "sid", "out", "source", "collector")

    protocol = "triple"

    def __init__(self, call: GatewayCall | None, endpoint: H2Endpoint | None, sid: int) -> None:
        self.call = call
        self.endpoint = endpoint
        self.sid = sid
        self.out = _Pending()
        self.source: H2Leg | None = None
        self.collector: _Collector | None = None  # the other side speaks Bolt: messages collected, not relayed

    def acknowledge(self, flow_length: int) -> None:
        """Bytes received on this stream were passed on: the remote side may send as many again."""
        if self.endpoint is not None and self.sid:
            self.endpoint.acknowledge(self.sid, flow_length)

    def queue(self, data: bytes, flow_length: int, end: bool) -> None:
        self.out.chunks.append([data, flow_length])
        if end:
            self.out.end = True

    def pump(self) -> bool:
        """Send what the stream's window allows, acknowledging it to the source. True when nothing is left."""
        pending, sink, sid, source = self.out, self.endpoint, self.sid, self.source
        assert sink is not None
        chunks = pending.chunks
        while chunks:
            entry = chunks[0]
            data, flow = entry
            last = len(chunks) == 1
            sent = sink.send_data(sid, data, end_stream=last and pending.end and pending.trailers is None)
            if sent < len(data):
                if sent:
                    entry[0] = data[sent:]
                    if flow:
                        taken = min(sent, flow)
                        entry[1] = flow - taken
                        if source is not None:
                            source.acknowledge(taken)
                return False
            chunks.popleft()
            if flow and source is not None:
                source.acknowledge(flow)
            if last and pending.end and pending.trailers is None:
                pending.end = False
                return True
        if pending.trailers is not None:
            sink.send_headers(sid, pending.trailers, end_stream=True)
            pending.trailers = None
            pending.end = False
        elif pending.end:
            sink.send_data(sid, b"", end_stream=True)
            pending.end = False
        return True

    def collect_data(self, data: bytes, flow_length: int, what: str) -> bool:
        """DATA of a stream whose messages are collected: acknowledged at once, decoded; a framing error
        fails the call ("malformed `what`") and returns False."""
        self.acknowledge(flow_length)
        try:
            self.collector.feed(data)  # type: ignore[union-attr]
        except grpc.GrpcFramingError as exc:
            self.call.fail(Status.INTERNAL, f"malformed {what}: {exc}")  # type: ignore[union-attr]
            return False
        return True

    def discard(self) -> None:
        """Drop what is queued, still returning its connection-level window to the source."""
        pending, source = self.out, self.source
        if source is not None:
            for _, flow in pending.chunks:
                if flow:
                    source.acknowledge(flow)
        pending.chunks.clear()
        pending.end = False
        pending.trailers = None


class _Collector:
    """The gRPC messages of a stream whose other side speaks Bolt (one request or one response message)."""

    __slots__ = ("decoder", "messages")

    def __init__(self) -> None:
        self.decoder = grpc.MessageDecoder()
        self.messages: list[grpc.Message] = []

    def feed(self, data: bytes) -> None:
        self.messages.extend(self.decoder.feed(data))  # raises GrpcFramingError


class H2Downstream(H2Leg):
    """The caller's stream. Its handler for the whole call: the request's DATA goes to the upstream leg (or
    is collected when the call is translated), the answer comes back through `out`."""

    __slots__ = ("headers", "head", "traceparent", "caller_ended", "response_started")

    oneway = False  # gRPC has no oneway calls

    def __init__(self, endpoint: H2Endpoint, sid: int, headers: Headers, caller_ended: bool) -> None:
        super().__init__(None, endpoint, sid)
        self.headers = headers
        self.head: grpc.RequestHead | None = None
        self.traceparent: bytes | None = None  # the caller's trace context (W3C), read with the head
        self.caller_ended = caller_ended  # END_STREAM received from the caller
        self.response_started = False

    def read_head(self) -> grpc.RequestHead:
        """Parse the request head, once (Refusal when it is not a gRPC request)."""
        self.head, self.traceparent = grpc.read_request_head(self.headers)
        self.headers = None  # type: ignore[assignment]
        return self.head

    def attach(self, call: GatewayCall) -> None:
        self.call = call
        self.endpoint.attach(self.sid, self)  # type: ignore[union-attr]

    def collect(self) -> None:
        """Collect the request's one message instead of relaying DATA (a call translated to Bolt)."""
        self.collector = _Collector()

    def to_call(self, route: ExportRoute, deadline: float) -> Call:
        """The complete request as a Call (a call translated to Bolt); Refusal when it is not one message."""
        assert self.head is not None
        kind = PayloadKind.PROTOBUF if route.codec == "protobuf" else PayloadKind.WRAPPER
        return triple_call.call_from_triple(self.head, self.request_message(), kind, deadline)

    def request_message(self) -> bytes:
        """The one request message of a complete request (a call translated to Bolt), else Refusal."""
        collector = self.collector
        assert collector is not None
        if collector.decoder.pending or len(collector.messages) != 1:
            if collector.messages:
                raise Refusal(Status.UNIMPLEMENTED, self._streaming_refusal())
            raise Refusal(Status.INTERNAL, "the request carried no complete message")
        message = collector.messages[0]
        if message.compressed:
            raise Refusal(Status.UNIMPLEMENTED, "compressed messages cannot be translated to Bolt; call without compression")
        return message.data

    def _streaming_refusal(self) -> str:
        head = self.head
        assert head is not None
        return (f"{head.service}/{head.method} is served by Bolt providers, which are request/response only: "
                "streaming calls cannot cross to them")

    # --- the request, from the caller (StreamHandler) --------------------------------------------------

    def on_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        call = self.call
        assert call is not None
        if self.collector is not None:
            if not self.collect_data(data, flow_length, "request"):
                return
            if len(self.collector.messages) > 1:
                call.fail(Status.UNIMPLEMENTED, self._streaming_refusal())
                return
            if end_stream:
                self.on_end()
            return
        if end_stream:
            self.caller_ended = True
        up = call.up
        if isinstance(up, H2Upstream):
            if up.replay is not None:
                up.keep(data)
            up.queue(data, flow_length, end_stream)
            if up.endpoint is not None:
                up.forward_request()
        else:  # the call is over: give the window back
            self.acknowledge(flow_length)

    def on_headers(self, headers: Headers, end_stream: bool) -> None:
        self.on_end()  # trailers from a caller are not part of gRPC: the end of the request

    def on_end(self) -> None:
        if self.caller_ended:
            return
        self.caller_ended = True
        call = self.call
        assert call is not None
        if self.collector is not None:
            call.request_complete()
            return
        up = call.up
        if isinstance(up, H2Upstream):
            up.out.end = True
            if up.endpoint is not None:
                up.forward_request()

    def on_reset(self, error_code: int) -> None:
        self.call.caller_gone(f"the caller reset the stream ({h2conn.error_name(error_code)})")  # type: ignore[union-attr]

    def on_connection_lost(self, reason: str) -> None:
        self.call.caller_gone(f"the caller's connection ended: {reason}")  # type: ignore[union-attr]

    def on_writable(self) -> None:
        if self.out and self.pump():
            self.call.answer_sent()  # type: ignore[union-attr]  # complete only once the trailers went too

    # --- the answer -------------------------------------------------------------------------------------

    def relay_response_head(self, headers: Headers) -> None:
        self.response_started = True
        self.endpoint.send_headers(self.sid, headers)  # type: ignore[union-attr]

    def relay_trailers_only(self, headers: Headers) -> None:
        self.response_started = True
        self.endpoint.send_headers(self.sid, headers, end_stream=True)  # type: ignore[union-attr]

    def relay_trailers(self, headers: Headers) -> bool:
        """The upstream's trailers, after what is queued; True when they went out."""
        self.out.trailers = headers
        self.out.end = True
        return self.pump()

    def answer(self, reply: Reply, content_type: bytes) -> bool:
        """A translated call's answer (PROTOCOLS.md 3.2); True when it went out whole."""
        head, data, trailers = triple_call.response(reply, content_type)
        self.response_started = True
        endpoint = self.endpoint
        assert endpoint is not None
        if not head:  # Trailers-Only
            endpoint.send_headers(self.sid, trailers, end_stream=True)
            return True
        endpoint.send_headers(self.sid, head)
        self.source = None
        if data:
            self.out.chunks.append([data, 0])
        self.out.trailers = trailers
        self.out.end = True
        return self.pump()

    def answer_error(self, refusal: Refusal, unprocessed: bool = False) -> None:
        """A gateway-made error: trailers after a started response, else Trailers-Only (`unprocessed`: refused
        before any provider saw it, link_headers.UNPROCESSED)."""
        self.discard()
        endpoint = self.endpoint
        assert endpoint is not None
        if self.response_started:
            endpoint.send_headers(self.sid, grpc.status_trailers(refusal.status, refusal.message), end_stream=True)
        else:
            self.response_started = True
            headers = grpc.trailers_only(refusal.status, refusal.message, refusal.http_status)
            if unprocessed:
                headers.append((UNPROCESSED, b"1"))
            endpoint.send_headers(self.sid, headers, end_stream=True)

    def release(self, caller_alive: bool) -> None:
        """The call is over: the stream is forgotten; a caller still sending is told to stop (RFC 9113 8.1)."""
        endpoint = self.endpoint
        assert endpoint is not None
        endpoint.detach(self.sid)
        if caller_alive and not self.caller_ended and not endpoint.closed:
            endpoint.reset(self.sid, NO_ERROR)
        self.caller_ended = True
        self.discard()
        self.source = None


class H2Upstream(H2Leg):
    """A stream the gateway opens to a peer gateway or a provider. Relays the response to an HTTP/2
    caller, or collects it into a `Reply` for a Bolt caller."""

    __slots__ = ("headers", "request_done", "response_head", "message", "replay", "replay_bytes")

    def __init__(self, call: GatewayCall, headers: Headers, message: bytes | None = None, replay: bool = False) -> None:
        """`message`: the one request message of a translated call (then the response is collected);
        `replay`: keep the request's bytes so that it can be sent again (the call may be retried)."""
        super().__init__(call, None, 0)
        self.headers = headers
        self.request_done = False  # END_STREAM sent upstream
        self.response_head: Headers | None = None
        self.message = message if replay else None
        self.replay: list[bytes] | None = [] if replay and message is None else None  # DATA queued so far
        self.replay_bytes = 0
        if message is not None:
            self.collector = _Collector()
            self.out.chunks.append([message, 0])
            self.out.end = True

    def keep(self, data: bytes) -> None:
        """Request bytes that may have to be sent again (a retry); beyond REPLAY_LIMIT the call is not retried."""
        self.replay_bytes += len(data)
        if self.replay_bytes > REPLAY_LIMIT:
            self.replay = None
        else:
            self.replay.append(data)  # type: ignore[union-attr]

    def replayable(self) -> bool:
        """The request can be sent again whole (retries.py): kept, nothing of the answer relayed, and a streaming
        request only when it has ended or sent nothing yet."""
        if self.message is not None:
            return True
        down = self.call.down  # type: ignore[union-attr]
        return (self.replay is not None and not down.response_started  # type: ignore[union-attr]
                and (down.caller_ended or not self.replay))  # type: ignore[union-attr]

    def again(self, headers: Headers) -> H2Upstream:
        """A fresh leg for another try of the same request (`headers` with what changed: authority, timeout)."""
        call = self.call
        assert call is not None
        self.release()
        if self.message is not None:
            return H2Upstream(call, headers, self.message, replay=True)
        leg = H2Upstream(call, headers, replay=True)
        down = call.down
        assert isinstance(down, H2Downstream)  # a streamed request: an HTTP/2 caller's (a translated one is whole)
        leg.replay, leg.replay_bytes = self.replay, self.replay_bytes
        leg.out.chunks.extend([data, 0] for data in self.replay)  # type: ignore[union-attr]  # acknowledged already
        leg.out.end = down.caller_ended
        leg.source, down.source = down, leg
        return leg

    def open(self, endpoint: H2Endpoint) -> None:
        """Open the stream; request bytes that arrived before follow at once."""
        self.endpoint = endpoint
        out = self.out
        if out.end and not out.chunks:  # the whole request was the HEADERS frame
            self.sid = endpoint.open_stream(self.headers, self, end_stream=True)
            self.request_done = True
            out.end = False
            return
        self.sid = endpoint.open_stream(self.headers, self)
        if out:
            self.forward_request()

    def forward_request(self) -> None:
        ending = self.out.end
        if self.pump() and ending:
            self.request_done = True

    def cancel(self) -> None:
        """Give up the upstream stream (deadline, caller gone, the call failed)."""
        endpoint = self.endpoint
        if endpoint is not None and self.sid:
            endpoint.reset(self.sid, CANCEL)
            endpoint.detach(self.sid)
        self.sid = 0
        self.discard()

    def release(self) -> None:
        """The call is over: a request still being sent is cut (the response is complete)."""
        endpoint = self.endpoint
        if endpoint is not None and self.sid:
            if not self.request_done:
                endpoint.reset(self.sid, CANCEL)
            endpoint.detach(self.sid)
        self.sid = 0
        self.discard()
        self.source = None

    # --- the response (StreamHandler) ---------------------------------------------------------------------

    def on_headers(self, headers: Headers, end_stream: bool) -> None:
        call = self.call
        assert call is not None
        if self.collector is not None:
            self._collected_headers(headers, end_stream)
            return
        down = call.down
        assert isinstance(down, H2Downstream)
        if not down.response_started:
            if end_stream:  # Trailers-Only
                status = grpc.status_of(headers)
                if status is Status.UNAVAILABLE and call.retry is not None and \
                        call.unavailable_answer("the upstream answered UNAVAILABLE", _unprocessed(headers)):
                    return
                down.relay_trailers_only(headers)
                call.answered(Status.UNKNOWN if status is None else status)
                return
            down.relay_response_head(headers)
            return
        status = grpc.status_of(headers)
        status = Status.UNKNOWN if status is None else status
        if down.relay_trailers(headers):
            call.answered(status)
        else:
            call.answering(status)

    def on_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        call = self.call
        assert call is not None
        if self.collector is not None:
            if not self.collect_data(data, flow_length, "response from the provider"):
                return
            if end_stream:
                self.on_end()
            return
        down = call.down
        assert isinstance(down, H2Downstream)
        down.queue(data, flow_length, False)
        if end_stream:  # a response without trailers: the provider broke the protocol
            self.on_end()
            return
        down.pump()

    def on_end(self) -> None:
        # END_STREAM without trailers carrying grpc-status: not a valid gRPC response.
        self.call.fail(Status.INTERNAL, "the provider ended the response without grpc-status trailers")  # type: ignore[union-attr]

    def on_reset(self, error_code: int) -> None:
        self.sid = 0  # nothing to reset or detach any more
        self.call.upstream_failed(  # type: ignore[union-attr]
            grpc.status_of_reset(error_code), f"upstream reset the stream ({h2conn.error_name(error_code)})",
            unprocessed=error_code == h2conn.REFUSED_STREAM,  # refused before any processing (RFC 9113 8.7)
        )

    def on_writable(self) -> None:
        if self.out and self.endpoint is not None:
            self.forward_request()

    def on_connection_lost(self, reason: str) -> None:
        endpoint, sid = self.endpoint, self.sid
        self.endpoint = None  # the connection is gone: nothing to reset or detach
        self.sid = 0
        unprocessed = endpoint is not None and sid != 0 and endpoint.unprocessed(sid)
        call = self.call
        call.upstream_failed(Status.UNAVAILABLE, f"connection to {call.upstream_name} lost: {reason}",  # type: ignore[union-attr]
                             unprocessed=unprocessed)

    # --- a response collected for a Bolt caller -----------------------------------------------------------

    def _collected_headers(self, headers: Headers, end_stream: bool) -> None:
        call = self.call
        assert call is not None
        if self.response_head is None and not end_stream:
            status = b""
            for name, value in headers:
                if name == b":status":
                    status = value
                    break
            if status != b"200":
                self.cancel()
                self.sid = 0
                call.fail(Status.UNAVAILABLE if status in (b"502", b"503", b"504") else Status.INTERNAL,
                          f"the provider answered HTTP {status.decode(errors='replace')}")
                return
            self.response_head = headers
            return
        messages = [message.data for message in self.collector.messages]  # type: ignore[union-attr]
        if self.response_head is None:  # Trailers-Only
            reply = triple_call.reply_from_triple(headers, messages, None, call.serialize)
        else:
            reply = triple_call.reply_from_triple(self.response_head, messages, headers, call.serialize)
        call.reply(reply)


def _unprocessed(headers: Headers) -> bool:
    """A gateway's refusal made before it forwarded the call (link_headers.UNPROCESSED)."""
    return (UNPROCESSED, b"1") in headers
