"""The Bolt legs of a call: a caller's request (`BoltDownstream`, one request id of a caller's connection)
and a request the gateway sends to a peer gateway or a provider (`BoltUpstream`). A leg adapts one Bolt
request/response to the call (gateway/call.py); it knows Bolt, never routes or ACLs.

Between two Bolt legs the body is never deserialized: the request travels as Bolt V1 (what SOFARPC speaks,
and what a Java provider pins per connection) with the gateway's link keys replaced and its timeout
reduced, and the response goes back to the caller in the protocol version, switch and CRC setting of its
own request. When the other side speaks Triple, the call translates through `Call`/`Reply`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from interlink.model import Call, Refusal, Reply, Status
from interlink.net.boltlink import BoltEndpoint
from interlink.routes import ExportRoute
from interlink.wire import bolt, bolt_call, link_headers, tracecontext
from interlink.wire.cache import BoundedCache

if TYPE_CHECKING:
    from interlink.gateway.call import GatewayCall

RESPONSE_ERROR = b"sofa_head_response_error"  # Java SOFARPC marks error responses with it


class BoltDownstream:
    """The caller's request: registered with its connection (which tells it when the caller is gone) until
    the call ends."""

    __slots__ = ("call", "endpoint", "request", "head")

    protocol = "bolt"

    def __init__(self, endpoint: BoltEndpoint, request: bolt.BoltFrame) -> None:
        self.call: GatewayCall | None = None
        self.endpoint = endpoint
        self.request = request
        self.head: bolt_call.BoltRequestHead | None = None

    def attach(self, call: GatewayCall) -> None:
        self.call = call
        self.endpoint.call_started(self.request.request_id, self)

    def read_head(self, from_link: bool) -> bolt_call.BoltRequestHead:
        """Read the head, once (Refusal when the header map or SofaRequest head cannot be read)."""
        try:
            head = bolt_call.read_request_head(self.request, from_link=from_link)
        except bolt_call.UNREADABLE as exc:
            raise Refusal(Status.INTERNAL, f"malformed request: {exc}") from None
        if head.service is None:
            raise Refusal(Status.UNIMPLEMENTED, "the request has no service header (interface:version)")
        self.head = head
        return head

    @property
    def oneway(self) -> bool:
        return self.request.is_oneway

    def to_call(self, route: ExportRoute, deadline: float) -> Call:
        """The request as a Call (a call translated to Triple); Refusal when its body cannot be read."""
        try:
            return bolt_call.call_from_bolt(self.request, route.service, deadline, self.head)
        except bolt_call.UNTRANSLATABLE as exc:
            raise Refusal(Status.INTERNAL, f"cannot translate the request to Triple: {exc}") from None

    def forwarded(self) -> None:
        """The request went upstream: keep only what answering needs (ids, versions, codec), not its body."""
        request = self.request  # this call's own decoded frame: nobody else holds it
        request.content = request.header = b""
        request.raw = None

    # --- InboundCall ----------------------------------------------------------------------------------------

    def caller_gone(self, reason: str) -> None:
        """The caller's connection ended, or its gateway cancelled the call."""
        self.call.caller_gone(reason)  # type: ignore[union-attr]

    # --- the answer -------------------------------------------------------------------------------------

    def relay_response(self, response: bolt.BoltFrame) -> str:
        """An upstream Bolt response, under the caller's request id; its status, for the access line."""
        try:
            status = response_status(response)
        except bolt.BoltProtocolError:
            status = "MALFORMED_RESPONSE_HEADER"
        self.endpoint.write(_answer_as_request(response, self.request))
        return status

    def answer(self, reply: Reply) -> tuple[str, str]:
        """A translated call's answer; its status and message, for the access line."""
        try:
            frame = bolt_call.response_frame(reply, self.request)
        except Refusal as refusal:
            self.answer_error(refusal)
            return refusal.status.name, refusal.message
        except bolt_call.UNTRANSLATABLE as exc:
            untranslatable = Refusal(Status.INTERNAL, f"cannot translate the provider's response: {exc}")
            self.answer_error(untranslatable)
            return untranslatable.status.name, untranslatable.message
        self.endpoint.write(bolt.encode(frame))
        return ("APPLICATION_ERROR" if reply.exception else reply.status.name), reply.message

    def answer_error(self, refusal: Refusal, unprocessed: bool = False) -> None:
        """A gateway-made error, as SOFARPC clients understand it best (wire/bolt_call.error_frame); a oneway
        call gets nothing. `unprocessed`: refused before any provider saw it (link_headers.UNPROCESSED)."""
        if not self.request.is_oneway:
            frame = bolt_call.error_frame(self.request, refusal.status, f"interlink {refusal.status.name}: {refusal.message}",
                                          unprocessed=unprocessed)
            self.endpoint.write(bolt.encode(frame))

    def release(self, caller_alive: bool) -> None:
        self.endpoint.call_ended(self.request.request_id, self)


