"""HTTP/2 connections, driven by h2's state machine, built for relaying and for hostile peers.

One `H2Endpoint` is one connection, client or server side. Its reader (`Connection.run`) passes each read
batch first to a `FrameScanner` (interlink.wire.h2frames: frame headers only — floods, header blocks that
never end, streams opened and reset in the same batch), then to h2, and hands each stream's events to
that stream's `StreamHandler` synchronously; handlers write to other endpoints without awaiting, and every
endpoint written to is flushed once after the batch (`FlushQueue`).

Protections (limits come from the site file's `limits:` via `H2Settings`):
- Rapid reset: a stream the client opens and resets in the same batch is never dispatched; resets that
  arrive before we answered, within `premature_reset_window`, are premature; Envoy's rule cuts the
  connection (GOAWAY ENHANCE_YOUR_CALM) when half of `premature_reset_streams` were premature early on,
  or more than half of all streams later.
- Control-frame floods and oversized header blocks: the scanner's budget; GOAWAY ENHANCE_YOUR_CALM.
- Flow control is end to end per stream, but the *connection* window is returned as soon as bytes arrive
  (they are held within their stream's window): one stalled stream can never starve the others.
- Output: a stream is given at most what the remote's window and this connection's output limit allow; a
  congested connection resumes its streams when its transport drained (`_resume`).
- A stream that ended under us (reset, GOAWAY, connection gone) makes writes return quietly; its handler
  learns it through an event, never through an exception raised into another connection's reader.

Costs kept off the per-call path (measured, see DESIGN.md performance notes): we advertise a header table
of size 0 and never index ourselves (stateless HPACK, our own caching codec in `interlink.wire.hpack`),
h2's outbound header validation is off (we build our header lists), frames are not repr()'d for a debug
logger nobody reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import structlog
import trio

from interlink.net.connection import OUTBOUND, Connection, ConnectionPolicy, FlushQueue
from interlink.net.transport import Transport
from interlink.wire import h2frames, h2headers
from interlink.wire.hpack import HeaderBlockDecoder, HeaderBlockEncoder

log = structlog.get_logger("interlink.net.h2")

Headers = list[tuple[bytes, bytes]]

MAX_FRAME_SIZE = 1 << 16  # what we accept (SETTINGS_MAX_FRAME_SIZE)
_GOAWAY_PING = b"ilgoaway"  # the PING between the two GOAWAYs of a graceful shutdown
ErrorCodes = h2.errors.ErrorCodes


def _cheap_frame_repr(frame: hyperframe.frame.Frame) -> str:
    return f"{type(frame).__name__}(stream_id={frame.stream_id})"


# h2 4.x calls repr(frame) for every received frame to feed a debug logger that is a no-op by default;
# the default repr renders the whole body. One cheap repr for all frame types, set once at import.
hyperframe.frame.Frame.__repr__ = _cheap_frame_repr  # type: ignore[method-assign]


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
    def on_end(self) -> None: ...
    def on_reset(self, error_code: int) -> None: ...
    def on_writable(self) -> None: ...
    def on_connection_lost(self, reason: str) -> None: ...


RequestCallback = Callable[["H2Endpoint", int, Headers, bool], None]
RefusalCallback = Callable[["H2Endpoint", int, str], None]  # (endpoint, stream id or 0, reason)


class _RelayH2Connection(h2.connection.H2Connection):
    """h2, except that a GOAWAY from the other side does not close the state machine (h2 then refuses to
    send or receive anything, even on the streams the GOAWAY lets finish, and drops our queued output).
    The endpoint applies GOAWAY itself: no new streams, streams above last-stream-id are lost."""

    def _receive_goaway_frame(self, frame: hyperframe.frame.GoAwayFrame):  # type: ignore[override]
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)  # noqa: SLF001
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class _Values(list):
    """What h2's Settings keeps per setting (current value, then values waiting for an ACK): it uses a deque
    (~600 bytes each, 13 per Settings, two Settings per connection); a list does the same job in ~70."""

    __slots__ = ()

    def popleft(self) -> int:
        return self.pop(0)


def _compact(settings: h2.settings.Settings) -> h2.settings.Settings:
    settings._settings = {key: _Values(values) for key, values in settings._settings.items()}  # noqa: SLF001
    return settings


def _h2_connection(client_side: bool, settings: H2Settings) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,  # checked in one pass by interlink.wire.h2headers instead
        normalize_inbound_headers=False,
    )
    conn = _RelayH2Connection(config)
    conn.local_settings = h2.settings.Settings(
        client=client_side,
        initial_values={
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_bytes,
        },
    )
    _compact(conn.local_settings)
    _compact(conn.remote_settings)
    # Our HPACK: stateless caching encoder, caching decoder (see interlink.wire.hpack for the numbers).
    conn.encoder = HeaderBlockEncoder()
    conn.decoder = HeaderBlockDecoder(max_header_list_size=settings.max_header_list_bytes)
    # Settings given as initial values are not "changes" to h2, so it would only apply them on the ACK
    # of a later change: apply the inbound limit that follows from them now.
    conn.max_inbound_frame_size = MAX_FRAME_SIZE
    return conn


class H2Endpoint(Connection):
    """One HTTP/2 connection. `run()` is its reader; the owner runs it in a nursery."""

    __slots__ = (
        "client_side", "settings", "conn", "streams", "max_concurrent_streams", "_on_request",
        "_on_refused", "_close_when_flushed", "_goaway_final", "_early", "_early_out", "scanner", "_gone",
        "_sent", "_unanswered", "streams_opened", "premature_resets",
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
        # A server side's h2 state (~14 KB) is made when the client preface has arrived: a connection that
        # never sends one (a slowloris) costs only this object until the preface timeout ends it.
        self.conn: h2.connection.H2Connection = _h2_connection(client_side, settings) if client_side else None  # type: ignore[assignment]
        self._early = b""  # bytes received before the preface was complete (at most the preface + a frame header)
        self._early_out = b""  # a GOAWAY queued before there was an h2 state to queue it in
        self.streams: dict[int, StreamHandler] = {}
        self.max_concurrent_streams = settings.max_concurrent_streams
        self._on_request = on_request
        self._on_refused = on_refused
        self._close_when_flushed = False
        self._goaway_final = False  # the GOAWAY that names the last stream we take has been queued
        now = trio.current_time()
        self.scanner = h2frames.FrameScanner(
            expect_preface=not client_side,
            max_frame_size=MAX_FRAME_SIZE,
            max_header_block=settings.max_header_list_bytes,
            budget=h2frames.FloodBudget(settings.control_frame_burst, settings.control_frames_per_second, now),
        )
        self._gone: list[int] = []  # streams that ended under a write; their handlers are told at flush
        self._sent: dict[int, int] = {}  # stream -> DATA bytes sent: who goes first when room opens up
        # rapid-reset accounting (server side)
        self._unanswered: dict[int, float] = {}  # stream -> when it opened, until response headers went out
        self.streams_opened = 0
        self.premature_resets = 0

    # --- state -----------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self.streams)

    @property
    def inbound_calls(self) -> tuple[int, int]:
        return len(self.streams), self.max_concurrent_streams

    @property
    def slots(self) -> int:
        """Streams this connection may carry at once (our limit, and the remote's)."""
        if self.conn is None:
            return 0
        return min(self.max_concurrent_streams, self.conn.remote_settings.max_concurrent_streams)

    def has_capacity(self) -> bool:
        # No congestion test here: flow control and the output limit (send_data) already hold a stream's
        # bytes back, and a new stream costs only its HEADERS.
        return self.usable and len(self.streams) < self.slots

    # --- writing (synchronous: queues bytes in h2, marks this endpoint for the next flush) -----------

    def open_stream(self, headers: Headers, handler: StreamHandler, end_stream: bool = False) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
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
            self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
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
        try:
            if not data:
                if end_stream:
                    conn.end_stream(stream_id)
                    self._mark()
                return 0
            room = self.policy.output_limit - self.transport.buffered - len(conn._data_to_send)  # noqa: SLF001
            allowed = min(len(data), conn.local_flow_control_window(stream_id), room)
            if allowed <= 0:
                return 0
            max_frame = conn.max_outbound_frame_size
            offset = 0
            while offset < allowed:
                end = min(offset + max_frame, allowed)
                chunk = data if offset == 0 and end == len(data) else data[offset:end]
                conn.send_data(stream_id, chunk, end_stream=end_stream and end == len(data))
                self.scanner.budget.earn()  # the remote's WINDOW_UPDATEs and PINGs for this are useful
                offset = end
            self._sent[stream_id] = self._sent.get(stream_id, 0) + allowed
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._stream_gone(stream_id)
            return 0
        self._mark()
        return allowed

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """Reopen the stream's receive window for bytes that were passed on (the connection's window was
        reopened when they arrived)."""
        if not flow_length or self.closed:
            return
        try:
            stream = self.conn._get_stream_by_id(stream_id)  # noqa: SLF001
        except h2.exceptions.NoSuchStreamError:
            return
        if stream.open:
            frames = stream.acknowledge_received_data(flow_length)
            if frames:
                self.conn._prepare_for_sending(frames)  # noqa: SLF001
                self._mark()

    def _connection_window_consumed(self, flow_length: int) -> None:
        increment = self.conn._inbound_flow_control_window_manager.process_bytes(flow_length)  # noqa: SLF001
        if increment:
            frame = hyperframe.frame.WindowUpdateFrame(0)
            frame.window_increment = increment
            self.conn._prepare_for_sending([frame])  # noqa: SLF001

    def reset(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        self.streams.pop(stream_id, None)
        self._sent.pop(stream_id, None)
        if self._unanswered:
            self._unanswered.pop(stream_id, None)
        if self.closed:
            return
        try:
            self.conn.reset_stream(stream_id, error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._mark()

    def _stream_gone(self, stream_id: int) -> None:
        """A write found the stream already ended (the remote reset or closed it between events): its
        handler is told at the next flush, from outside whatever handler was writing."""
        if stream_id in self.streams:
            self._gone.append(stream_id)
            self._mark()

    def goaway(self, error_code: int = ErrorCodes.NO_ERROR) -> None:
        """Graceful GOAWAY in two steps (RFC 9113 6.8), so that no stream the client opens meanwhile is lost:
        first GOAWAY(2^31-1) and a PING, then, when the PING is answered (the client has seen the first),
        GOAWAY(last stream we took); streams open by then finish, and the connection closes after them."""
        if self.closed or self.draining:
            return
        self.draining = True
        if self.client_side:
            self.retire("we are shutting down")
            return
        if self.conn is None:  # no preface yet: nothing to finish
            self.close("we are shutting down")
            return
        self._queue_goaway(error_code, last_stream_id=0x7FFFFFFF)
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
        self._queue_goaway(ErrorCodes.NO_ERROR)
        if not self.streams:
            self._close_when_flushed = True

    def shutdown(self, reason: str) -> None:
        """Idle or shed: GOAWAY NO_ERROR (callers retry elsewhere), then close once it is sent."""
        if self.closed:
            return
        self._queue_goaway(ErrorCodes.NO_ERROR)
        self.close(reason)

    def abort(self, error_code: int, reason: str) -> None:
        """The remote side broke a limit: GOAWAY with `error_code` and close, with one log line."""
        if self.closed:
            return
        log.warning(
            "connection.abuse", endpoint=self.name, remote=self.remote, reason=reason,
            error_code=_code_name(error_code), streams=self.streams_opened, premature_resets=self.premature_resets,
            control_frames=self.scanner.control_frames,
        )
        self._queue_goaway(error_code, reason.encode()[:200])
        if self._on_refused is not None:
            self._on_refused(self, 0, reason)
        self.close(reason)

    def _queue_goaway(self, error_code: int, debug: bytes = b"", last_stream_id: int | None = None) -> None:
        # Serialised here rather than with h2's close_connection, which would close h2's state machine
        # and with it the streams a graceful GOAWAY lets finish.
        frame = hyperframe.frame.GoAwayFrame(stream_id=0)
        highest = self.conn.highest_inbound_stream_id if self.conn is not None else 0
        frame.last_stream_id = highest if last_stream_id is None else last_stream_id
        frame.error_code = error_code
        frame.additional_data = debug
        if self.conn is None:
            self._early_out += frame.serialize()
        else:
            self.conn._data_to_send += frame.serialize()  # noqa: SLF001
        self._mark()

    # --- I/O -------------------------------------------------------------------------------------------

    def flush(self) -> None:
        while self._gone:
            stream_id = self._gone.pop()
            handler = self.streams.pop(stream_id, None)
            if handler is not None:
                self._call(handler.on_reset, ErrorCodes.STREAM_CLOSED)
        super().flush()
        if self._close_when_flushed and not self.streams and not self.closed:
            self.close(self.close_reason or "drained")

    def _pending_output(self) -> bytes:
        if self.conn is None:
            data, self._early_out = self._early_out, b""
            return data
        return self.conn.data_to_send()

    def _resume(self) -> None:
        self._all_writable()

    def _start(self) -> None:
        if self.client_side:
            self._open()

    def _open(self) -> None:
        """Our preface (SETTINGS, the connection window) and, on the server side, the h2 state itself."""
        if self.conn is None:
            self.conn = _h2_connection(False, self.settings)
        self.conn.initiate_connection()
        extra = self.settings.connection_window - 65_535
        if extra > 0:
            self.conn.increment_flow_control_window(extra)
        self._mark()

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
        scanner = self.scanner
        now = self.last_receive
        opened, reset = scanner.opened, scanner.reset
        opened.clear()
        reset.clear()
        try:
            scanner.scan(data, now)
        except h2frames.FrameAbuse as exc:
            self.abort(exc.error_code, exc.reason)
            return
        if scanner.preface_done and not self.preface_done:
            self.preface_done = True
        if scanner.partial:
            if self.partial_since is None:
                self.partial_since = now
        else:
            self.partial_since = None
        if self.conn is None:
            if not self.preface_done:
                self._early += data
                return
            data, self._early = self._early + data, b""
            self._open()
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.H2Error as exc:
            reason = f"HTTP/2 protocol error from the remote side: {exc}"
            log.warning("h2.protocol_error", endpoint=self.name, remote=self.remote, error=str(exc))
            if self._on_refused is not None:
                self._on_refused(self, 0, reason)
            self.close(reason)  # h2 queued a GOAWAY with the error code; close() sends it
            return
        self._dispatch(events, set(reset) if reset and opened else None, now)

    # --- events ----------------------------------------------------------------------------------------

    def _dispatch(self, events: Iterable[h2.events.Event], reset_in_batch: set[int] | None, now: float) -> None:
        streams = self.streams
        ended_with_frame: set[int] = set()  # stream ids whose END_STREAM came with HEADERS or DATA
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                end = event.stream_ended is not None
                if end:
                    ended_with_frame.add(event.stream_id)
                self._connection_window_consumed(event.flow_controlled_length)
                handler = streams.get(event.stream_id)
                if handler is not None:
                    self._call(handler.on_data, event.data, event.flow_controlled_length, end, stream_id=event.stream_id)
            elif kind is h2.events.RequestReceived:
                end = event.stream_ended is not None
                if end:
                    ended_with_frame.add(event.stream_id)
                self._request(event.stream_id, event.headers, end, reset_in_batch, now)
                if self.closed:
                    return
            elif kind is h2.events.ResponseReceived or kind is h2.events.TrailersReceived:
                end = event.stream_ended is not None
                if end:
                    ended_with_frame.add(event.stream_id)
                check = h2headers.check_response if kind is h2.events.ResponseReceived else h2headers.check_trailers
                handler = streams.get(event.stream_id)
                if handler is None or self._malformed(event.stream_id, event.headers, check, handler):
                    continue
                self._call(handler.on_headers, event.headers, end, stream_id=event.stream_id)
            elif kind is h2.events.StreamEnded:
                if event.stream_id in ended_with_frame:
                    continue
                handler = streams.get(event.stream_id)
                if handler is not None:
                    self._call(handler.on_end, stream_id=event.stream_id)
            elif kind is h2.events.StreamReset:
                handler = streams.pop(event.stream_id, None)
                if self._unanswered and event.remote_reset:
                    self._judge_reset(event.stream_id, now)
                    if self.closed:
                        return
                if handler is not None:
                    self._call(handler.on_reset, event.error_code, stream_id=event.stream_id)
            elif kind is h2.events.WindowUpdated:
                if event.stream_id:
                    handler = streams.get(event.stream_id)
                    if handler is not None:
                        self._call(handler.on_writable, stream_id=event.stream_id)
                else:
                    self._all_writable()
            elif kind is h2.events.RemoteSettingsChanged:
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._all_writable()
            elif kind is h2.events.PingAckReceived:
                if event.ping_data == _GOAWAY_PING:
                    self._final_goaway()
                else:
                    self._probe_outstanding = False
            elif kind is h2.events.ConnectionTerminated:
                self._on_goaway(event)
            # Others (SettingsAcknowledged, PingReceived — h2 answers it —, 1xx responses, PRIORITY) need nothing.
        self._mark()  # h2 may have queued SETTINGS/PING acks or WINDOW_UPDATEs of its own

    def _request(self, stream_id: int, headers: Headers, end: bool, reset_in_batch: set[int] | None, now: float) -> None:
        self.streams_opened += 1
        if reset_in_batch is not None and stream_id in reset_in_batch:
            # Opened and reset by the client in one batch: never dispatched (rapid reset costs us nothing).
            self.premature_resets += 1
            self._judge_resets()
            return
        if self._on_request is None or self.admission_refusal() is not None:
            self.reset(stream_id, ErrorCodes.REFUSED_STREAM)  # never processed: the client may retry it elsewhere
            return
        if self._malformed(stream_id, headers, h2headers.check_request):
            return
        self._unanswered[stream_id] = now
        self._call(self._on_request, self, stream_id, headers, end, stream_id=stream_id)

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
                ErrorCodes.ENHANCE_YOUR_CALM,
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
            self.reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
            if self._on_refused is not None and handler is None:
                self._on_refused(self, stream_id, f"malformed request headers: {exc}")
            if handler is not None:
                self._call(handler.on_reset, ErrorCodes.PROTOCOL_ERROR, stream_id=stream_id)
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

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.draining = True
        self._goaway_final = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        reason = f"the remote side sent GOAWAY ({_code_name(event.error_code)})"
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
            log.exception("h2.handler_failed", endpoint=self.name, stream_id=stream_id)
            if stream_id:
                self.reset(stream_id, ErrorCodes.INTERNAL_ERROR)


def _code_name(code: object) -> str:
    try:
        return ErrorCodes(code).name  # type: ignore[arg-type]
    except ValueError:
        return str(code)
