"""HTTP/2 connections for relaying, driven by our own sans-I/O state machine (interlink.wire.h2conn).

One `H2Endpoint` is one connection, client or server side. Its reader (`Connection.run`) passes each read
batch to its `H2Connection`, which parses the frames and returns events; the endpoint hands each stream's
events to that stream's `StreamHandler` synchronously; handlers write to other endpoints without awaiting,
and every endpoint written to is flushed once after the batch (`FlushQueue`).

Protections (limits come from the site file's `limits:` via `H2Settings`):
- Rapid reset: a stream the client opens and resets in the same batch is never dispatched; resets that
  arrive before we answered, within `premature_reset_window`, are premature; Envoy's rule cuts the
  connection (GOAWAY ENHANCE_YOUR_CALM) when half of `premature_reset_streams` were premature early on,
  or more than half of all streams later.
- Control-frame floods, oversized frames and header blocks: refused by the state machine as they arrive
  (its flood budget; the header block is cut before HPACK sees it); GOAWAY ENHANCE_YOUR_CALM.
- Flow control is end to end per stream, but the *connection* window is returned as soon as bytes arrive
  (they are held within their stream's window): one stalled stream can never starve the others.
- Output: a stream is given at most what the remote's window and this connection's output limit allow; a
  congested connection resumes its streams when its transport drained (`_resume`), and streams held back
  by bytes that the flush then handed over whole are resumed by that flush.
- A stream that ended under us (reset, GOAWAY, connection gone) makes writes return quietly; its handler
  learns it through an event, never through an exception raised into another connection's reader.

We advertise a header table of size 0 and never index ourselves (stateless HPACK, our own caching codec
in `interlink.wire.hpack`); header blocks are checked in one pass by `interlink.wire.h2headers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import structlog
import trio

from interlink.net.connection import OUTBOUND, Connection, ConnectionPolicy, FlushQueue
from interlink.net.transport import Transport
from interlink.wire import h2conn, h2headers
from interlink.wire.h2conn import H2Connection, H2ConnectionError, StreamGone
from interlink.wire.h2frames import FloodBudget
from interlink.net import trips

log = structlog.get_logger("interlink.net.h2")

Headers = list[tuple[bytes, bytes]]

MAX_FRAME_SIZE = 1 << 16  # what we accept (SETTINGS_MAX_FRAME_SIZE)
_GOAWAY_PING = b"ilgoaway"  # the PING between the two GOAWAYs of a graceful shutdown
_REQUEST, _RESPONSE, _TRAILERS, _DATA, _RESET, _WINDOW, _PING_ACK, _GOAWAY = (
    h2conn.REQUEST, h2conn.RESPONSE, h2conn.TRAILERS, h2conn.DATA, h2conn.RESET, h2conn.WINDOW, h2conn.PING_ACK,
    h2conn.GOAWAY,
)


@dataclass(frozen=True, slots=True)
class H2Settings:
    """What one HTTP/2 connection advertises and tolerates (README "Limits")."""

    max_concurrent_streams: int = 100
    initial_window: int = 65_536
    connection_window: int = 1 << 20
    max_header_list_bytes: int = 64 * 1024
    premature_reset_streams: int = 500
    premature_reset_window: float = 1.0
    control_frame_burst: int = 1_000
    control_frames_per_second: float = 100.0


class StreamHandler(Protocol):
    """What an endpoint tells the owner of one of its streams. Called synchronously from the reader; must
    not block and must not raise (an exception resets that stream only, and is logged)."""

    def on_headers(self, headers: Headers, end_stream: bool) -> None: ...
    def on_data(self, data: bytes, flow_length: int, end_stream: bool) -> None: ...
    def on_reset(self, error_code: int) -> None: ...
    def on_writable(self) -> None: ...
    def on_connection_lost(self, reason: str) -> None: ...


RequestCallback = Callable[["H2Endpoint", int, Headers, bool], None]
RefusalCallback = Callable[["H2Endpoint", int, str], None]  # (endpoint, stream id or 0, reason)


class H2Endpoint(Connection):
    """One HTTP/2 connection. `run()` is its reader; the owner runs it in a nursery."""

    __slots__ = (
        "client_side", "settings", "conn", "streams", "max_concurrent_streams", "_on_request",
        "_on_refused", "_close_when_flushed", "_goaway_final", "_gone", "_sent", "_unanswered",
        "streams_opened", "premature_resets", "_handed", "_goaway_last", "_held_back",
    )

    probe_name = "PING"

    def __init__(
        self,
        transport: Transport,
        *,
        client_side: bool,
        flush_queue: FlushQueue,
        settings: H2Settings = H2Settings(),
        on_request: RequestCallback | None = None,
        on_refused: RefusalCallback | None = None,
        name: str = "",
        policy: ConnectionPolicy = OUTBOUND,
    ) -> None:
        super().__init__(transport, flush_queue, name, policy)
        self.client_side = client_side
        self.settings = settings
        self.conn = H2Connection(
            client_side=client_side,
            budget=FloodBudget(settings.control_frame_burst, settings.control_frames_per_second, trio.current_time()),
            max_concurrent_streams=settings.max_concurrent_streams,
            initial_window=settings.initial_window,
            connection_window=settings.connection_window,
            max_frame_size=MAX_FRAME_SIZE,
            max_header_list=settings.max_header_list_bytes,
        )
        # Our preface (SETTINGS, the connection window) goes first, whatever is written next (RFC 9113 3.4).
        self.conn.initiate()
        self.streams: dict[int, StreamHandler] = {}
        self.max_concurrent_streams = settings.max_concurrent_streams
        self._on_request = on_request
        self._on_refused = on_refused
        self._close_when_flushed = False
        self._goaway_final = False  # the GOAWAY that names the last stream we take has been queued
        self._gone: list[int] = []  # streams that ended under a write; their handlers are told at flush
        self._sent: dict[int, int] = {}  # stream -> DATA bytes sent: who goes first when room opens up
        self._held_back = False  # a stream was given less than it asked for by the output limit (see flush)
        # rapid-reset accounting (server side)
        self._unanswered: dict[int, float] = {}  # stream -> when it opened, until response headers went out
        self.streams_opened = 0
        self.premature_resets = 0
        # Whether the remote side can have seen a stream of ours (unprocessed): the last one whose HEADERS were
        # handed to the transport, and the last stream id of a GOAWAY it sent.
        self._handed = 0
        self._goaway_last = 0x7FFFFFFF

    # --- state -----------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self.streams)

    @property
    def inbound_calls(self) -> tuple[int, int]:
        return len(self.streams), self.max_concurrent_streams

    @property
    def slots(self) -> int:
        """Streams this connection may carry at once (our limit, and the remote's: unlimited until its
        SETTINGS arrive, RFC 9113 5.1.2, so a new connection takes calls at once)."""
        remote = self.conn.remote_max_concurrent
        return remote if remote < self.max_concurrent_streams else self.max_concurrent_streams

    def has_capacity(self) -> bool:
        # No congestion test here: flow control and the output limit (send_data) already hold a stream's
        # bytes back, and a new stream costs only its HEADERS.
        return self.usable and len(self.streams) < self.slots

    # --- writing (synchronous: queues frames, marks this endpoint for the next flush) ------------------

    def open_stream(self, headers: Headers, handler: StreamHandler, end_stream: bool = False) -> int:
        stream_id = self.conn.open_stream(headers, end_stream)
        self.streams[stream_id] = handler
        self._mark()
        return stream_id

    def attach(self, stream_id: int, handler: StreamHandler) -> None:
        self.streams[stream_id] = handler

    def detach(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self._sent.pop(stream_id, None)
        if not self.streams:
            self.idle_since = trio.current_time()
            if self.draining and self._goaway_final:
                self._close_when_flushed = True  # after the last response has gone out
                self._mark()
        if self._unanswered:
            self._unanswered.pop(stream_id, None)

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> bool:
        if self.closed:
            return False
        if self._unanswered:
            self._unanswered.pop(stream_id, None)
        try:
            self.conn.send_headers(stream_id, headers, end_stream)
        except StreamGone:
            self._stream_gone(stream_id)
            return False
        self._mark()
        return True

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Send what flow control and this connection's output limit allow now; return the number of bytes
        sent. END_STREAM goes out only with the last byte (or alone when `data` is empty)."""
        if self.closed:
            return 0
        conn = self.conn
        size = len(data)
        try:
            if not size:
                if end_stream:
                    conn.send_data(stream_id, b"", True)
                    self._mark()
                return 0
            room = self.policy.output_limit - self.transport.buffered - len(conn.out)
            allowed = conn.window(stream_id)
            if room < allowed:
                allowed = room
                if room < size:
                    self._held_back = True
            if size < allowed:
                allowed = size
            if allowed <= 0:
                if stream_id not in conn.streams:
                    self._stream_gone(stream_id)
                return 0
            if allowed == size:
                conn.send_data(stream_id, data, end_stream)
            else:
                conn.send_data(stream_id, memoryview(data)[:allowed])
        except StreamGone:
            self._stream_gone(stream_id)
            return 0
        self._sent[stream_id] = self._sent.get(stream_id, 0) + allowed
        self._mark()
        return allowed

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """Reopen the stream's receive window for bytes that were passed on (the connection's window was
        reopened when they arrived)."""
        if not flow_length or self.closed:
            return
        conn = self.conn
        before = len(conn.out)
        conn.acknowledge(stream_id, flow_length)
        if len(conn.out) != before:
            self._mark()

    def reset(self, stream_id: int, error_code: int = h2conn.CANCEL) -> None:
        self.streams.pop(stream_id, None)
        self._sent.pop(stream_id, None)
        if self._unanswered:
            self._unanswered.pop(stream_id, None)
        if self.closed:
            return
        if self.conn.reset(stream_id, error_code):
            self._mark()

    def _stream_gone(self, stream_id: int) -> None:
        """A write found the stream already ended (the remote reset or closed it between events): its
        handler is told at the next flush, from outside whatever handler was writing."""
        if stream_id in self.streams:
            self._gone.append(stream_id)
            self._mark()

    def goaway(self, error_code: int = h2conn.NO_ERROR) -> None:
        """Graceful GOAWAY in two steps (RFC 9113 6.8), so that no stream the client opens meanwhile is lost:
        first GOAWAY(2^31-1) and a PING, then, when the PING is answered (the client has seen the first),
        GOAWAY(last stream we took); streams open by then finish, and the connection closes after them."""
        if self.closed or self.draining:
            return
        self.draining = True
        if self.client_side:
            self.retire("we are shutting down")
            return
        if not self.preface_done:  # no preface yet: nothing to finish
            self.close("we are shutting down")
            return
        self.conn.goaway(error_code, last_stream_id=0x7FFFFFFF)
        self.conn.ping(_GOAWAY_PING)
        self._mark()

    def retire(self, reason: str) -> None:
        """Take no new streams (a pool stops choosing this connection) and close once the open ones end."""
        if self.closed:
            return
        self.draining = True
        self._goaway_final = True
        self.close_reason = self.close_reason or reason
        if not self.streams:
            self._close_when_flushed = True
        self._mark()

    def _final_goaway(self) -> None:
        if self._goaway_final or self.closed:
            return
        self._goaway_final = True
        self._queue_goaway(h2conn.NO_ERROR)
        if not self.streams:
            self._close_when_flushed = True

    def shutdown(self, reason: str) -> None:
        """Idle or shed: GOAWAY NO_ERROR (callers retry elsewhere), then close once it is sent."""
        if self.closed:
            return
        self._queue_goaway(h2conn.NO_ERROR)
        self.close(reason)

    def abort(self, error_code: int, reason: str) -> None:
        """The remote side broke a limit: GOAWAY with `error_code` and close, with one log line."""
        if self.closed:
            return
        log.warning(
            "connection.abuse", endpoint=self.name, remote=self.remote, reason=reason,
            error_code=h2conn.error_name(error_code), streams=self.streams_opened, premature_resets=self.premature_resets,
            control_frames=self.conn.control_frames,
        )
        trips.trip(trips.H2_ABUSE)
        self._queue_goaway(error_code, reason.encode()[:200])
        if self._on_refused is not None:
            self._on_refused(self, 0, reason)
        self.close(reason)

    def _queue_goaway(self, error_code: int, debug: bytes = b"") -> None:
        self.conn.goaway(error_code, debug=debug)
        self._mark()

    # --- I/O -------------------------------------------------------------------------------------------

    def flush(self) -> None:
        while self._gone:
            stream_id = self._gone.pop()
            handler = self.streams.pop(stream_id, None)
            if handler is not None:
                self._call(handler.on_reset, h2conn.STREAM_CLOSED)
        super().flush()
        if self._held_back and not self.closed and not self.congested:
            # What held streams back was queued in this batch and the transport has taken it at once: no drain
            # event will come, so room is announced here (else a small answer waits behind bulk long gone).
            self._held_back = False
            self._all_writable()
        if self._close_when_flushed and not self.streams and not self.closed:
            self.close(self.close_reason or "drained")

    def _pending_output(self) -> bytes:
        self._handed = self.conn.next_local - 2
        return self.conn.take_output()

    def _hand_all(self) -> None:
        self._handed = self.conn.next_local - 2

    def unprocessed(self, stream_id: int) -> bool:
        """Stream `stream_id` of ours was certainly not processed by the remote side (safe to send elsewhere):
        its HEADERS never left this gateway (the connection was lost first), or it is above the last stream id
        of the remote side's GOAWAY (RFC 9113 6.8)."""
        return stream_id > self._handed or stream_id > self._goaway_last

    def _resume(self) -> None:
        self._held_back = False
        self._all_writable()

    def _start(self) -> None:
        self._mark()  # our preface, queued at construction

    def _send_probe(self) -> None:
        self.conn.ping(b"ilkalive")
        self._mark()

    def _fail_open_calls(self, reason: str) -> None:
        streams, self.streams = self.streams, {}
        self._unanswered.clear()
        self._sent.clear()
        for handler in streams.values():
            self._call(handler.on_connection_lost, reason)

    def _received(self, data: bytes) -> None:
        conn = self.conn
        now = self.last_receive
        try:
            events = conn.receive(data, now)
        except H2ConnectionError as exc:
            if exc.error_code == h2conn.ENHANCE_YOUR_CALM:
                self.abort(exc.error_code, exc.reason)
                return
            reason = f"HTTP/2 protocol error from the remote side: {exc.reason}"
            log.warning(
                "h2.protocol_error", endpoint=self.name, remote=self.remote, error=exc.reason,
                error_code=h2conn.error_name(exc.error_code),
            )
            trips.trip(trips.H2_PROTOCOL_ERROR)
            if self._on_refused is not None:
                self._on_refused(self, 0, reason)
            self._queue_goaway(exc.error_code, exc.reason.encode()[:200])
            self.close(reason)
            return
        if conn.preface_done and not self.preface_done:
            self.preface_done = True
        if conn.partial:
            if self.partial_since is None:
                self.partial_since = now
        else:
            self.partial_since = None
        if events:
            reset = conn.reset_by_remote
            self._dispatch(events, set(reset) if reset else None, now)
        if conn.out:
            self._mark()  # acknowledgements, WINDOW_UPDATEs and stream errors of the state machine

    # --- events ----------------------------------------------------------------------------------------

    def _dispatch(self, events: list[tuple], reset_in_batch: set[int] | None, now: float) -> None:
        streams = self.streams
        for event in events:
            kind = event[0]
            stream_id = event[1] if kind < _PING_ACK else 0
            try:
                if kind == _DATA:
                    handler = streams.get(stream_id)
                    if handler is not None:
                        handler.on_data(event[2], event[3], event[4])
                elif kind == _REQUEST:
                    self._request(stream_id, event[2], event[3], reset_in_batch, now)
                    if self.closed:
                        return
                elif kind == _RESPONSE or kind == _TRAILERS:
                    handler = streams.get(stream_id)
                    check = h2headers.check_response if kind == _RESPONSE else h2headers.check_trailers
                    if handler is not None and not self._malformed(stream_id, event[2], check, handler):
                        handler.on_headers(event[2], event[3])
                elif kind == _RESET:
                    handler = streams.pop(stream_id, None)
                    if self._unanswered and event[3]:
                        self._judge_reset(stream_id, now)
                        if self.closed:
                            return
                    if handler is not None:
                        handler.on_reset(event[2])
                elif kind == _WINDOW:
                    if stream_id:
                        handler = streams.get(stream_id)
                        if handler is not None:
                            handler.on_writable()
                    else:
                        self._all_writable()
                elif kind == _PING_ACK:
                    if event[1] == _GOAWAY_PING:
                        self._final_goaway()
                    else:
                        self._probe_answered()
                elif kind == _GOAWAY:
                    self._on_goaway(event[1], event[2])
            except Exception:
                self._handler_failed(stream_id)
        self._mark()

    def _request(self, stream_id: int, headers: Headers, end: bool, reset_in_batch: set[int] | None, now: float) -> None:
        self.streams_opened += 1
        if reset_in_batch is not None and stream_id in reset_in_batch:
            # Opened and reset by the client in one batch: never dispatched (rapid reset costs us nothing).
            self.premature_resets += 1
            self._judge_resets()
            return
        if self._on_request is None or self.admission_refusal() is not None:
            self.reset(stream_id, h2conn.REFUSED_STREAM)  # never processed: the client may retry it elsewhere
            return
        if self._malformed(stream_id, headers, h2headers.check_request):
            return
        self._unanswered[stream_id] = now
        self._on_request(self, stream_id, headers, end)  # a raise is caught by _dispatch (that stream only)

    def _judge_reset(self, stream_id: int, now: float) -> None:
        opened = self._unanswered.pop(stream_id, None)
        if opened is not None and now - opened < self.settings.premature_reset_window:
            self.premature_resets += 1
            self._judge_resets()

    def _judge_resets(self) -> None:
        """Envoy's rule for premature resets (CVE-2023-44487), with our counters halved now and then so that
        a long-lived connection is judged on its recent behaviour."""
        limit = self.settings.premature_reset_streams
        opened, premature = self.streams_opened, self.premature_resets
        if (opened < limit and premature * 2 >= limit) or (opened >= limit and premature * 2 > opened):
            self.abort(
                h2conn.ENHANCE_YOUR_CALM,
                f"rapid reset: the client reset {premature} of {opened} streams before they were answered",
            )
        elif opened >= 10 * limit:
            self.streams_opened //= 2
            self.premature_resets //= 2

    def _malformed(
        self,
        stream_id: int,
        headers: Headers,
        check: Callable[[Headers], None],
        handler: StreamHandler | None = None,
    ) -> bool:
        """A malformed header block is a stream error (RFC 9113 8.1.1): reset that stream, keep the rest."""
        try:
            check(headers)
        except h2headers.MalformedHeaders as exc:
            log.warning("h2.malformed_headers", endpoint=self.name, stream_id=stream_id, error=str(exc))
            trips.trip(trips.H2_MALFORMED_HEADERS)
            self.reset(stream_id, h2conn.PROTOCOL_ERROR)
            if self._on_refused is not None and handler is None:
                self._on_refused(self, stream_id, f"malformed request headers: {exc}")
            if handler is not None:
                self._call(handler.on_reset, h2conn.PROTOCOL_ERROR, stream_id=stream_id)
            return True
        return False

    def _all_writable(self) -> None:
        """Room opened up (window or output): the streams that sent least go first, so that a small call is
        not queued behind bulk transfers that share the connection."""
        streams = list(self.streams.items())
        if len(streams) > 1 and self._sent:
            sent = self._sent
            streams.sort(key=lambda item: sent.get(item[0], 0))
        for stream_id, handler in streams:
            self._call(handler.on_writable, stream_id=stream_id)

    def _on_goaway(self, error_code: int, last: int) -> None:
        self._goaway_last = min(self._goaway_last, last)
        self.draining = True
        self._goaway_final = True
        reason = f"the remote side sent GOAWAY ({h2conn.error_name(error_code)})"
        self.close_reason = reason
        # last_stream_id counts streams *we* opened (odd ids on a client, even on a server): those above it
        # were never processed by the remote side and may be retried elsewhere.
        ours = 1 if self.client_side else 0
        for stream_id in [sid for sid in self.streams if sid > last and sid % 2 == ours]:
            handler = self.streams.pop(stream_id)
            self._call(handler.on_connection_lost, reason, stream_id=stream_id)
        if not self.streams:
            self._close_when_flushed = True

    def _call(self, fn: Callable[..., None], *args: object, stream_id: int = 0) -> None:
        try:
            fn(*args)
        except Exception:
            self._handler_failed(stream_id)

    def _handler_failed(self, stream_id: int) -> None:
        """A stream's owner raised (a bug): log it, reset that stream only."""
        log.exception("h2.handler_failed", endpoint=self.name, stream_id=stream_id)
        if stream_id:
            self.reset(stream_id, h2conn.INTERNAL_ERROR)
