"""One HTTP/2 connection's state (RFC 9113), sans-I/O: bytes in -> events out; calls in -> bytes out.

Built for a relay that speaks gRPC to hostile peers, and for speed (every frame of every call passes
here): `receive(data, now)` parses whole frames with `struct.unpack_from`, keeps at most one incomplete
frame, and returns events as plain tuples; writes append frames to one output buffer (`take_output`).

What it does, and the protections that used to sit in front of the h2 package (its conformance oracle
now: tests/wire/test_h2conn_differential.py feeds both the same frames):
- preface and first SETTINGS, SETTINGS and ACK (ours take effect when acknowledged), PING and ACK,
  GOAWAY (an event: the endpoint decides), RST_STREAM, WINDOW_UPDATE, padding, CONTINUATION, PRIORITY
  (read and ignored, self-dependency refused), PUSH_PROMISE refused (push is disabled), unknown frame
  types ignored; stream states (idle, open, half-closed, closed) and stream id rules; connection and
  stream flow control both ways; frame size and header list limits; HPACK with `interlink.wire.hpack`.
- Connection errors raise `H2ConnectionError(code, reason)`: the endpoint sends GOAWAY(code) and closes.
  Stream errors reset that stream here (RST_STREAM queued) and come out as a RESET event.
- Floods: frames that carry no request or response (SETTINGS after the first, PING, PRIORITY, RST_STREAM,
  WINDOW_UPDATE, GOAWAY, CONTINUATION, empty DATA, unknown types, 1xx heads, frames on closed streams,
  including those we reset) draw on a token bucket (`h2frames.FloodBudget`) that refills with time and with
  useful frames (requests, responses, trailers and DATA delivered) -> ENHANCE_YOUR_CALM.
- A header block (HEADERS + CONTINUATION) larger than the header list limit is cut before HPACK sees it.
- Rapid reset: `reset_by_remote` lists the streams the remote reset in the last batch, so the endpoint
  never dispatches a stream opened and reset in one read.

Deliberate differences from h2 (each pinned by a differential test): a HEADERS frame beyond our
SETTINGS_MAX_CONCURRENT_STREAMS refuses that stream (REFUSED_STREAM, RFC 9113 5.1.2) instead of closing
the connection; frames on a stream we reset are ignored for as long as we remember it (the last 1,024
resets), and on other closed streams DATA draws RST_STREAM(STREAM_CLOSED).

Events (first item is the kind):
    (REQUEST, stream_id, headers, end_stream)      server side: a new stream
    (RESPONSE, stream_id, headers, end_stream)     client side: the final response head (1xx are skipped)
    (TRAILERS, stream_id, headers, True)
    (DATA, stream_id, data, flow_length, end_stream)
    (RESET, stream_id, error_code, by_remote)      the stream is gone (remote RST_STREAM, or our stream error)
    (WINDOW, stream_id)                            room to send opened up (0: the whole connection)
    (PING_ACK, payload)
    (GOAWAY, error_code, last_stream_id, debug_data)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from hpack.exceptions import HPACKError, OversizedHeaderListError

from interlink.wire.h2frames import (
    CONTINUATION, DATA as DATA_FRAME, FLAG_ACK, FLAG_END_HEADERS, FLAG_END_STREAM, GOAWAY as GOAWAY_FRAME,
    HEADERS, PING, PREFACE, PRIORITY, PUSH_PROMISE, RST_STREAM, SETTINGS, WINDOW_UPDATE, FloodBudget,
)
from interlink.wire.hpack import HeaderBlockDecoder, HeaderBlockEncoder

Headers = list[tuple[bytes, bytes]]

# event kinds
REQUEST, RESPONSE, TRAILERS, DATA, RESET, WINDOW, PING_ACK, GOAWAY = range(1, 9)

# RFC 9113 7 error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC
HTTP_1_1_REQUIRED = 0xD

ERROR_NAMES = {
    NO_ERROR: "NO_ERROR", PROTOCOL_ERROR: "PROTOCOL_ERROR", INTERNAL_ERROR: "INTERNAL_ERROR",
    FLOW_CONTROL_ERROR: "FLOW_CONTROL_ERROR", SETTINGS_TIMEOUT: "SETTINGS_TIMEOUT", STREAM_CLOSED: "STREAM_CLOSED",
    FRAME_SIZE_ERROR: "FRAME_SIZE_ERROR", REFUSED_STREAM: "REFUSED_STREAM", CANCEL: "CANCEL",
    COMPRESSION_ERROR: "COMPRESSION_ERROR", CONNECT_ERROR: "CONNECT_ERROR", ENHANCE_YOUR_CALM: "ENHANCE_YOUR_CALM",
    INADEQUATE_SECURITY: "INADEQUATE_SECURITY", HTTP_1_1_REQUIRED: "HTTP_1_1_REQUIRED",
}


def error_name(code: int) -> str:
    """RFC 9113's name of an error code (the number for codes it does not define)."""
    return ERROR_NAMES.get(code, str(code))


