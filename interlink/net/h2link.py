"""HTTP/2 connections over trio streams, driven by h2's state machine, built for relaying.

One `H2Endpoint` is one connection, client or server side. Its reader task turns bytes into h2 events and
hands each stream's events to that stream's `StreamHandler` synchronously; handlers write to other
endpoints (the other half of a relay) without awaiting. After each read batch every endpoint written to
is flushed from the reader itself (`FlushQueue`): no writer task, no extra wake-up per call. A send that
is already in progress on an endpoint simply picks up what was added meanwhile.

Costs kept off the per-call path (measured, see DESIGN.md performance notes): we advertise a header table
of size 0 and never index ourselves (stateless HPACK, our own caching codec in `interlink.wire.hpack`),
h2's outbound header validation is off (we build our header lists), frames are not repr()'d for a debug
logger nobody reads.
"""

from __future__ import annotations

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

from interlink.net.connection import IO_ERRORS, Connection, FlushQueue, describe_io_error
from interlink.wire import h2headers
from interlink.wire.hpack import HeaderBlockDecoder, HeaderBlockEncoder

log = structlog.get_logger("interlink.net.h2")

Headers = list[tuple[bytes, bytes]]

READ_SIZE = 256 * 1024
STREAM_WINDOW = 1 << 20  # per-stream receive window we advertise
CONNECTION_WINDOW = 16 << 20  # connection receive window
MAX_FRAME_SIZE = 1 << 16
MAX_HEADER_LIST_SIZE = 64 * 1024


def _cheap_frame_repr(frame: hyperframe.frame.Frame) -> str:
    return f"{type(frame).__name__}(stream_id={frame.stream_id})"


# h2 4.x calls repr(frame) for every received frame to feed a debug logger that is a no-op by default;
# the default repr renders the whole body. One cheap repr for all frame types, set once at import.
hyperframe.frame.Frame.__repr__ = _cheap_frame_repr  # type: ignore[method-assign]


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


def _h2_connection(client_side: bool, max_concurrent_streams: int) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,  # checked in one pass by interlink.wire.h2headers instead
        normalize_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    conn.local_settings = h2.settings.Settings(
        client=client_side,
        initial_values={
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        },
    )
    # Our HPACK: stateless caching encoder, caching decoder (see interlink.wire.hpack for the numbers).
    conn.encoder = HeaderBlockEncoder()
    conn.decoder = HeaderBlockDecoder(max_header_list_size=MAX_HEADER_LIST_SIZE)
    # Settings given as initial values are not "changes" to h2, so it would only apply them on the ACK
    # of a later change: apply the inbound limit that follows from them now.
    conn.max_inbound_frame_size = MAX_FRAME_SIZE
    return conn


