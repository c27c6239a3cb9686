"""One proxied gRPC call over HTTP/2: a caller's stream bound to an upstream stream.

Headers are rewritten once when the call is admitted; after that DATA and trailers pass through untouched
(the gateway never re-frames gRPC messages on the Triple→Triple path). Flow control is end to end: bytes
received from one side are acknowledged only when the other side has taken them, so a slow receiver slows
its sender and the gateway buffers at most one window per stream.

Every call ends exactly once (`_finish`), with the status the caller saw, and gets one access log line.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
import h2.errors
import structlog
import trio

from interlink.gateway.forwarding import log_call
from interlink.model import Status
from interlink.net.connection import FlushQueue
from interlink.net.h2link import H2Endpoint, Headers
from interlink.net.pool import PoolGroup
from interlink.wire import grpc

log = structlog.get_logger("interlink.gateway")

_RESET_STATUS = {
    h2.errors.ErrorCodes.REFUSED_STREAM: Status.UNAVAILABLE,
    h2.errors.ErrorCodes.CANCEL: Status.CANCELLED,
    h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: Status.RESOURCE_EXHAUSTED,
    h2.errors.ErrorCodes.INADEQUATE_SECURITY: Status.PERMISSION_DENIED,
}


def status_for_reset(error_code: int) -> Status:
    return _RESET_STATUS.get(error_code, Status.INTERNAL)  # type: ignore[call-overload]


class _Pending:
    """Bytes (and maybe END_STREAM, then trailers) waiting for the receiver's flow-control window."""

    __slots__ = ("chunks", "end", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[list] = deque()  # [data, flow_length_not_yet_acknowledged]
        self.end = False
        self.trailers: Headers | None = None

    def __bool__(self) -> bool:
        return bool(self.chunks) or self.end or self.trailers is not None


def _pump(pending: _Pending, source: H2Endpoint, source_sid: int, sink: H2Endpoint, sink_sid: int) -> bool:
    """Move what the sink's window allows; acknowledge it to the source. True when nothing is left."""
    chunks = pending.chunks
    while chunks:
        entry = chunks[0]
        data, flow = entry
        last = len(chunks) == 1
        sent = sink.send_data(sink_sid, data, end_stream=last and pending.end and pending.trailers is None)
        if sent < len(data):
            if sent:
                entry[0] = data[sent:]
                entry[1] = flow - sent
                source.acknowledge(source_sid, sent)
            return False
        chunks.popleft()
        source.acknowledge(source_sid, flow)
        if last and pending.end and pending.trailers is None:
            pending.end = False
            return True
    if pending.trailers is not None:
        sink.send_headers(sink_sid, pending.trailers, end_stream=True)
        pending.trailers = None
        pending.end = False
    elif pending.end:
        sink.send_data(sink_sid, b"", end_stream=True)
        pending.end = False
    return True


class DeadlineTimers:
    """All call deadlines of a gateway in one heap, served by one task (no timer task per call).

    A call that ends before its deadline clears its entry (`cancel`); cleared entries are compacted away
    once they are the majority, so the heap holds about as many entries as there are calls in flight.
    """

    def __init__(self, flush_queue: FlushQueue) -> None:
        self._flush_queue = flush_queue
        self._heap: list[list] = []  # [deadline, tie-breaker, relay or None]
        self._counter = itertools.count()
        self._cancelled = 0
        self._scope: trio.CancelScope | None = None

    def add(self, deadline: float, relay: Relay) -> list:
        entry = [deadline, next(self._counter), relay]
        heapq.heappush(self._heap, entry)
        if self._scope is not None and deadline < self._scope.deadline:
            self._scope.deadline = deadline
        return entry

    def cancel(self, entry: list) -> None:
        if entry[2] is not None:
            entry[2] = None
            self._cancelled += 1
            if self._cancelled > 512 and self._cancelled * 2 > len(self._heap):
                self._heap = [live for live in self._heap if live[2] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    async def run(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._scope = scope
                scope.deadline = self._heap[0][0] if self._heap else math.inf
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, relay = heapq.heappop(self._heap)
                if relay is None:
                    self._cancelled -= 1
                    continue
                try:
                    relay.deadline_passed()
                except Exception:  # one broken call must not stop every other call's deadline
                    log.exception("call.deadline_failed", **relay.log_fields)
            self._flush_queue.flush()


class Relay:
    """The downstream half is this object (it is the caller stream's handler); the upstream half is a small
    `_UpstreamSide` that forwards to it."""

    __slots__ = (
        "down", "down_sid", "up", "up_sid", "log_fields", "started", "deadline", "upstream_group", "_to_up", "_to_down",
        "_response_started", "_request_done", "_caller_ended", "_done", "_status", "_timers", "_timer_entry",
    )

    def __init__(
        self,
        down: H2Endpoint,
        down_sid: int,
        log_fields: dict[str, object],
        timers: DeadlineTimers,
        deadline: float,
        caller_ended: bool,
    ) -> None:
        self.down = down
        self.down_sid = down_sid
        self.up: H2Endpoint | None = None
        self.up_sid = 0
        self.log_fields = log_fields
        self.started = time.perf_counter()
        self.deadline = deadline
        self.upstream_group: PoolGroup | None = None  # whose fair share this call holds
        self._to_up = _Pending()
        self._to_down = _Pending()
        self._response_started = False
        self._request_done = False  # END_STREAM forwarded upstream
        self._caller_ended = caller_ended  # END_STREAM received from the caller
        self._done = False
        self._status: Status | None = None
        self._timers = timers
        self._timer_entry = timers.add(deadline, self) if deadline != math.inf else None
        down.attach(down_sid, self)

    @property
    def done(self) -> bool:
        return self._done

    def hand_over(self) -> None:
        """Another handler takes the caller's stream (a translated call): this relay ends silently."""
        self._done = True
        if self._timer_entry is not None:
            self._timers.cancel(self._timer_entry)
            self._timer_entry = None

    def connect(self, up: H2Endpoint, headers: Headers, end_stream: bool) -> None:
        """Open the upstream stream. Request bytes that arrived before (slow path) follow at once."""
        self.up = up
        pending = self._to_up
        if end_stream and not pending.chunks:  # the whole request was the HEADERS frame
            self.up_sid = up.open_stream(headers, _UpstreamSide(self), end_stream=True)
            self._request_done = True
            return
        pending.end = pending.end or end_stream
        self.up_sid = up.open_stream(headers, _UpstreamSide(self))
        if pending:
            self._forward_request()

    # --- caller → upstream -----------------------------------------------------------------------------

    def on_headers(self, headers: Headers, end_stream: bool) -> None:
        # Trailers from a caller are not part of gRPC; treat them as the end of the request.
        self.on_end()

    def on_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        pending = self._to_up
        pending.chunks.append([data, flow_length])
        if end_stream:
            pending.end = True
            self._caller_ended = True
        if self.up is not None:
            self._forward_request()

    def on_end(self) -> None:
        self._to_up.end = True
        self._caller_ended = True
        if self.up is not None:
            self._forward_request()

    def _forward_request(self) -> None:
        ending = self._to_up.end
        if _pump(self._to_up, self.down, self.down_sid, self.up, self.up_sid) and ending:  # type: ignore[arg-type]
            self._request_done = True

    def on_reset(self, error_code: int) -> None:
        self._abandon_upstream()
        name = getattr(error_code, "name", error_code)
        self._finish(Status.CANCELLED, f"the caller reset the stream ({name})", notify_caller=False)

    def on_connection_lost(self, reason: str) -> None:
        self._abandon_upstream()
        self._finish(Status.CANCELLED, f"the caller's connection ended: {reason}", notify_caller=False)

    def on_writable(self) -> None:
        if self._to_down and self.up is not None:
            if _pump(self._to_down, self.up, self.up_sid, self.down, self.down_sid) and self._status is not None:
                self._complete()

    # --- upstream → caller -----------------------------------------------------------------------------

    def upstream_headers(self, headers: Headers, end_stream: bool) -> None:
        if not self._response_started:
            self._response_started = True
            if end_stream:  # Trailers-Only
                self.down.send_headers(self.down_sid, headers, end_stream=True)
                self._status = _grpc_status(headers)
                self._complete()
                return
            self.down.send_headers(self.down_sid, headers)
            return
        self._status = _grpc_status(headers)
        self._to_down.trailers = headers
        self._to_down.end = True
        if _pump(self._to_down, self.up, self.up_sid, self.down, self.down_sid):  # type: ignore[arg-type]
            self._complete()

    def upstream_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        self._to_down.chunks.append([data, flow_length])
        if end_stream:  # a response without trailers: the provider broke the protocol
            self.upstream_end()
            return
        _pump(self._to_down, self.up, self.up_sid, self.down, self.down_sid)  # type: ignore[arg-type]

    def upstream_end(self) -> None:
        # END_STREAM without trailers carrying grpc-status: not a valid gRPC response.
        self._fail(Status.INTERNAL, "the provider ended the response without grpc-status trailers")

    def upstream_reset(self, error_code: int) -> None:
        status = status_for_reset(error_code)
        name = getattr(error_code, "name", str(error_code))
        self._fail(status, f"upstream reset the stream ({name})", reset_upstream=False)

    def upstream_writable(self) -> None:
        if self._to_up and self.up is not None:
            self._forward_request()

    def upstream_lost(self, reason: str) -> None:
        where = self.log_fields.get("upstream", "upstream")
        self._fail(Status.UNAVAILABLE, f"connection to {where} lost: {reason}", reset_upstream=False)

    # --- ending ----------------------------------------------------------------------------------------

    def deadline_passed(self) -> None:
        if not self._done:
            self._fail(Status.DEADLINE_EXCEEDED, "deadline exceeded at the gateway")

    def fail(self, status: Status, message: str, http_status: bytes = b"200") -> None:
        """End the call with a gateway-made error (before or after the upstream was chosen)."""
        self._fail(status, message, http_status=http_status)

    def _fail(self, status: Status, message: str, reset_upstream: bool = True, http_status: bytes = b"200") -> None:
        if self._done:
            return
        if reset_upstream:
            self._abandon_upstream()
        elif self.up is not None:
            self.up.detach(self.up_sid)
        self._discard(self._to_down, self.up, self.up_sid)
        if self._response_started:
            self.down.send_headers(self.down_sid, grpc.status_trailers(status, message), end_stream=True)
        else:
            self._response_started = True
            self.down.send_headers(self.down_sid, grpc.trailers_only(status, message, http_status), end_stream=True)
        self._finish(status, message)

    def _abandon_upstream(self) -> None:
        if self.up is not None and self.up_sid:
            self.up.reset(self.up_sid, h2.errors.ErrorCodes.CANCEL)
        self._discard(self._to_down, self.up, self.up_sid)

    def _discard(self, pending: _Pending, source: H2Endpoint | None, source_sid: int) -> None:
        """Drop queued bytes, still returning their connection-level window to the source."""
        if source is not None:
            for _, flow in pending.chunks:
                source.acknowledge(source_sid, flow)
        pending.chunks.clear()
        pending.end = False
        pending.trailers = None

    def _complete(self) -> None:
        """The response went out whole."""
        if self.up is not None:
            if not self._request_done:
                self.up.reset(self.up_sid, h2.errors.ErrorCodes.CANCEL)
            self.up.detach(self.up_sid)
        self._finish(self._status if self._status is not None else Status.UNKNOWN, "")

    def _finish(self, status: Status, message: str, notify_caller: bool = True) -> None:
        if self._done:
            return
        self._done = True
        self._status = status
        if self.upstream_group is not None:
            self.upstream_group.release(self.down)
            self.upstream_group = None
        self.down.detach(self.down_sid)
        if not self._caller_ended and notify_caller and not self.down.closed:
            # The response is complete; tell the caller to stop sending (RFC 9113 8.1).
            self.down.reset(self.down_sid, h2.errors.ErrorCodes.NO_ERROR)
        self._discard(self._to_up, self.down, self.down_sid)
        log_call(status.name, self.started, message, self.log_fields)
        if self._timer_entry is not None:
            self._timers.cancel(self._timer_entry)
            self._timer_entry = None


class _UpstreamSide:
    __slots__ = ("relay",)

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def on_headers(self, headers: Headers, end_stream: bool) -> None:
        self.relay.upstream_headers(headers, end_stream)

    def on_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        self.relay.upstream_data(data, flow_length, end_stream)

    def on_end(self) -> None:
        self.relay.upstream_end()

    def on_reset(self, error_code: int) -> None:
        self.relay.upstream_reset(error_code)

    def on_writable(self) -> None:
        self.relay.upstream_writable()

    def on_connection_lost(self, reason: str) -> None:
        self.relay.upstream_lost(reason)


def _grpc_status(headers: Headers) -> Status:
    for name, value in headers:
        if name == b"grpc-status":
            try:
                return Status(int(value))
            except ValueError:
                return Status.UNKNOWN
    return Status.UNKNOWN