class BoltUpstream:
    """A request the gateway sends under a fresh id of an upstream connection; the response is relayed to a
    Bolt caller, or turned into a `Reply` for a Triple caller."""

    __slots__ = ("call", "frame", "translated", "endpoint", "request_id", "mark")

    protocol = "bolt"

    def __init__(self, call: GatewayCall, frame: bolt.BoltFrame, translated: bool) -> None:
        self.call: GatewayCall | None = call
        self.frame = frame
        self.translated = translated
        self.endpoint: BoltEndpoint | None = None
        self.request_id = 0
        self.mark = 0  # the endpoint's write number of the request (BoltEndpoint.unwritten)

    def open(self, endpoint: BoltEndpoint) -> None:
        frame = self.frame
        self.endpoint = endpoint
        oneway = frame.is_oneway
        self.request_id = endpoint.send_request(frame, None if oneway else self)
        self.mark = endpoint.writes
        if self.call.retry is None:  # type: ignore[union-attr]  # kept only for another try (retries.py)
            self.frame = None  # type: ignore[assignment]
        if oneway:  # nothing comes back, nothing is kept for it
            self.request_id = 0

    def replayable(self) -> bool:
        return self.frame is not None

    def again(self, timeout_ms: int) -> BoltUpstream:
        """A fresh leg for another try of the same request, with what is left of its timeout."""
        self.cancel()
        assert self.call is not None
        return BoltUpstream(self.call, _with_timeout(self.frame, timeout_ms), self.translated)

    def cancel(self) -> None:
        """Give up the request: a late response is dropped, and on a peer link the other gateway is told."""
        if self.endpoint is not None and self.request_id:
            self.endpoint.forget(self.request_id)
            self.request_id = 0

    def release(self) -> None:
        self.request_id = 0  # answered, or cancelled already: the endpoint holds nothing for it

    # --- BoltCall -------------------------------------------------------------------------------------------

    def on_response(self, frame: bolt.BoltFrame) -> None:
        self.request_id = 0
        call = self.call
        assert call is not None  # (unlinked only when the call ended, after the request was given up)
        if self.translated:
            try:
                reply = bolt_call.reply_from_bolt(frame, call.serialize)
            except Refusal as refusal:
                reply = Reply(refusal.status, refusal.message)
            except bolt_call.UNTRANSLATABLE as exc:
                reply = Reply(Status.INTERNAL, f"cannot translate the provider's response: {exc}")
            call.reply(reply)
            return
        down = call.down
        assert isinstance(down, BoltDownstream)
        if call.retry is not None and frame.header:
            try:
                status, unprocessed = bolt.header_values(frame.header, _RETRY_KEYS)
            except bolt.BoltProtocolError:
                status = unprocessed = None  # (relay_response reports it)
            if status == b"UNAVAILABLE" and call.unavailable_answer("the upstream answered UNAVAILABLE",
                                                                    unprocessed == b"1"):
                return
        call.answered(down.relay_response(frame))

    def on_connection_lost(self, reason: str) -> None:
        self.request_id = 0
        endpoint = self.endpoint
        unprocessed = endpoint is not None and endpoint.unwritten(self.mark)
        call = self.call
        assert call is not None
        call.upstream_failed(Status.UNAVAILABLE, f"connection to {call.upstream_name} lost: {reason}",
                             unprocessed=unprocessed)


