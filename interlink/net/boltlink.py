"""SOFA Bolt connections, built for relaying and for callers that misbehave.

One `BoltEndpoint` is one connection. Its reader (`Connection.run`) decodes every complete frame of a read
batch, answers heartbeats itself (they are hop-by-hop, never forwarded), hands requests (server side) to
the owner's callback and matches responses (client side) to the calls waiting for them by request id; then
every connection written to is flushed (`FlushQueue`, shared with the HTTP/2 endpoints).

Client side, the endpoint owns request ids: `send_request` encodes a frame under a fresh id and keeps
`id -> BoltCall` until the response, the connection's end, or `forget` (a caller's deadline passed).
A response for an id nobody waits for any more (late, or for a oneway call) is an orphan and is dropped.

Limits: a frame larger than `max_frame_size` ends the connection as soon as its header says so; an
incomplete frame holds at most that much, and all connections' incomplete frames together at most the
process's `PartialFrameBudget` (beyond it, the connection whose frame has been incomplete longest is
closed); a caller whose answers pile up unread (`congested`) is not read from until they drain, so its
pending calls stay bounded, and the write timeout ends it if it never reads again.
"""

from __future__ import annotations

from typing import Callable, Protocol

import structlog
import trio

from interlink.model import Status
from interlink.net.connection import OUTBOUND, Connection, ConnectionPolicy, FlushQueue
from interlink.net.transport import Transport
from interlink.wire import bolt, bolt_call
from interlink.net import trips

log = structlog.get_logger("interlink.net.bolt")

MAX_REQUEST_ID = 0x7FFFFFFF


class BoltCall(Protocol):
    """What a client-side endpoint tells the owner of one request it sent."""

    def on_response(self, frame: bolt.BoltFrame) -> None: ...
    def on_connection_lost(self, reason: str) -> None: ...


class InboundCall(Protocol):
    """What a server-side endpoint tells the owner of one request it took: the caller is gone (its
    connection ended, or its gateway cancelled the call)."""

    def caller_gone(self, reason: str) -> None: ...


RequestCallback = Callable[["BoltEndpoint", bolt.BoltFrame], None]
RefusalCallback = Callable[["BoltEndpoint", int, Status, str], None]  # (endpoint, request id, status, reason)


