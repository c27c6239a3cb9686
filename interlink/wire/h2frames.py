"""HTTP/2 frame headers read ahead of the state machine, to judge a connection before work is spent on it.

`FrameScanner` sees every byte an HTTP/2 endpoint receives, before h2 parses it, and reads only the 9-byte
frame headers (`struct.unpack_from`; payloads are skipped, except RST_STREAM's stream id which is in the
header anyway). From that it knows, cheaply and per read batch:

- whether the client preface and the first SETTINGS frame have arrived (the preface timeout stops then);
- whether a frame or a header block (HEADERS + CONTINUATION) is still incomplete (the partial-frame timeout
  runs while it is), and how large an unfinished header block has grown (cut past the limit: a CONTINUATION
  flood never reaches the HPACK decoder);
- which streams the batch opened and which it reset: a stream opened and reset in the same batch is never
  forwarded (the rapid-reset pattern costs the gateway one dictionary lookup, not an upstream call);
- how much "work without value" the peer asks for: SETTINGS, PING, PRIORITY, RST_STREAM, WINDOW_UPDATE,
  GOAWAY, unknown frame types, CONTINUATION and empty DATA frames draw on a token bucket (`FloodBudget`)
  that refills with time and with useful frames; an empty bucket is a flood (ENHANCE_YOUR_CALM).

Sans-I/O: the caller passes the time. Errors are `FrameAbuse(error_code, reason)`, nothing else.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4

# RFC 9113 error codes used here
PROTOCOL_ERROR = 0x1
FRAME_SIZE_ERROR = 0x6
ENHANCE_YOUR_CALM = 0xB

_HEADER = struct.Struct(">I")  # length (24 bits) + type, read as one word
_STREAM_ID = struct.Struct(">I")
FRAME_HEADER_SIZE = 9


class FrameAbuse(Exception):
    """The peer broke a limit; answer GOAWAY with `error_code` and close."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.reason = reason


class FloodBudget:
    """A token bucket: `burst` tokens, refilled at `per_second` and by `earn()`; `spend()` takes one and
    says False when there was none (the caller treats that as a flood)."""

    __slots__ = ("burst", "per_second", "tokens", "_last")

    def __init__(self, burst: int, per_second: float, now: float) -> None:
        self.burst = float(burst)
        self.per_second = float(per_second)
        self.tokens = float(burst)
        self._last = now

    def earn(self, count: int = 1) -> None:
        tokens = self.tokens + count
        self.tokens = tokens if tokens < self.burst else self.burst

    def spend(self, now: float) -> bool:
        tokens = self.tokens
        if tokens < 1.0:
            elapsed = now - self._last
            self._last = now
            tokens = min(self.burst, tokens + elapsed * self.per_second)
            if tokens < 1.0:
                self.tokens = tokens
                return False
        elif now - self._last > 1.0:  # refill lazily, at most once a second when not short of tokens
            tokens = min(self.burst, tokens + (now - self._last) * self.per_second)
            self._last = now
        self.tokens = tokens - 1.0
        return True