_RESPONSE_KEYS = bolt.HeaderKeys((link_headers.STATUS, RESPONSE_ERROR))
_RETRY_KEYS = bolt.HeaderKeys((link_headers.STATUS, link_headers.UNPROCESSED))  # a gateway's refusal, and whether
#                                                                                 it came before forwarding
_SUCCESS = bolt.ResponseStatus.SUCCESS


def response_status(response: bolt.BoltFrame) -> str:
    """For the access log, without reading the body: a status a gateway stamped, else the Bolt status, else
    Java's error mark in the header."""
    stamped, error = bolt.header_values(response.header, _RESPONSE_KEYS) if response.header else (None, None)
    if stamped:
        return stamped.decode("ascii", "replace")
    if response.status != _SUCCESS:
        return bolt.ResponseStatus(response.status).name
    if error == b"true":
        return "APPLICATION_ERROR"
    return "OK"


# The upstream map per (caller's map, our stamps): callers of a service send the same map and the stamps (app,
# method, site) repeat, so most restamps are one lookup (a map with per-call values, such as Java's trace ids,
# is rewritten every time).
_RESTAMPED: BoundedCache[tuple, bytes] = BoundedCache(max_entries=1024, max_bytes=4 << 20, max_item=8192)


def upstream_frame(
    request: bolt.BoltFrame, head: bolt_call.BoltRequestHead, stamps: dict[bytes, bytes | None], timeout_ms: int
) -> bolt.BoltFrame:
    """The request as it travels upstream: V1, link keys replaced by ours (every other x-interlink-* key
    dropped), timeout reduced."""
    # keys under our prefix that we do not set ourselves (a caller's, or unknown) are dropped; the map was
    # scanned once already, when its head was read
    header, spans = request.header, head.spans
    traceparent = stamps.pop(tracecontext.TRACEPARENT, None)  # different in every call: not in what is remembered
    if traceparent is not None and head.traceparent is not None:  # the map has one (of a caller, or a gateway)
        last = spans[-1]
        if last[2] == tracecontext.TRACEPARENT and last[1] == len(header):  # a gateway's, last: ours goes there
            header, spans = header[: last[0]], spans[:-1]
        else:  # a caller's, among the others (its entry is among the spans: bolt_call reads it with its place)
            stamps[tracecontext.TRACEPARENT], traceparent = traceparent, None  # replaced in place, not remembered
            header = bolt.header_rewrite(header, spans, stamps, link_headers.PREFIX)
            return _restamped(request, header, timeout_ms)
    key = (header, *stamps.items())
    rewritten = _RESTAMPED.get(key)
    if rewritten is None:
        rewritten = bolt.header_rewrite(header, spans, stamps, link_headers.PREFIX)
        _RESTAMPED.put(key, rewritten, len(header) + len(rewritten) + 128)
    if traceparent is not None:
        rewritten += bolt.header_entry(tracecontext.TRACEPARENT, traceparent)
    return _restamped(request, rewritten, timeout_ms)


def _restamped(request: bolt.BoltFrame, header: bytes, timeout_ms: int) -> bolt.BoltFrame:
    return bolt.BoltFrame(  # positional: a third of copy.copy's cost, on every forwarded Bolt call
        bolt.PROTO_V1, request.type, request.cmdcode, request.request_id, request.codec, 0, request.ver2, 0,
        timeout_ms, request.status, request.class_name, header, request.content, False, None,
    )


def _with_timeout(frame: bolt.BoltFrame, timeout_ms: int) -> bolt.BoltFrame:
    return _restamped(frame, frame.header, timeout_ms)


def _answer_as_request(response: bolt.BoltFrame, request: bolt.BoltFrame) -> bytes:
    """The upstream response, under the caller's request id and in the caller's protocol version."""
    if request.proto == response.proto == bolt.PROTO_V1 and response.raw is not None:
        return bolt.with_request_id(response, request.request_id)
    answer = copy.copy(response)
    answer.proto, answer.ver1, answer.switch = request.proto, request.ver1, request.switch
    answer.has_crc = request.has_crc
    answer.request_id = request.request_id
    answer.raw = None
    return bolt.encode(answer)