# settings
S_HEADER_TABLE_SIZE = 0x1
S_ENABLE_PUSH = 0x2
S_MAX_CONCURRENT_STREAMS = 0x3
S_INITIAL_WINDOW_SIZE = 0x4
S_MAX_FRAME_SIZE = 0x5
S_MAX_HEADER_LIST_SIZE = 0x6

FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20
_SELF_DEPENDENT = 0x100  # not a wire flag: a HEADERS frame whose priority names its own stream

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 0x7FFFFFFF
MAX_FRAME_LIMIT = 0xFFFFFF
REMEMBERED_RESETS = 1024  # streams we reset whose late frames are ignored quietly

_FRAME_HEAD = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
_GOAWAY_HEAD = struct.Struct(">II")
_pack_head = _FRAME_HEAD.pack
_unpack_u32 = _U32.unpack_from

_FRAME_NAMES = {
    PRIORITY: "PRIORITY frames", RST_STREAM: "RST_STREAM frames", SETTINGS: "SETTINGS frames",
    PING: "PING frames", GOAWAY_FRAME: "GOAWAY frames", WINDOW_UPDATE: "WINDOW_UPDATE frames",
    CONTINUATION: "CONTINUATION frames",
}


class H2ConnectionError(Exception):
    """The remote side broke the protocol or a limit: send GOAWAY(`error_code`) and close."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.reason = reason


class StreamGone(Exception):
    """A write to a stream that is not open for sending (reset, ended, or never opened)."""


class _Stream:
    __slots__ = ("send_window", "recv_window", "unacked", "local_closed", "remote_closed", "heads_in")

    def __init__(self, send_window: int, recv_window: int, remote_closed: bool, heads_in: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0  # bytes received and passed on, not yet given back by WINDOW_UPDATE
        self.local_closed = False
        self.remote_closed = remote_closed
        self.heads_in = heads_in  # header blocks received: 1 = request/response head, 2 = trailers


class H2Connection:
    """One side of one HTTP/2 connection."""

    __slots__ = (
        "client_side", "streams", "out", "budget", "earned", "preface_done", "reset_by_remote", "control_frames",
        "max_frame_size", "max_header_list", "max_concurrent_streams", "initial_window", "connection_window",
        "remote_max_concurrent", "remote_initial_window", "remote_max_frame", "send_window",
        "highest_remote", "next_local", "goaway_received", "encoder", "decoder",
        "_buffer", "_preface_left", "_recv_window", "_recv_unacked", "_recv_initial", "_settings_unacked",
        "_block_stream", "_block_flags", "_block", "_block_bytes", "_resets", "_table_update", "_remote_parity",
        "_remote_settings_seen",
    )

    def __init__(
        self,
        *,
        client_side: bool,
        budget: FloodBudget,
        max_concurrent_streams: int = 100,
        initial_window: int = 65_536,
        connection_window: int = 1 << 20,
        max_frame_size: int = 1 << 16,
        max_header_list: int = 64 * 1024,
    ) -> None:
        self.client_side = client_side
        self.streams: dict[int, _Stream] = {}
        self.out = bytearray()
        self.budget = budget
        self.earned = 0  # useful frames (requests, responses, DATA either way) not yet credited to the budget
        self.preface_done = False  # the remote's preface (server side) and first SETTINGS arrived
        self.reset_by_remote: list[int] = []  # streams the remote reset in the last receive() batch
        self.control_frames = 0
        # ours
        self.max_frame_size = max_frame_size
        self.max_header_list = max_header_list
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window = initial_window
        self.connection_window = connection_window
        # theirs (RFC defaults until their SETTINGS arrive)
        self.remote_max_concurrent = 1 << 31
        self.remote_initial_window = DEFAULT_WINDOW
        self.remote_max_frame = DEFAULT_MAX_FRAME
        self.send_window = DEFAULT_WINDOW  # connection-level, what we may still send
        self.highest_remote = 0  # highest stream id the remote opened
        self.next_local = 1 if client_side else 2
        self.goaway_received = False
        self.encoder = HeaderBlockEncoder()
        self.decoder = HeaderBlockDecoder(max_header_list_size=max_header_list)
        self._remote_parity = 0 if client_side else 1
        self._buffer = b""  # an incomplete frame (or frame header) carried to the next batch
        self._preface_left = 0 if client_side else len(PREFACE)
        self._recv_window = DEFAULT_WINDOW  # connection-level, what the remote may still send
        self._recv_unacked = 0
        # Until the remote acknowledges our SETTINGS it may use the defaults: a stream may receive the
        # larger of the default and our window.
        self._recv_initial = max(DEFAULT_WINDOW, initial_window)
        self._settings_unacked = 0
        self._remote_settings_seen = False
        self._block_stream = 0  # stream of an unfinished header block (HEADERS without END_HEADERS)
        self._block_flags = 0
        self._block: list[bytes] = []
        self._block_bytes = 0
        self._resets: dict[int, None] = {}  # streams we reset, oldest first (bounded)
        self._table_update = b""  # an HPACK table size update owed at the start of our next block

    # --- state -----------------------------------------------------------------------------------------

    @property
    def partial(self) -> bool:
        """A frame, a header block or the preface has begun and not ended."""
        return bool(self._buffer) or self._block_stream != 0 or 0 < self._preface_left < len(PREFACE)

    def window(self, stream_id: int) -> int:
        """Bytes of DATA we may send on the stream now (0 when it is not open for sending)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return 0
        window = stream.send_window if stream.send_window < self.send_window else self.send_window
        return window if window > 0 else 0

    def take_output(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = bytes(out)
        out.clear()
        return data

    # --- our side ----------------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Our preface: (client) the magic, then SETTINGS, and the connection window beyond the default."""
        if self.client_side:
            self.out += PREFACE
        payload = b"".join((
            _SETTING.pack(S_HEADER_TABLE_SIZE, 0),
            _SETTING.pack(S_ENABLE_PUSH, 0),
            _SETTING.pack(S_MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            _SETTING.pack(S_INITIAL_WINDOW_SIZE, self.initial_window),
            _SETTING.pack(S_MAX_FRAME_SIZE, self.max_frame_size),
            _SETTING.pack(S_MAX_HEADER_LIST_SIZE, self.max_header_list),
        ))
        self._frame(SETTINGS, 0, 0, payload)
        self._settings_unacked += 1
        extra = self.connection_window - DEFAULT_WINDOW
        if extra > 0:
            self._recv_window += extra
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(extra))

    def open_stream(self, headers: Iterable[tuple[bytes, bytes]], end_stream: bool = False) -> int:
        """Client side: a new stream with its request head. Returns its id."""
        stream_id = self.next_local
        self.next_local += 2
        stream = _Stream(self.remote_initial_window, self._recv_initial, False, 0)
        self.streams[stream_id] = stream
        self._headers(stream_id, headers, end_stream)
        if end_stream:
            stream.local_closed = True
        return stream_id

    def send_headers(self, stream_id: int, headers: Iterable[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamGone(stream_id)
        self._headers(stream_id, headers, end_stream)
        if end_stream:
            self._local_end(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        """Send `data` (at most `window(stream_id)` bytes), cut to the remote's frame size; END_STREAM
        with the last frame. An empty `data` with end_stream ends the stream."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamGone(stream_id)
        size = len(data)
        # an empty DATA frame needs no room, even in a window below zero (RFC 9113 6.9.1)
        if size and (size > stream.send_window or size > self.send_window):
            raise ValueError(f"{size} bytes exceed the flow-control window of stream {stream_id}")
        stream.send_window -= size
        self.send_window -= size
        out = self.out
        max_frame = self.remote_max_frame
        if size <= max_frame:
            out += _pack_head(size << 8 | DATA_FRAME, FLAG_END_STREAM if end_stream else 0, stream_id)
            out += data
            self.earned += 1  # the remote's WINDOW_UPDATEs and PINGs for what we send are useful frames
        else:
            self.earned += 1 + size // max_frame
            view = memoryview(data)
            for offset in range(0, size, max_frame):
                chunk = view[offset : offset + max_frame]
                last = offset + max_frame >= size
                out += _pack_head(len(chunk) << 8 | DATA_FRAME, FLAG_END_STREAM if end_stream and last else 0, stream_id)
                out += chunk
        if end_stream:
            self._local_end(stream_id, stream)

    def reset(self, stream_id: int, error_code: int = CANCEL) -> bool:
        """RST_STREAM for an open stream (False: it was not open, nothing sent)."""
        if self.streams.pop(stream_id, None) is None:
            return False
        self._frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))
        self._remember_reset(stream_id)
        return True

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """Bytes of the stream were passed on: give its window back (in steps, not per frame)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        unacked = stream.unacked + flow_length
        if unacked * 2 >= self.initial_window:
            stream.recv_window += unacked
            stream.unacked = 0
            self._frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(unacked))
        else:
            stream.unacked = unacked

    def ping(self, payload: bytes) -> None:
        self._frame(PING, 0, 0, payload)

    def goaway(self, error_code: int = NO_ERROR, last_stream_id: int | None = None, debug: bytes = b"") -> None:
        last = self.highest_remote if last_stream_id is None else last_stream_id
        self._frame(GOAWAY_FRAME, 0, 0, _GOAWAY_HEAD.pack(last, error_code) + debug)

    def _headers(self, stream_id: int, headers: Iterable[tuple[bytes, bytes]], end_stream: bool) -> None:
        block = self.encoder.encode(headers)
        if self._table_update:
            block = self._table_update + block
            self._table_update = b""
        flags = FLAG_END_STREAM if end_stream else 0
        max_frame = self.remote_max_frame
        if len(block) <= max_frame:
            self._frame(HEADERS, flags | FLAG_END_HEADERS, stream_id, block)
            return
        self._frame(HEADERS, flags, stream_id, block[:max_frame])
        for offset in range(max_frame, len(block), max_frame):
            chunk = block[offset : offset + max_frame]
            end = offset + max_frame >= len(block)
            self._frame(CONTINUATION, FLAG_END_HEADERS if end else 0, stream_id, chunk)

    def _local_end(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream_id]

    def _frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        out = self.out
        out += _pack_head(len(payload) << 8 | frame_type, flags, stream_id)
        out += payload

    def _remember_reset(self, stream_id: int) -> None:
        resets = self._resets
        resets[stream_id] = None
        if len(resets) > REMEMBERED_RESETS:
            del resets[next(iter(resets))]

    # --- their side --------------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[tuple]:
        """Parse what arrived; return the events in order. Raises H2ConnectionError."""
        events: list[tuple] = []
        self.reset_by_remote.clear()
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        size = len(data)
        pos = 0
        if self._preface_left:
            pos = self._preface(data)
            if self._preface_left:
                return events
        max_frame = self.max_frame_size
        while True:
            if size - pos < 9:
                if pos < size:
                    self._buffer = data[pos:]
                break
            (word,) = _unpack_u32(data, pos)
            length = word >> 8
            if length > max_frame:
                raise H2ConnectionError(
                    FRAME_SIZE_ERROR, f"a frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {max_frame}"
                )
            end = pos + 9 + length
            if end > size:
                self._buffer = data[pos:]
                break
            frame_type = word & 0xFF
            flags = data[pos + 4]
            (stream_id,) = _unpack_u32(data, pos + 5)
            stream_id &= 0x7FFFFFFF
            if self._block_stream and frame_type != CONTINUATION:
                raise H2ConnectionError(PROTOCOL_ERROR, "a header block was interrupted by another frame (RFC 9113 6.10)")
            if not self.preface_done:
                if frame_type != SETTINGS or flags & FLAG_ACK:
                    raise H2ConnectionError(PROTOCOL_ERROR, "the connection preface must start with a SETTINGS frame")
                self.preface_done = True
            if frame_type == DATA_FRAME:
                self._data(events, data, pos + 9, length, flags, stream_id, now)
            elif frame_type == HEADERS:
                self._headers_frame(events, data, pos + 9, length, flags, stream_id, now)
            else:
                self._control(events, data, pos + 9, length, frame_type, flags, stream_id, now)
            pos = end
        if self._recv_unacked * 2 >= self.connection_window:
            # The connection window is returned as bytes arrive: they are held within their stream's window,
            # so one stalled stream never starves the others.
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        return events

    def _preface(self, data: bytes) -> int:
        take = min(self._preface_left, len(data))
        start = len(PREFACE) - self._preface_left
        if data[:take] != PREFACE[start : start + take]:
            raise H2ConnectionError(PROTOCOL_ERROR, "the connection did not start with the HTTP/2 client preface")
        self._preface_left -= take
        return take

    def _spend(self, now: float, what: str) -> None:
        self.control_frames += 1
        if self.earned:  # credited here, not per frame: a useful frame costs one integer addition
            self.budget.earn(self.earned)
            self.earned = 0
        if not self.budget.spend(now):
            raise H2ConnectionError(
                ENHANCE_YOUR_CALM,
                f"flood of {what}: more than {self.budget.burst:g} frames that carry no request or response data "
                f"(and more than {self.budget.per_second:g}/s on average)",
            )

    def _idle(self, stream_id: int) -> bool:
        """A stream id not yet opened by whichever side may open it."""
        if stream_id & 1 == self._remote_parity:
            return stream_id > self.highest_remote
        return stream_id >= self.next_local

    def _stream_error(self, events: list[tuple], stream_id: int, error_code: int) -> None:
        if self.streams.pop(stream_id, None) is not None:
            events.append((RESET, stream_id, error_code, False))
        self._frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))
        self._remember_reset(stream_id)

    @staticmethod
    def _unpad(data: bytes, start: int, length: int, flags: int) -> tuple[int, int]:
        """(start, end) of a DATA/HEADERS payload without its padding."""
        if not flags & FLAG_PADDED:
            return start, start + length
        if length < 1:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "a padded frame has no pad length")
        pad = data[start]
        if pad >= length:
            raise H2ConnectionError(PROTOCOL_ERROR, "padding as long as the frame payload (RFC 9113 6.1)")
        return start + 1, start + length - pad

    def _data(self, events: list[tuple], data: bytes, start: int, length: int, flags: int, stream_id: int, now: float) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        end_stream = flags & FLAG_END_STREAM
        if length:
            self._recv_window -= length
            if self._recv_window < 0:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection's flow-control window")
            self._recv_unacked += length
        elif not end_stream:
            self._spend(now, "empty DATA frames")
        begin, stop = self._unpad(data, start, length, flags)
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, f"DATA on stream {stream_id}, which was never opened")
            self._spend(now, "frames on closed streams")  # earns nothing: it carries nothing
            if stream_id not in self._resets:
                self._frame(RST_STREAM, 0, stream_id, _U32.pack(STREAM_CLOSED))
                self._remember_reset(stream_id)
            return
        if stream.remote_closed:
            self._stream_error(events, stream_id, STREAM_CLOSED)
            return
        if not stream.heads_in:
            self._stream_error(events, stream_id, PROTOCOL_ERROR)  # DATA before the response head
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self._stream_error(events, stream_id, FLOW_CONTROL_ERROR)
            return
        if end_stream:
            stream.remote_closed = True
            if stream.local_closed:
                del self.streams[stream_id]
        if length:
            self.earned += 1  # delivered: a useful frame
        events.append((DATA, stream_id, data[begin:stop], length, bool(end_stream)))

    def _headers_frame(self, events: list[tuple], data: bytes, start: int, length: int, flags: int, stream_id: int, now: float) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        begin, stop = self._unpad(data, start, length, flags)
        if flags & FLAG_PRIORITY:
            if stop - begin < 5:
                if flags & FLAG_PADDED and length > 5:  # the priority fields fit, the padding ate into them
                    raise H2ConnectionError(PROTOCOL_ERROR, "padding longer than the header block fragment (RFC 9113 6.2)")
                raise H2ConnectionError(FRAME_SIZE_ERROR, "HEADERS with PRIORITY shorter than 5 bytes")
            depends_on = _unpack_u32(data, begin)[0] & 0x7FFFFFFF
            begin += 5
            if depends_on == stream_id:
                # a stream error (RFC 9113 5.3.1) once the block is complete: it may continue in
                # CONTINUATION frames, and the decoder must see all of it (RFC 9113 4.3)
                flags |= _SELF_DEPENDENT
        fragment = data[begin:stop]
        if flags & FLAG_END_HEADERS:
            self._head_block(events, stream_id, flags, fragment, now)
            return
        if len(fragment) > self.max_header_list:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"a header block of more than {self.max_header_list} bytes (HEADERS + CONTINUATION)")
        self._block_stream = stream_id
        self._block_flags = flags
        self._block = [fragment]
        self._block_bytes = len(fragment)

    def _continuation(self, data: bytes, start: int, length: int, flags: int, stream_id: int, events: list[tuple], now: float) -> None:
        self._spend(now, "CONTINUATION frames")
        if not self._block_stream or stream_id != self._block_stream:
            raise H2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block to continue (RFC 9113 6.10)")
        self._block_bytes += length
        if self._block_bytes > self.max_header_list:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"a header block of more than {self.max_header_list} bytes (HEADERS + CONTINUATION)")
        self._block.append(data[start : start + length])
        if flags & FLAG_END_HEADERS:
            block = b"".join(self._block)
            self._block_stream = 0
            self._block = []
            self._block_bytes = 0
            self._head_block(events, stream_id, self._block_flags, block, now)

    def _decode(self, block: bytes) -> Headers:
        try:
            return self.decoder.decode(block)
        except OversizedHeaderListError as exc:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"header list too large: {exc}") from None
        except HPACKError as exc:
            raise H2ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        except IndexError:
            raise H2ConnectionError(COMPRESSION_ERROR, "HPACK: header block ends inside a field") from None

    def _head_block(self, events: list[tuple], stream_id: int, flags: int, block: bytes, now: float) -> None:
        """A complete header block on `stream_id` (HEADERS [+ CONTINUATION]). Earns a token when it is
        delivered (a request, response or trailers); spends one when it is not (1xx, a stream we reset)."""
        headers = self._decode(block)  # always: the decoder's table must follow every block
        end_stream = bool(flags & FLAG_END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id & 1 != self._remote_parity or self.client_side:
                if self._idle(stream_id):
                    raise H2ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, which the remote may not open")
                if stream_id not in self._resets:
                    raise H2ConnectionError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
                self._spend(now, "frames on closed streams")
                return
            if stream_id <= self.highest_remote:
                if stream_id in self._resets:
                    self._spend(now, "frames on closed streams")
                    return
                raise H2ConnectionError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id} (stream ids only grow)")
            self.highest_remote = stream_id
            if flags & _SELF_DEPENDENT:
                self._stream_error(events, stream_id, PROTOCOL_ERROR)
                return
            if len(self.streams) >= self.max_concurrent_streams:
                self._stream_error(events, stream_id, REFUSED_STREAM)
                return
            self.streams[stream_id] = _Stream(self.remote_initial_window, self._recv_initial, end_stream, 1)
            self.earned += 1
            events.append((REQUEST, stream_id, headers, end_stream))
            return
        if stream.remote_closed:
            self._stream_error(events, stream_id, STREAM_CLOSED)
            return
        if flags & _SELF_DEPENDENT:
            self._stream_error(events, stream_id, PROTOCOL_ERROR)
            return
        if stream.heads_in == 0:
            status = headers[0][1] if headers and headers[0][0] == b":status" else b""
            if status[:1] == b"1":  # informational (1xx): the final head follows
                if end_stream:
                    self._stream_error(events, stream_id, PROTOCOL_ERROR)
                    return
                self._spend(now, "informational responses")
                return
            stream.heads_in = 1
            kind = RESPONSE
        elif not end_stream:
            self._stream_error(events, stream_id, PROTOCOL_ERROR)  # trailers must end the stream
            return
        else:
            stream.heads_in = 2
            kind = TRAILERS
        if end_stream:
            stream.remote_closed = True
            if stream.local_closed:
                del self.streams[stream_id]
        self.earned += 1
        events.append((kind, stream_id, headers, end_stream))

    def _control(self, events: list[tuple], data: bytes, start: int, length: int, frame_type: int, flags: int, stream_id: int, now: float) -> None:
        if frame_type == CONTINUATION:
            self._continuation(data, start, length, flags, stream_id, events, now)
            return
        if frame_type == SETTINGS:
            if flags & FLAG_ACK or self._remote_settings_seen:
                self._spend(now, "SETTINGS frames")  # the first one is the preface's
            else:
                self._remote_settings_seen = True
            self._settings(events, data, start, length, flags, stream_id)
            return
        self._spend(now, _FRAME_NAMES.get(frame_type, "unknown frames"))
        if frame_type == WINDOW_UPDATE:
            self._window_update(events, data, start, length, stream_id)
        elif frame_type == RST_STREAM:
            if length != 4:
                raise H2ConnectionError(FRAME_SIZE_ERROR, f"RST_STREAM of {length} bytes")
            if stream_id == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if self._idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on stream {stream_id}, which was never opened")
            if self.streams.pop(stream_id, None) is not None:
                (code,) = _unpack_u32(data, start)
                self.reset_by_remote.append(stream_id)
                events.append((RESET, stream_id, code, True))
        elif frame_type == PING:
            if length != 8:
                raise H2ConnectionError(FRAME_SIZE_ERROR, f"PING of {length} bytes")
            if stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            payload = data[start : start + 8]
            if flags & FLAG_ACK:
                events.append((PING_ACK, payload))
            else:
                self._frame(PING, FLAG_ACK, 0, payload)
        elif frame_type == PRIORITY:
            if stream_id == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            # RFC 9113 6.3 and 5.3.1: stream errors
            code = FRAME_SIZE_ERROR if length != 5 else PROTOCOL_ERROR if _unpack_u32(data, start)[0] & 0x7FFFFFFF == stream_id else 0
            if code:
                if self._idle(stream_id):
                    raise H2ConnectionError(code, f"a malformed PRIORITY frame on idle stream {stream_id} (RFC 9113 6.4: no RST_STREAM for an idle stream)")
                self._stream_error(events, stream_id, code)
        elif frame_type == GOAWAY_FRAME:
            if stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if length < 8:
                raise H2ConnectionError(FRAME_SIZE_ERROR, f"GOAWAY of {length} bytes")
            last, code = _GOAWAY_HEAD.unpack_from(data, start)
            last &= 0x7FFFFFFF
            self.goaway_received = True
            # Our streams above last-stream-id were never processed: they are closed, their late frames ignored.
            for stream_id in [sid for sid in self.streams if sid > last and sid & 1 != self._remote_parity]:
                del self.streams[stream_id]
                self._remember_reset(stream_id)
            events.append((GOAWAY, code, last, data[start + 8 : start + length]))
        elif frame_type == PUSH_PROMISE:
            raise H2ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE, but push is disabled (SETTINGS_ENABLE_PUSH 0)")
        # unknown frame types: ignored (RFC 9113 5.5)

    def _settings(self, events: list[tuple], data: bytes, start: int, length: int, flags: int, stream_id: int) -> None:
        if stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if length:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if self._settings_unacked:
                self._settings_unacked -= 1
                self._our_settings_acknowledged()
            return
        if length % 6:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"SETTINGS of {length} bytes (not a multiple of 6)")
        window_changed = False
        for offset in range(start, start + length, 6):
            key, value = _SETTING.unpack_from(data, offset)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value} exceeds 2^31-1")
                delta = value - self.remote_initial_window
                if delta:
                    for stream in self.streams.values():
                        stream.send_window += delta
                        if stream.send_window > MAX_WINDOW:
                            raise H2ConnectionError(FLOW_CONTROL_ERROR, "a stream's flow-control window exceeds 2^31-1")
                    window_changed = True
                self.remote_initial_window = value
            elif key == S_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= MAX_FRAME_LIMIT:
                    raise H2ConnectionError(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} outside 2^14..2^24-1")
                self.remote_max_frame = value
            elif key == S_MAX_CONCURRENT_STREAMS:
                self.remote_max_concurrent = value
            elif key == S_ENABLE_PUSH:
                if value > 1 or (value and self.client_side):
                    raise H2ConnectionError(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
            elif key == S_HEADER_TABLE_SIZE:
                self._table_update = b"\x20"  # we never index: tell their decoder our table is empty (size 0)
            # SETTINGS_MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored (RFC 9113 6.5.2)
        self._frame(SETTINGS, FLAG_ACK, 0, b"")
        if window_changed:
            events.append((WINDOW, 0))

    def _our_settings_acknowledged(self) -> None:
        delta = self.initial_window - self._recv_initial
        self._recv_initial = self.initial_window
        if delta:
            for stream in self.streams.values():
                stream.recv_window += delta
        self.decoder.max_allowed_table_size = 0

    def _window_update(self, events: list[tuple], data: bytes, start: int, length: int, stream_id: int) -> None:
        if length != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, f"WINDOW_UPDATE of {length} bytes")
        increment = _unpack_u32(data, start)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, "the connection's flow-control window exceeds 2^31-1")
            events.append((WINDOW, 0))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {stream_id}, which was never opened")
            return
        if not increment:
            self._stream_error(events, stream_id, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(events, stream_id, FLOW_CONTROL_ERROR)
            return
        events.append((WINDOW, stream_id))