class FrameScanner:
    """Frame headers of one direction of one HTTP/2 connection (what the remote side sends us)."""

    __slots__ = (
        "expect_preface", "max_frame_size", "max_header_block", "budget", "preface_done", "opened", "reset",
        "_preface_left", "_head", "_skip", "_block_stream", "_block_bytes", "control_frames",
    )

    def __init__(self, *, expect_preface: bool, max_frame_size: int, max_header_block: int, budget: FloodBudget) -> None:
        self.expect_preface = expect_preface
        self.max_frame_size = max_frame_size
        self.max_header_block = max_header_block
        self.budget = budget
        self.preface_done = False  # preface (server side) and the first SETTINGS frame have arrived
        self.opened: list[int] = []  # streams whose HEADERS began in this batch (cleared by the caller)
        self.reset: list[int] = []  # streams the remote reset in this batch (cleared by the caller)
        self.control_frames = 0  # counted for the connection's closing summary
        self._preface_left = len(PREFACE) if expect_preface else 0
        self._head = b""  # an incomplete frame header carried over from the previous batch
        self._skip = 0  # payload bytes of the current frame still to come
        self._block_stream = 0  # stream of an unfinished header block (0: none)
        self._block_bytes = 0

    @property
    def partial(self) -> bool:
        """A frame, or a header block spread over several frames, has begun and not ended."""
        return bool(self._head) or self._skip > 0 or self._block_stream != 0 or 0 < self._preface_left < len(PREFACE)

    def scan(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Account for `data`; raise FrameAbuse when the peer broke a limit."""
        view = memoryview(data)
        size = len(view)
        pos = 0
        if self._preface_left:
            take = min(self._preface_left, size)
            start = len(PREFACE) - self._preface_left
            if view[:take] != PREFACE[start : start + take]:
                raise FrameAbuse(PROTOCOL_ERROR, "the connection did not start with the HTTP/2 client preface")
            self._preface_left -= take
            pos = take
        skip = self._skip
        if skip:
            step = min(skip, size - pos)
            skip -= step
            pos += step
            self._skip = skip
        if self._head:
            need = FRAME_HEADER_SIZE - len(self._head)
            if size - pos < need:
                self._head += bytes(view[pos:])
                return
            header = self._head + bytes(view[pos : pos + need])
            self._head = b""
            pos += need
            pos = self._frame(header, 0, pos, size, now)
        while pos < size:
            if size - pos < FRAME_HEADER_SIZE:
                self._head = bytes(view[pos:])
                return
            pos = self._frame(data, pos, pos + FRAME_HEADER_SIZE, size, now)

    def _frame(self, source, offset: int, payload_start: int, size: int, now: float) -> int:
        """One frame header at `source[offset:offset+9]`; returns where the next frame starts (or `size`
        with `_skip` set when the payload continues in a later batch)."""
        (word,) = _HEADER.unpack_from(source, offset)
        length = word >> 8
        frame_type = word & 0xFF
        flags = source[offset + 4]
        (stream_id,) = _STREAM_ID.unpack_from(source, offset + 5)
        stream_id &= 0x7FFFFFFF
        if length > self.max_frame_size:
            raise FrameAbuse(FRAME_SIZE_ERROR, f"a frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {self.max_frame_size}")
        block = self._block_stream
        if block and frame_type != CONTINUATION:
            raise FrameAbuse(PROTOCOL_ERROR, "a header block was interrupted by another frame (RFC 9113 6.10)")
        if frame_type == DATA:
            if length == 0 and not flags & FLAG_END_STREAM:
                self._spend(now, "empty DATA frames")
            else:
                self.budget.earn()
        elif frame_type == HEADERS:
            if stream_id & 1 and self.expect_preface:  # a client-initiated stream on our server side
                self.opened.append(stream_id)
            self.budget.earn()
            if not flags & FLAG_END_HEADERS:
                self._block_stream = stream_id or -1
                self._block_bytes = length
                self._check_block()
        elif frame_type == CONTINUATION:
            self._spend(now, "CONTINUATION frames")
            if block:
                self._block_bytes += length
                self._check_block()
                if flags & FLAG_END_HEADERS:
                    self._block_stream = 0
                    self._block_bytes = 0
        elif frame_type == SETTINGS:
            if not self.preface_done and not flags & FLAG_ACK:
                self.preface_done = True
            else:
                self._spend(now, "SETTINGS frames")
        elif frame_type == RST_STREAM:
            self.reset.append(stream_id)
            self._spend(now, "RST_STREAM frames")
        elif frame_type == PUSH_PROMISE:
            pass  # h2 refuses it (we disable push); a connection error follows
        else:  # PING, PRIORITY, WINDOW_UPDATE, GOAWAY, unknown extension frames
            self._spend(now, _NAMES.get(frame_type, "unknown frames"))
        end = payload_start + length
        if end <= size:
            return end
        self._skip = end - size
        return size

    def _spend(self, now: float, what: str) -> None:
        self.control_frames += 1
        if not self.budget.spend(now):
            raise FrameAbuse(
                ENHANCE_YOUR_CALM,
                f"flood of {what}: more than {self.budget.burst:g} frames that carry no request or response data "
                f"(and more than {self.budget.per_second:g}/s on average)",
            )

    def _check_block(self) -> None:
        if self._block_bytes > self.max_header_block:
            raise FrameAbuse(
                ENHANCE_YOUR_CALM,
                f"a header block of more than {self.max_header_block} bytes (HEADERS + CONTINUATION)",
            )


_NAMES = {PING: "PING frames", PRIORITY: "PRIORITY frames", WINDOW_UPDATE: "WINDOW_UPDATE frames", GOAWAY: "GOAWAY frames"}