class H2Endpoint(Connection):
    """One HTTP/2 connection. `run()` is its reader; the owner runs it in a nursery."""

    probe_name = "PING"

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client_side: bool,
        flush_queue: FlushQueue,
        max_concurrent_streams: int = 256,
        on_request: RequestCallback | None = None,
        name: str = "",
    ) -> None:
        super().__init__(stream, flush_queue, name)
        self.client_side = client_side
        self.conn = _h2_connection(client_side, max_concurrent_streams)
        self.streams: dict[int, StreamHandler] = {}
        self.max_concurrent_streams = max_concurrent_streams
        self._on_request = on_request
        self._close_when_flushed = False

    # --- writing (synchronous: queues bytes in h2, marks this endpoint for the next flush) -----------

    @property
    def in_flight(self) -> int:
        return len(self.streams)

    def has_capacity(self) -> bool:
        remote_limit = self.conn.remote_settings.max_concurrent_streams
        return self.usable and len(self.streams) < min(self.max_concurrent_streams, remote_limit)

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
        if self.draining and not self.streams:
            self._close_when_flushed = True  # after the last response has gone out
            self._mark()

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        self._mark()

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Send what flow control allows now; return the number of bytes sent. END_STREAM goes out only with
        the last byte (or alone when `data` is empty)."""
        if not data:
            if end_stream:
                self.conn.end_stream(stream_id)
                self._mark()
            return 0
        allowed = min(len(data), self.conn.local_flow_control_window(stream_id))
        if allowed <= 0:
            return 0
        max_frame = self.conn.max_outbound_frame_size
        offset = 0
        while offset < allowed:
            end = min(offset + max_frame, allowed)
            chunk = data if offset == 0 and end == len(data) else data[offset:end]
            self.conn.send_data(stream_id, chunk, end_stream=end_stream and end == len(data))
            offset = end
        self._mark()
        return allowed

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """Reopen the receive window for bytes that were passed on."""
        if flow_length and not self.closed:
            self.conn.acknowledge_received_data(flow_length, stream_id)
            self._mark()

    def reset(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.streams.pop(stream_id, None)
        if self.closed:
            return
        try:
            self.conn.reset_stream(stream_id, error_code)
        except h2.exceptions.StreamClosedError:
            return
        self._mark()

    def goaway(self, error_code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """Graceful GOAWAY: streams already open finish, new ones are refused.

        h2's `close_connection` moves its state machine to CLOSED, after which it refuses to send or
        receive anything on the open streams; so the frame is queued here and the endpoint itself refuses
        new streams (`draining`)."""
        if self.closed or self.draining:
            return
        self.draining = True
        frame = hyperframe.frame.GoAwayFrame(stream_id=0)
        frame.last_stream_id = self.conn.highest_inbound_stream_id
        frame.error_code = error_code
        self.conn._data_to_send += frame.serialize()  # noqa: SLF001 - see docstring
        if not self.streams:
            self._close_when_flushed = True
        self._mark()

    # --- I/O -------------------------------------------------------------------------------------------

    def _pending_output(self) -> bytes:
        return self.conn.data_to_send()

    def _after_flush(self) -> None:
        if self._close_when_flushed and not self.streams:
            self.close(self.close_reason or "drained")

    def _send_probe(self) -> None:
        self.conn.ping(b"ilkalive")
        self._mark()

    def _fail_open_calls(self, reason: str) -> None:
        streams, self.streams = self.streams, {}
        for handler in streams.values():
            self._call(handler.on_connection_lost, reason)

    async def run(self) -> None:
        """Read until the connection ends; then every stream still open learns that it was lost."""
        reason = "closed"
        try:
            self.conn.initiate_connection()
            self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
            self._mark()
            await self._flush_queue.flush()
            while not self.closed:
                data = await self._stream.receive_some(READ_SIZE)
                if not data:
                    reason = "connection closed by the remote side"
                    break
                self.last_receive = trio.current_time()
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.H2Error as exc:
                    reason = f"HTTP/2 protocol error from the remote side: {exc}"
                    log.warning("h2.protocol_error", endpoint=self.name, error=str(exc))
                    self._mark()  # h2 queued a GOAWAY; send it before closing
                    await self._flush_queue.flush()
                    break
                self._dispatch(events)
                await self._flush_queue.flush()
        except IO_ERRORS as exc:
            reason = f"connection lost: {describe_io_error(exc)}"
        finally:
            await self._end(reason)

    # --- events ----------------------------------------------------------------------------------------

    def _dispatch(self, events: Iterable[h2.events.Event]) -> None:
        streams = self.streams
        ended_with_frame: set[int] = set()  # stream ids whose END_STREAM came with HEADERS or DATA
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                end = event.stream_ended is not None
                if end:
                    ended_with_frame.add(event.stream_id)
                handler = streams.get(event.stream_id)
                if handler is None:
                    self.acknowledge(event.stream_id, event.flow_controlled_length)
                else:
                    self._call(handler.on_data, event.data, event.flow_controlled_length, end, stream_id=event.stream_id)
            elif kind is h2.events.RequestReceived:
                end = event.stream_ended is not None
                if end:
                    ended_with_frame.add(event.stream_id)
                if self._on_request is None or self.draining:
                    self.reset(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                elif self._malformed(event.stream_id, event.headers, h2headers.check_request):
                    continue
                else:
                    self._call(self._on_request, self, event.stream_id, event.headers, end, stream_id=event.stream_id)
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
                self._probe_outstanding = False
            elif kind is h2.events.ConnectionTerminated:
                self._on_goaway(event)
            # Others (SettingsAcknowledged, PingReceived — h2 answers it —, 1xx responses, PRIORITY) need nothing.
        self._mark()  # h2 may have queued SETTINGS/PING acks or WINDOW_UPDATEs of its own

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
            self.reset(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            if handler is not None:
                self._call(handler.on_reset, h2.errors.ErrorCodes.PROTOCOL_ERROR, stream_id=stream_id)
            return True
        return False

    def _all_writable(self) -> None:
        for stream_id, handler in list(self.streams.items()):
            self._call(handler.on_writable, stream_id=stream_id)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.draining = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        reason = f"the remote side sent GOAWAY ({getattr(event.error_code, 'name', event.error_code)})"
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
                self.reset(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)