class PartialFrameBudget:
    """Bytes of incomplete frames held by all connections of a process, bounded: when a connection's
    holding would pass the limit, the connection whose frame has been incomplete longest is closed first
    (a legit frame arrives quickly; one that trickles in or stops is what holds memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._held: dict[BoltEndpoint, int] = {}

    def hold(self, endpoint: BoltEndpoint, size: int) -> None:
        before = self._held.get(endpoint, 0)
        if size == before:
            return
        self.total += size - before
        if size:
            self._held[endpoint] = size
        else:
            del self._held[endpoint]
        while self.total > self.limit and self._held:
            stalest = min(self._held, key=lambda held: held.partial_since or held.last_receive)
            log.warning("bolt.partial_frames_over_budget", endpoint=stalest.name, remote=stalest.remote,
                        held=self._held[stalest], total=self.total, limit=self.limit)
            trips.trip(trips.BOLT_PARTIAL_FRAME_BUDGET)
            self.release(stalest)
            stalest.close(f"incomplete frames of all connections exceed {self.limit} bytes; this one waited longest")

    def release(self, endpoint: BoltEndpoint) -> None:
        self.total -= self._held.pop(endpoint, 0)


class BoltEndpoint(Connection):
    """One Bolt connection. `run()` is its reader; the owner runs it in a nursery."""

    __slots__ = (
        "streams", "calls", "inbound", "link", "max_pending", "_on_request", "_on_refused", "_decoder", "_partial_budget",
        "_out", "_next_id", "_readable", "writes", "_handed"
    )

    probe_name = "heartbeat"

    def __init__(
        self,
        transport: Transport,
        *,
        flush_queue: FlushQueue,
        on_request: RequestCallback | None = None,
        on_refused: RefusalCallback | None = None,
        max_pending: int = 1024,
        max_frame_size: int = bolt.DEFAULT_MAX_FRAME_SIZE,
        partial_budget: PartialFrameBudget | None = None,
        name: str = "",
        policy: ConnectionPolicy = OUTBOUND,
        link: bool = False,
    ) -> None:
        super().__init__(transport, flush_queue, name, policy)
        self.streams: dict[int, BoltCall] = {}  # request id -> call (client side); the name matches H2Endpoint
        self.calls = 0  # server side: requests taken and not answered yet (kept by the owner)
        self.inbound: dict[int, InboundCall] = {}  # server side: request id -> the call serving it
        self.link = link  # a peer link between two gateways: cancels go both ways (bolt_call.cancel_frame)
        self.max_pending = max_pending
        self._on_request = on_request
        self._on_refused = on_refused
        self._decoder = bolt.BoltDecoder(max_frame_size=max_frame_size)
        self._partial_budget = partial_budget
        self._out: list[bytes] = []
        self._next_id = 0
        self._readable = trio.Event()
        self.writes = 0  # frames queued so far; those after `_handed` never reached the transport (unwritten)
        self._handed = 0

    # --- state -------------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self.calls + len(self.streams)

    @property
    def inbound_calls(self) -> tuple[int, int]:
        return self.calls, self.max_pending

    @property
    def slots(self) -> int:
        return self.max_pending

    def has_capacity(self) -> bool:
        # usable and not congested, spelled out: asked for every call a pool routes
        return (not self.closed and not self.draining and len(self.streams) < self.max_pending
                and self.transport.buffered < self.policy.output_limit)

    def call_started(self, request_id: int, call: InboundCall) -> None:
        self.calls += 1
        self.inbound[request_id] = call

    def call_ended(self, request_id: int, call: InboundCall) -> None:
        self.calls -= 1
        if self.inbound.get(request_id) is call:
            del self.inbound[request_id]
        if not self.calls:
            self.idle_since = trio.current_time()
            if self.draining:
                self._close_if_done()

    def retire(self, reason: str) -> None:
        """Take no new calls (a pool stops choosing this connection) and close once the open ones end."""
        if self.closed:
            return
        self.draining = True
        self.close_reason = self.close_reason or reason
        self._close_if_done()

    def _close_if_done(self) -> None:
        if not self.streams and not self.calls and not self.closed:
            self.close(self.close_reason or "drained")

    # --- writing -------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writes += 1
            self._out.append(data)
            self._flush_queue.add(self)  # sent once this read batch (or timer) is done

    def send_request(self, frame: bolt.BoltFrame, call: BoltCall | None) -> int:
        """Send a request under a fresh id of this connection (encoded once, with that id); `call` waits for
        the response (None for a oneway request: nothing waits, whatever comes back is an orphan)."""
        request_id = self._fresh_id()
        self.write(bolt.encode(frame, request_id))
        if call is not None:
            self.streams[request_id] = call
        return request_id

    def _fresh_id(self) -> int:
        self._next_id = self._next_id + 1 if self._next_id < MAX_REQUEST_ID else 1
        return self._next_id

    def forget(self, request_id: int) -> None:
        """The caller gave up (deadline, its connection ended): a late response will be dropped, and on a
        peer link the other gateway is told, so that it drops the call too."""
        if self.streams.pop(request_id, None) is not None and self.link and not self.closed:
            self.write(bolt_call.cancel_frame(request_id))
        if not self.streams:
            self.idle_since = trio.current_time()
            if self.draining:
                self._close_if_done()

    def unwritten(self, mark: int) -> bool:
        """The frame queued as write number `mark` never reached the transport (its connection was lost first):
        the remote side cannot have processed it."""
        return mark > self._handed

    def _hand_all(self) -> None:
        self._handed = self.writes

    def _pending_output(self) -> bytes:
        self._handed = self.writes
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return data

    # --- reading -------------------------------------------------------------------------------------------

    async def _before_read(self) -> None:
        """A caller that does not read its answers is not read from either, until they drain (or the
        write timeout closes the connection)."""
        while self.congested and not self.closed and self._on_request is not None:
            self._readable = trio.Event()
            await self._readable.wait()

    def _resume(self) -> None:
        self._readable.set()

    def _received(self, data: bytes) -> None:
        decoder = self._decoder
        try:
            frames = decoder.feed(data)
        except bolt.BoltProtocolError as exc:
            # Answer what was complete before the bad bytes; the rest cannot be framed: close.
            for frame in exc.frames or ():
                self._dispatch(frame)
            log.warning("bolt.protocol_error", endpoint=self.name, remote=self.remote, error=str(exc))
            trips.trip(trips.BOLT_PROTOCOL_ERROR)
            self.close(f"Bolt protocol error from the remote side: {exc}")
            return
        if frames and not self.preface_done:
            self.preface_done = True
        if decoder.pending:
            if self.partial_since is None:
                self.partial_since = self.last_receive
        else:
            self.partial_since = None
        if self._partial_budget is not None:
            self._partial_budget.hold(self, decoder.buffered)
            if self.closed:  # this connection was the one over the budget: dispatch nothing more
                return
        if self.link and self._on_request is not None:
            frames = self._apply_cancels(frames)
        for frame in frames:
            self._dispatch(frame)

    def _apply_cancels(self, frames: list[bolt.BoltFrame]) -> list[bolt.BoltFrame]:
        """Cancels from the peer gateway: a call cancelled in the same read is never dispatched; one already
        dispatched learns that its caller is gone."""
        cancels: dict[int, int] = {}  # request id -> where its cancel is in this batch
        for index, frame in enumerate(frames):
            if frame.type == bolt.TYPE_ONEWAY:
                request_id = bolt_call.cancelled_id(frame)
                if request_id is not None:
                    cancels[request_id] = index
        if not cancels:
            return frames
        positions = set(cancels.values())
        kept = []
        for index, frame in enumerate(frames):
            if index in positions:
                continue
            position = cancels.get(frame.request_id)
            if position is not None and position > index and frame.is_request:
                del cancels[frame.request_id]  # opened and cancelled in one read: never dispatched
                continue
            kept.append(frame)
        for request_id in cancels:
            call = self.inbound.get(request_id)
            if call is not None:
                call.caller_gone("the calling gateway cancelled it (its caller gave up)")
        return kept

    def _dispatch(self, frame: bolt.BoltFrame) -> None:
        is_response = frame.type == bolt.TYPE_RESPONSE  # (frame.is_response, without a property call per frame)
        if frame.cmdcode == bolt.CMD_HEARTBEAT:
            if not is_response:
                self.write(bolt.encode(bolt.heartbeat_ack(frame)))
            else:
                self._probe_answered()
            return
        try:
            if is_response:
                call = self.streams.pop(frame.request_id, None)
                if call is None:
                    # Late (the caller gave up) or an answer to a oneway call (sofa-rpc-node answers those).
                    log.debug("bolt.orphan_response", endpoint=self.name, request_id=frame.request_id)
                    return
                call.on_response(frame)
                if not self.streams:
                    self.idle_since = trio.current_time()  # (a pool's idle timeout counts from here)
                    if self.draining:
                        self._close_if_done()
            elif self._on_request is not None:
                self._admit(frame)
        except Exception:  # a bug in one call must not take the connection (and every other call) down
            log.exception("bolt.handler_failed", endpoint=self.name, request_id=frame.request_id)

    def _admit(self, frame: bolt.BoltFrame) -> None:
        """A request is dispatched only if it is an RPC request and the connection admits a new call;
        otherwise it gets an error response of its own (a oneway request: nothing) and the owner is told."""
        if frame.cmdcode != bolt.CMD_RPC_REQUEST:  # (a response never gets here)
            log.debug("bolt.unexpected_frame", endpoint=self.name, cmdcode=frame.cmdcode, type=frame.type)
            return
        refusal = self.admission_refusal()
        if refusal is None:
            self._on_request(self, frame)  # type: ignore[misc]
            return
        status, reason = refusal
        if status is Status.RESOURCE_EXHAUSTED:
            trips.trip(trips.BOLT_PENDING_CALLS)
        if not frame.is_oneway:
            self.write(bolt.encode(bolt_call.error_frame(frame, status, f"interlink {status.name}: {reason}",
                                                         unprocessed=status is Status.UNAVAILABLE)))
        if self._on_refused is not None:
            self._on_refused(self, frame.request_id, status, reason)

    # --- liveness and ending ------------------------------------------------------------------------------

    def _send_probe(self) -> None:
        self.write(bolt.encode(bolt.heartbeat(self._fresh_id())))

    def goaway(self) -> None:
        """Bolt has no GOAWAY: stop taking new requests (they get an error) and let the open calls finish."""
        self.draining = True

    def _fail_open_calls(self, reason: str) -> None:
        self._readable.set()
        self._decoder.discard()
        if self._partial_budget is not None:
            self._partial_budget.release(self)
        calls, self.streams = self.streams, {}
        inbound, self.inbound = self.inbound, {}
        for call in calls.values():
            try:
                call.on_connection_lost(reason)
            except Exception:
                log.exception("bolt.handler_failed", endpoint=self.name)
        for caller in inbound.values():
            try:
                caller.caller_gone(f"the caller's connection ended: {reason}")
            except Exception:
                log.exception("bolt.handler_failed", endpoint=self.name)
