"""H2Connection (interlink.wire.h2conn) without sockets: bytes in -> events out, calls in -> bytes out.

Golden byte vectors pin what goes on the wire; every connection error and every stream error of the module
has a case here (a meta-test reads the module's source and fails when a `raise H2ConnectionError` has none);
the flood budget, the size limits, partial frames and cuts at any byte are covered. The differential tests
against the h2 package are in test_h2conn_differential.py. The scenarios of the old FrameScanner tests
(tests/wire/test_h2frames.py) are ported here ("ported:" in their docstrings).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interlink.wire import h2conn, hpack
from interlink.wire.h2conn import (
    CANCEL, COMPRESSION_ERROR, DATA, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, GOAWAY, NO_ERROR,
    PING_ACK, PROTOCOL_ERROR, REFUSED_STREAM, REMEMBERED_RESETS, REQUEST, RESET, RESPONSE, STREAM_CLOSED, TRAILERS,
    WINDOW, H2Connection, H2ConnectionError, StreamGone,
)
from interlink.wire.h2frames import PREFACE, FloodBudget
from interlink.wire.hpack import HeaderBlockEncoder

# frame types and flags, spelled out here so that the tests do not trust the module's constants
T_DATA, T_HEADERS, T_PRIORITY, T_RST, T_SETTINGS, T_PUSH, T_PING, T_GOAWAY, T_WINDOW, T_CONT = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"), (b":authority", b"x")]
REQ_BLOCK = bytes.fromhex("838604022f61010178")  # static :method POST, :scheme http; literal :path, :authority
RESP = [(b":status", b"200")]
TRAIL = [(b"grpc-status", b"0")]


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((frame_type, flags)) + stream_id.to_bytes(4, "big") + payload


def setting(key: int, value: int) -> bytes:
    return struct.pack(">HI", key, value)


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def block(headers) -> bytes:
    return HeaderBlockEncoder().encode(headers)


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each frame in `data` (which holds whole frames only)."""
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        out.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5 : pos + 9], "big"), data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data)
    return out


SETTINGS_ACK = frame(T_SETTINGS, ACK, 0)


def rst(stream_id: int, code: int) -> bytes:
    return frame(T_RST, 0, stream_id, u32(code))


def budget(burst: int = 1000, per_second: float = 100) -> FloodBudget:
    return FloodBudget(burst, per_second, 0.0)


def tokens(conn: H2Connection) -> float:
    """The budget's tokens with what useful frames earned (credited at the next spend)."""
    return min(conn.budget.burst, conn.budget.tokens + conn.earned)


def server(*, ack: bool = True, flood: FloodBudget | None = None, **options) -> H2Connection:
    """A server whose remote has sent the preface, an empty SETTINGS and (ack) the ACK of ours."""
    conn = H2Connection(client_side=False, budget=flood or budget(), **options)
    conn.initiate()
    conn.take_output()
    assert conn.receive(PREFACE + frame(T_SETTINGS, 0, 0) + (SETTINGS_ACK if ack else b""), 0.0) == []
    assert conn.take_output() == SETTINGS_ACK
    assert conn.preface_done and not conn.partial
    return conn


def client(*, ack: bool = True, flood: FloodBudget | None = None, **options) -> H2Connection:
    """A client whose remote has sent an empty SETTINGS and (ack) the ACK of ours."""
    conn = H2Connection(client_side=True, budget=flood or budget(), **options)
    conn.initiate()
    conn.take_output()
    assert conn.receive(frame(T_SETTINGS, 0, 0) + (SETTINGS_ACK if ack else b""), 0.0) == []
    assert conn.take_output() == SETTINGS_ACK
    return conn


def request(conn: H2Connection, stream_id: int = 1, end_stream: bool = False) -> None:
    events = conn.receive(frame(T_HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream_id, REQ_BLOCK), 0.0)
    assert events == [(REQUEST, stream_id, REQ, end_stream)]


def refused(conn: H2Connection, data: bytes) -> H2ConnectionError:
    with pytest.raises(H2ConnectionError) as info:
        conn.receive(data, 0.0)
    return info.value


# --- golden vectors: what we send ------------------------------------------------------------------------------

OUR_SETTINGS = bytes.fromhex(
    "000024" "04" "00" "00000000"  # SETTINGS, 6 settings
    "0001" "00000000"  # HEADER_TABLE_SIZE 0 (we never index, our decoder wants no table either)
    "0002" "00000000"  # ENABLE_PUSH 0
    "0003" "00000064"  # MAX_CONCURRENT_STREAMS 100
    "0004" "00010000"  # INITIAL_WINDOW_SIZE 65536
    "0005" "00010000"  # MAX_FRAME_SIZE 65536
    "0006" "00010000"  # MAX_HEADER_LIST_SIZE 65536
)
CONNECTION_WINDOW_UPDATE = bytes.fromhex("000004" "08" "00" "00000000" "000f0001")  # 2^20 - 65535


def test_server_preface_is_our_settings_and_the_connection_window():
    conn = H2Connection(client_side=False, budget=budget())
    conn.initiate()
    assert conn.take_output() == OUR_SETTINGS + CONNECTION_WINDOW_UPDATE
    assert conn.take_output() == b""


def test_client_preface_starts_with_the_magic():
    conn = H2Connection(client_side=True, budget=budget())
    conn.initiate()
    assert conn.take_output() == PREFACE + OUR_SETTINGS + CONNECTION_WINDOW_UPDATE


def test_preface_with_other_limits_and_no_window_update_at_the_default_connection_window():
    conn = H2Connection(client_side=False, budget=budget(), max_concurrent_streams=7, initial_window=1000,
                        connection_window=65_535, max_frame_size=16_384, max_header_list=8192)
    conn.initiate()
    assert conn.take_output() == frame(T_SETTINGS, 0, 0, b"".join((
        setting(1, 0), setting(2, 0), setting(3, 7), setting(4, 1000), setting(5, 16_384), setting(6, 8192))))


def test_headers_frame():
    conn = client()
    assert conn.open_stream(REQ, end_stream=True) == 1
    assert conn.take_output() == bytes.fromhex("000009" "01" "05" "00000001" "838604022f61010178")
    assert conn.open_stream(REQ) == 3
    assert conn.take_output() == bytes.fromhex("000009" "01" "04" "00000003" "838604022f61010178")


def test_response_headers_and_trailers():
    conn = server()
    request(conn)
    conn.send_headers(1, RESP)
    conn.send_headers(1, TRAIL, end_stream=True)
    assert conn.take_output() == bytes.fromhex(
        "000001" "01" "04" "00000001" "88"  # :status 200, static index 8
        "00000f" "01" "05" "00000001" "000b677270632d7374617475730130"  # grpc-status: 0, literal, END_STREAM
    )


def test_data_is_split_at_the_remotes_max_frame_size():
    conn = server()
    request(conn)
    conn.receive(frame(T_WINDOW, 0, 0, u32(100_000)) + frame(T_WINDOW, 0, 1, u32(100_000)), 0.0)
    conn.send_data(1, b"a" * 40_000, end_stream=True)
    assert conn.take_output() == (
        bytes.fromhex("004000" "00" "00" "00000001") + b"a" * 16_384
        + bytes.fromhex("004000" "00" "00" "00000001") + b"a" * 16_384
        + bytes.fromhex("001c40" "00" "01" "00000001") + b"a" * 7_232  # END_STREAM on the last one only
    )


def test_data_follows_a_larger_max_frame_size_of_the_remote():
    conn = server()
    request(conn)
    conn.receive(frame(T_SETTINGS, 0, 0, setting(5, 20_000)) + frame(T_WINDOW, 0, 0, u32(100_000))
                 + frame(T_WINDOW, 0, 1, u32(100_000)), 0.0)
    conn.take_output()
    conn.send_data(1, memoryview(b"b" * 40_000))
    assert [(t, f, s, len(p)) for t, f, s, p in frames_of(conn.take_output())] == [
        (T_DATA, 0, 1, 20_000), (T_DATA, 0, 1, 20_000)]
    conn.send_data(1, b"c" * 20_000, end_stream=True)  # exactly one frame
    assert conn.take_output() == bytes.fromhex("004e20" "00" "01" "00000001") + b"c" * 20_000


def test_a_large_header_block_is_split_into_continuation_frames():
    conn = client()
    headers = REQ + [(b"x-big", b"v" * 40_000)]
    encoded = block(headers)
    stream_id = conn.open_stream(headers, end_stream=True)
    out = frames_of(conn.take_output())
    assert [(t, f, s, len(p)) for t, f, s, p in out] == [
        (T_HEADERS, END_STREAM, stream_id, 16_384),  # END_STREAM on HEADERS, END_HEADERS on the last CONTINUATION
        (T_CONT, 0, stream_id, 16_384),
        (T_CONT, END_HEADERS, stream_id, len(encoded) - 2 * 16_384),
    ]
    assert b"".join(p for _, _, _, p in out) == encoded


def test_a_header_block_of_exactly_the_max_frame_size_is_one_frame():
    conn = client()
    headers = [(b"x", b"v" * (16_384 - 6))]  # 0x00, name length, name, 3-byte value length, value
    assert len(block(headers)) == 16_384
    conn.open_stream(headers)
    assert [(t, f) for t, f, _, _ in frames_of(conn.take_output())] == [(T_HEADERS, END_HEADERS)]


def test_rst_stream():
    conn = server()
    request(conn)
    assert conn.reset(1) is True
    assert conn.take_output() == bytes.fromhex("000004" "03" "00" "00000001" "00000008")  # CANCEL
    assert conn.reset(1) is False  # not open any more: nothing sent
    assert conn.reset(99, PROTOCOL_ERROR) is False
    assert conn.take_output() == b""


def test_goaway():
    conn = server()
    request(conn, 1)
    request(conn, 5)
    conn.goaway()
    assert conn.take_output() == bytes.fromhex("000008" "07" "00" "00000000" "00000005" "00000000")
    conn.goaway(ENHANCE_YOUR_CALM, last_stream_id=0, debug=b"calm")
    assert conn.take_output() == bytes.fromhex("00000c" "07" "00" "00000000" "00000000" "0000000b") + b"calm"


def test_ping_and_the_ack_echo():
    conn = server()
    assert conn.receive(frame(T_PING, 0, 0, b"12345678"), 0.0) == []
    assert conn.take_output() == bytes.fromhex("000008" "06" "01" "00000000") + b"12345678"
    conn.ping(b"abcdefgh")
    assert conn.take_output() == bytes.fromhex("000008" "06" "00" "00000000") + b"abcdefgh"
    assert conn.receive(frame(T_PING, ACK, 0, b"abcdefgh"), 0.0) == [(PING_ACK, b"abcdefgh")]
    assert conn.take_output() == b""  # an ACK is not answered


def test_the_connection_window_is_given_back_when_half_of_it_was_consumed():
    conn = server(initial_window=1 << 20)  # stream windows out of the way (ACKed in server())
    request(conn)
    half = (1 << 20) // 2
    events = conn.receive(frame(T_DATA, 0, 1, b"d" * 65_536) * 7 + frame(T_DATA, 0, 1, b"d" * 65_535), 0.0)
    assert sum(event[3] for event in events) == half - 1
    assert conn.take_output() == b""  # one byte short of half
    conn.receive(frame(T_DATA, PADDED, 1, b"\x00"), 0.0)  # padding counts: flow length 1, no data
    assert conn.take_output() == bytes.fromhex("000004" "08" "00" "00000000") + u32(half)
    conn.receive(frame(T_DATA, 0, 1, b"d" * 100), 0.0)
    assert conn.take_output() == b""


def test_the_stream_window_is_given_back_by_acknowledge_when_half_of_it_is_owed():
    conn = server()  # initial_window 65536
    request(conn)
    [event] = conn.receive(frame(T_DATA, 0, 1, b"d" * 40_000), 0.0)
    assert event == (DATA, 1, b"d" * 40_000, 40_000, False)
    conn.acknowledge(1, 32_767)
    assert conn.take_output() == b""
    conn.acknowledge(1, 1)
    assert conn.take_output() == bytes.fromhex("000004" "08" "00" "00000001" "00008000")  # 32768
    conn.acknowledge(1, 7_232)
    assert conn.take_output() == b""
    conn.receive(frame(T_DATA, END_STREAM, 1, b"d" * 100), 0.0)
    conn.acknowledge(1, 40_000)  # half-closed (remote): nothing more will come, nothing given back
    conn.acknowledge(7, 40_000)  # unknown stream: ignored
    assert conn.take_output() == b""


def test_the_stream_window_is_enforced_and_given_back():
    conn = server(initial_window=1000)  # acknowledged: streams get 1000
    request(conn)
    assert conn.receive(frame(T_DATA, 0, 1, b"d" * 1000), 0.0)[0][3] == 1000
    conn.acknowledge(1, 1000)
    assert conn.take_output() == frame(T_WINDOW, 0, 1, u32(1000))
    conn.receive(frame(T_DATA, 0, 1, b"d" * 1000), 0.0)
    assert conn.receive(frame(T_DATA, 0, 1, b"d"), 0.0) == [(RESET, 1, FLOW_CONTROL_ERROR, False)]
    assert conn.take_output() == rst(1, FLOW_CONTROL_ERROR)


# --- every connection error of the module -------------------------------------------------------------------

def open_1(conn):
    request(conn, 1)


def open_1_ended(conn):
    request(conn, 1, end_stream=True)


def client_stream(conn):
    conn.open_stream(REQ)
    conn.take_output()


def client_stream_closed(conn):
    conn.open_stream(REQ, end_stream=True)
    conn.receive(frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block(RESP)), 0.0)
    assert not conn.streams


def big_stream_window(conn):
    request(conn, 1)
    conn.receive(frame(T_WINDOW, 0, 1, u32(0x7FFFFFFF - 65_535)), 0.0)


def fresh_server():
    conn = H2Connection(client_side=False, budget=budget())
    conn.initiate()
    conn.take_output()
    return conn


def fresh_client():
    conn = H2Connection(client_side=True, budget=budget())
    conn.initiate()
    conn.take_output()
    return conn


def raising_decoder(conn):
    request(conn, 1)

    class Raising(hpack.HeaderBlockDecoder):
        def decode(self, data, raw=True):
            raise IndexError("out of range")

    conn.decoder = Raising()


# (id, make the connection, set it up, the bytes that break it, error code, the message's template from the source)
CONNECTION_ERRORS = [
    ("not-http2", fresh_server, None, b"GET / HTTP/1.1\r\n\r\n", PROTOCOL_ERROR,
     "the connection did not start with the HTTP/2 client preface"),
    ("preface-without-settings", fresh_server, None, PREFACE + frame(T_PING, 0, 0, b"12345678"), PROTOCOL_ERROR,
     "the connection preface must start with a SETTINGS frame"),
    ("preface-settings-ack", fresh_client, None, SETTINGS_ACK, PROTOCOL_ERROR,
     "the connection preface must start with a SETTINGS frame"),
    ("oversized-frame", server, None, (65_537).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01", FRAME_SIZE_ERROR,
     "a frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {max_frame}"),
    ("interrupted-header-block", server, None, frame(T_HEADERS, 0, 1, REQ_BLOCK[:3]) + frame(T_DATA, 0, 1, b"x"),
     PROTOCOL_ERROR, "a header block was interrupted by another frame (RFC 9113 6.10)"),
    ("continuation-on-another-stream", server, None,
     frame(T_HEADERS, 0, 1, REQ_BLOCK[:3]) + frame(T_CONT, END_HEADERS, 3, REQ_BLOCK[3:]), PROTOCOL_ERROR,
     "CONTINUATION without a header block to continue (RFC 9113 6.10)"),
    ("naked-continuation", server, open_1, frame(T_CONT, END_HEADERS, 1, REQ_BLOCK), PROTOCOL_ERROR,
     "CONTINUATION without a header block to continue (RFC 9113 6.10)"),
    ("data-stream-0", server, None, frame(T_DATA, 0, 0, b"x"), PROTOCOL_ERROR, "DATA on stream 0"),
    ("data-beyond-connection-window", lambda: server(connection_window=65_535, initial_window=1 << 20), open_1,
     frame(T_DATA, 0, 1, b"d" * 65_535) + frame(T_DATA, 0, 1, b"d"), FLOW_CONTROL_ERROR,
     "DATA beyond the connection's flow-control window"),
    ("data-idle-stream", server, None, frame(T_DATA, 0, 3, b"x"), PROTOCOL_ERROR,
     "DATA on stream {stream_id}, which was never opened"),
    ("data-padded-without-pad-length", server, open_1, frame(T_DATA, PADDED, 1), FRAME_SIZE_ERROR,
     "a padded frame has no pad length"),
    ("data-padding-too-long", server, open_1, frame(T_DATA, PADDED, 1, b"\x04abc"), PROTOCOL_ERROR,
     "padding as long as the frame payload (RFC 9113 6.1)"),
    ("headers-padding-too-long", server, None, frame(T_HEADERS, PADDED | END_HEADERS, 1, b"\x01"), PROTOCOL_ERROR,
     "padding as long as the frame payload (RFC 9113 6.1)"),
    ("headers-stream-0", server, None, frame(T_HEADERS, END_HEADERS, 0, REQ_BLOCK), PROTOCOL_ERROR, "HEADERS on stream 0"),
    ("headers-priority-too-short", server, None, frame(T_HEADERS, PRIORITY_FLAG | END_HEADERS, 1, b"\x00\x00\x00\x00"),
     FRAME_SIZE_ERROR, "HEADERS with PRIORITY shorter than 5 bytes"),
    ("headers-priority-eaten-by-padding", server, None,
     frame(T_HEADERS, PRIORITY_FLAG | PADDED | END_HEADERS, 1, b"\x01" + u32(0) + b"\x10"), PROTOCOL_ERROR,
     "padding longer than the header block fragment (RFC 9113 6.2)"),
    ("header-block-too-large-in-headers", lambda: server(max_header_list=1000), None,
     frame(T_HEADERS, 0, 1, b"\x00" * 1001), ENHANCE_YOUR_CALM,
     "a header block of more than {self.max_header_list} bytes (HEADERS + CONTINUATION)"),
    ("header-block-too-large-in-continuation", lambda: server(max_header_list=1000), None,
     frame(T_HEADERS, 0, 1, b"\x00" * 600) + frame(T_CONT, 0, 1, b"\x00" * 401), ENHANCE_YOUR_CALM,
     "a header block of more than {self.max_header_list} bytes (HEADERS + CONTINUATION)"),
    ("header-list-too-large", lambda: server(max_header_list=100), None,
     frame(T_HEADERS, END_HEADERS, 1, block([(b"x-long", b"v" * 70)])), ENHANCE_YOUR_CALM,
     "header list too large: {exc}"),
    ("hpack-bad-index", server, None, frame(T_HEADERS, END_HEADERS, 1, b"\xff\x00"), COMPRESSION_ERROR,
     "HPACK: {exc}"),
    ("hpack-truncated", server, None, frame(T_HEADERS, END_HEADERS, 1, REQ_BLOCK[:-1]), COMPRESSION_ERROR,
     "HPACK: {exc}"),
    ("hpack-table-size-beyond-our-setting", server, None, frame(T_HEADERS, END_HEADERS, 1, b"\x21" + REQ_BLOCK),
     COMPRESSION_ERROR, "HPACK: {exc}"),
    ("hpack-index-error", server, raising_decoder, frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block(TRAIL)),
     COMPRESSION_ERROR, "HPACK: header block ends inside a field"),
    ("headers-on-even-stream-at-a-server", server, None, frame(T_HEADERS, END_HEADERS, 2, REQ_BLOCK), PROTOCOL_ERROR,
     "HEADERS on stream {stream_id}, which the remote may not open"),
    ("headers-on-even-stream-at-a-client", client, client_stream, frame(T_HEADERS, END_HEADERS, 2, block(RESP)),
     PROTOCOL_ERROR, "HEADERS on stream {stream_id}, which the remote may not open"),
    ("headers-on-our-idle-stream-at-a-client", client, client_stream, frame(T_HEADERS, END_HEADERS, 3, block(RESP)),
     PROTOCOL_ERROR, "HEADERS on stream {stream_id}, which the remote may not open"),
    ("headers-on-closed-stream-at-a-client", client, client_stream_closed,
     frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block(TRAIL)), STREAM_CLOSED,
     "HEADERS on closed stream {stream_id}"),
    ("headers-on-closed-stream-at-a-server", server, None,
     frame(T_HEADERS, END_HEADERS, 3, REQ_BLOCK) + frame(T_HEADERS, END_HEADERS, 1, REQ_BLOCK), STREAM_CLOSED,
     "HEADERS on closed stream {stream_id} (stream ids only grow)"),
    ("rst-stream-length", server, open_1, frame(T_RST, 0, 1, b"\x00\x00\x00"), FRAME_SIZE_ERROR,
     "RST_STREAM of {length} bytes"),
    ("rst-stream-0", server, None, frame(T_RST, 0, 0, u32(CANCEL)), PROTOCOL_ERROR, "RST_STREAM on stream 0"),
    ("rst-stream-idle", server, None, frame(T_RST, 0, 1, u32(CANCEL)), PROTOCOL_ERROR,
     "RST_STREAM on stream {stream_id}, which was never opened"),
    ("ping-length", server, None, frame(T_PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR, "PING of {length} bytes"),
    ("ping-on-a-stream", server, open_1, frame(T_PING, 0, 1, b"12345678"), PROTOCOL_ERROR, "PING on a stream"),
    ("priority-stream-0", server, None, frame(T_PRIORITY, 0, 0, u32(1) + b"\x10"), PROTOCOL_ERROR,
     "PRIORITY on stream 0"),
    ("priority-length-on-idle-stream", server, None, frame(T_PRIORITY, 0, 3, u32(1)), FRAME_SIZE_ERROR,
     "a malformed PRIORITY frame on idle stream {stream_id} (RFC 9113 6.4: no RST_STREAM for an idle stream)"),
    ("priority-self-dependent-on-idle-stream", server, None, frame(T_PRIORITY, 0, 3, u32(3) + b"\x10"),
     PROTOCOL_ERROR,
     "a malformed PRIORITY frame on idle stream {stream_id} (RFC 9113 6.4: no RST_STREAM for an idle stream)"),
    ("goaway-on-a-stream", server, open_1, frame(T_GOAWAY, 0, 1, u32(0) + u32(0)), PROTOCOL_ERROR, "GOAWAY on a stream"),
    ("goaway-length", server, None, frame(T_GOAWAY, 0, 0, b"\x00" * 7), FRAME_SIZE_ERROR, "GOAWAY of {length} bytes"),
    ("push-promise", client, client_stream, frame(T_PUSH, END_HEADERS, 1, u32(2) + REQ_BLOCK), PROTOCOL_ERROR,
     "PUSH_PROMISE, but push is disabled (SETTINGS_ENABLE_PUSH 0)"),
    ("push-promise-to-a-server", server, open_1, frame(T_PUSH, END_HEADERS, 1, u32(2) + REQ_BLOCK), PROTOCOL_ERROR,
     "PUSH_PROMISE, but push is disabled (SETTINGS_ENABLE_PUSH 0)"),
    ("settings-on-a-stream", server, open_1, frame(T_SETTINGS, 0, 1), PROTOCOL_ERROR, "SETTINGS on a stream"),
    ("settings-ack-with-payload", server, None, frame(T_SETTINGS, ACK, 0, setting(3, 1)), FRAME_SIZE_ERROR,
     "SETTINGS ACK with a payload"),
    ("settings-length", server, None, frame(T_SETTINGS, 0, 0, b"\x00" * 5), FRAME_SIZE_ERROR,
     "SETTINGS of {length} bytes (not a multiple of 6)"),
    ("settings-initial-window-too-large", server, None, frame(T_SETTINGS, 0, 0, setting(4, 1 << 31)),
     FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE {value} exceeds 2^31-1"),
    ("settings-initial-window-overflows-a-stream", server, big_stream_window, frame(T_SETTINGS, 0, 0, setting(4, 65_536)),
     FLOW_CONTROL_ERROR, "a stream's flow-control window exceeds 2^31-1"),
    ("settings-max-frame-too-small", server, None, frame(T_SETTINGS, 0, 0, setting(5, 16_383)), PROTOCOL_ERROR,
     "SETTINGS_MAX_FRAME_SIZE {value} outside 2^14..2^24-1"),
    ("settings-max-frame-too-large", server, None, frame(T_SETTINGS, 0, 0, setting(5, 1 << 24)), PROTOCOL_ERROR,
     "SETTINGS_MAX_FRAME_SIZE {value} outside 2^14..2^24-1"),
    ("settings-enable-push-2", server, None, frame(T_SETTINGS, 0, 0, setting(2, 2)), PROTOCOL_ERROR,
     "SETTINGS_ENABLE_PUSH {value}"),
    ("settings-enable-push-1-from-a-server", client, None, frame(T_SETTINGS, 0, 0, setting(2, 1)), PROTOCOL_ERROR,
     "SETTINGS_ENABLE_PUSH {value}"),
    ("window-update-length", server, None, frame(T_WINDOW, 0, 0, b"\x00\x00\x01"), FRAME_SIZE_ERROR,
     "WINDOW_UPDATE of {length} bytes"),
    ("window-update-0-on-the-connection", server, None, frame(T_WINDOW, 0, 0, u32(0)), PROTOCOL_ERROR,
     "WINDOW_UPDATE of 0 on the connection"),
    ("window-update-connection-overflow", server, None, frame(T_WINDOW, 0, 0, u32(0x7FFFFFFF - 65_535 + 1)),
     FLOW_CONTROL_ERROR, "the connection's flow-control window exceeds 2^31-1"),
    ("window-update-idle-stream", server, None, frame(T_WINDOW, 0, 1, u32(1)), PROTOCOL_ERROR,
     "WINDOW_UPDATE on stream {stream_id}, which was never opened"),
    ("flood", lambda: server(flood=FloodBudget(3, 1, 0.0)), None, frame(T_PING, 0, 0, b"12345678") * 3,
     ENHANCE_YOUR_CALM, "flood of {what}: more than {self.budget.burst:g} frames that carry no request or response data "),
]


def _template_regex(template: str) -> str:
    return "".join(".+?" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]*\})", template))


def _run_connection_error(make, setup, data) -> H2ConnectionError:
    conn = make()
    if setup is not None:
        setup(conn)
    return refused(conn, data)


@pytest.mark.parametrize(("make", "setup", "data", "code", "template"),
                         [pytest.param(*case[1:], id=case[0]) for case in CONNECTION_ERRORS])
def test_connection_errors(make, setup, data, code, template):
    error = _run_connection_error(make, setup, data)
    assert error.error_code == code
    assert re.match(_template_regex(template), error.reason), error.reason


# h2conn.py's text (read from the file: the module may be the compiled one, whose source inspect cannot show)
_SOURCE = (Path(h2conn.__file__).parent / "h2conn.py").read_text()


def test_every_connection_error_of_the_module_has_a_case():
    """Each `raise H2ConnectionError(CODE, "message")` in h2conn.py is matched by at least one case above (with
    its code): a new error path needs a new case."""
    source = _SOURCE
    raised = re.findall(r'raise H2ConnectionError\(\s*([A-Z_]+),\s*f?"((?:[^"\\]|\\.)*)"', source)
    assert len(raised) >= 40
    covered = {(code, template) for _, _, _, _, code, template in CONNECTION_ERRORS}
    missing = [(name, message) for name, message in raised
               if not any(getattr(h2conn, name) == code and re.match(_template_regex(message), template)
                          for code, template in covered)]
    assert not missing, f"connection errors without a test case: {missing}"


# --- every stream error of the module ------------------------------------------------------------------------

def _stream_error_cases():
    """(id, connection after setup, the bytes, the stream, the code, whether a RESET event comes out)"""
    cases = []

    def add(name, make, setup, data, stream_id, code, event=True):
        cases.append(pytest.param(make, setup, data, stream_id, code, event, id=name))

    add("data-on-half-closed-remote", server, open_1_ended, frame(T_DATA, 0, 1, b"x"), 1, STREAM_CLOSED)
    add("data-before-the-response-head", client, client_stream, frame(T_DATA, 0, 1, b"x"), 1, PROTOCOL_ERROR)
    add("data-beyond-the-stream-window", server, open_1, frame(T_DATA, 0, 1, b"x" * 65_536) * 2, 1, FLOW_CONTROL_ERROR)
    add("headers-self-dependent", server, open_1,
        frame(T_HEADERS, PRIORITY_FLAG | END_HEADERS | END_STREAM, 1, u32(1) + b"\x10" + block(TRAIL)), 1, PROTOCOL_ERROR)
    add("headers-self-dependent-opening-a-stream", server, None,
        frame(T_HEADERS, PRIORITY_FLAG | END_HEADERS, 1, u32(1) + b"\x10" + REQ_BLOCK), 1, PROTOCOL_ERROR, False)
    add("headers-beyond-max-concurrent-streams", lambda: server(max_concurrent_streams=1), open_1,
        frame(T_HEADERS, END_HEADERS, 3, REQ_BLOCK), 3, REFUSED_STREAM, False)
    add("headers-on-half-closed-remote", server, open_1_ended,
        frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block(TRAIL)), 1, STREAM_CLOSED)
    add("informational-with-end-stream", client, client_stream,
        frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block([(b":status", b"103")])), 1, PROTOCOL_ERROR)
    add("trailers-without-end-stream", server, open_1, frame(T_HEADERS, END_HEADERS, 1, block(TRAIL)), 1, PROTOCOL_ERROR)
    add("priority-length", server, open_1, frame(T_PRIORITY, 0, 1, u32(0)), 1, FRAME_SIZE_ERROR)
    add("priority-self-dependent", server, open_1, frame(T_PRIORITY, 0, 1, u32(1) + b"\x10"), 1, PROTOCOL_ERROR)
    add("window-update-0-on-a-stream", server, open_1, frame(T_WINDOW, 0, 1, u32(0)), 1, PROTOCOL_ERROR)
    add("window-update-stream-overflow", server, open_1, frame(T_WINDOW, 0, 1, u32(0x7FFFFFFF - 65_535 + 1)), 1,
        FLOW_CONTROL_ERROR)
    return cases


STREAM_ERROR_CASES = _stream_error_cases()


@pytest.mark.parametrize(("make", "setup", "data", "stream_id", "code", "event"), STREAM_ERROR_CASES)
def test_stream_errors(make, setup, data, stream_id, code, event):
    conn = make()
    if setup is not None:
        setup(conn)
    conn.take_output()
    events = conn.receive(data, 0.0)
    assert [e for e in events if e[0] == RESET] == ([(RESET, stream_id, code, False)] if event else [])
    assert conn.take_output() == rst(stream_id, code)
    assert stream_id not in conn.streams
    # the stream is remembered as reset: its late frames are ignored quietly
    assert conn.receive(frame(T_DATA, 0, stream_id, b"late"), 0.0) == []
    assert conn.take_output() == b""


def test_every_stream_error_site_of_the_module_has_a_case():
    sites = _SOURCE.count("self._stream_error(")
    assert sites == 12, f"{sites} calls of _stream_error in h2conn.py: give a new one a case in STREAM_ERROR_CASES"
    assert len(STREAM_ERROR_CASES) == 13  # REFUSED_STREAM and the two self-dependency cases share sites


def test_data_on_other_closed_streams_draws_stream_closed():
    conn = server()
    request(conn, 1, end_stream=True)
    conn.send_headers(1, RESP, end_stream=True)
    assert 1 not in conn.streams
    conn.take_output()
    assert conn.receive(frame(T_DATA, 0, 1, b"x"), 0.0) == []
    assert conn.take_output() == rst(1, STREAM_CLOSED)
    assert conn.receive(frame(T_DATA, 0, 1, b"x"), 0.0) == []  # now it is one we reset: quiet
    assert conn.take_output() == b""


def test_frames_on_a_stream_we_reset_are_ignored():
    conn = server()
    request(conn, 1)
    conn.reset(1)
    conn.take_output()
    late = (frame(T_DATA, 0, 1, b"x" * 10) + frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block(TRAIL))
            + frame(T_WINDOW, 0, 1, u32(5)) + frame(T_PRIORITY, 0, 1, u32(0) + b"\x10") + frame(T_RST, 0, 1, u32(CANCEL)))
    assert conn.receive(late, 0.0) == []
    assert conn.take_output() == b""
    assert conn.reset_by_remote == []


def test_a_remote_reset_ends_the_stream():
    conn = server()
    request(conn, 1)
    assert conn.receive(rst(1, CANCEL), 0.0) == [(RESET, 1, CANCEL, True)]
    assert conn.reset_by_remote == [1]
    assert conn.receive(rst(1, CANCEL), 0.0) == []  # closed: a second reset is ignored
    assert conn.reset_by_remote == []
    assert conn.take_output() == b""  # never a RST_STREAM in answer to one (RFC 9113 5.4.2)
    with pytest.raises(StreamGone):
        conn.send_headers(1, RESP)


# --- flood budget -------------------------------------------------------------------------------------------

def reset_1(conn):
    request(conn, 1)
    conn.reset(1)


def closed_1(conn):
    request(conn, 1, end_stream=True)
    conn.send_headers(1, RESP, end_stream=True)


# name: (set up, the frames, change of the budget, frames counted as control frames)
FLOOD_CASES = {
    # spend
    "settings-after-the-first": (None, frame(T_SETTINGS, 0, 0, setting(3, 10)), -1, 1),
    "settings-ack": (None, SETTINGS_ACK, -1, 1),
    "ping": (None, frame(T_PING, 0, 0, b"12345678"), -1, 1),
    "ping-ack": (None, frame(T_PING, ACK, 0, b"12345678"), -1, 1),
    "priority": (None, frame(T_PRIORITY, 0, 3, u32(0) + b"\x10"), -1, 1),
    "rst-stream": (open_1, rst(1, CANCEL), -1, 1),
    "window-update": (open_1, frame(T_WINDOW, 0, 0, u32(1)) + frame(T_WINDOW, 0, 1, u32(1)), -2, 2),
    "goaway": (None, frame(T_GOAWAY, 0, 0, u32(0) + u32(0)), -1, 1),
    "unknown-type": (None, frame(0x20, 0xFF, 7, b"whatever"), -1, 1),
    "empty-data": (open_1, frame(T_DATA, 0, 1), -1, 1),
    "continuation": (None, frame(T_HEADERS, 0, 1, REQ_BLOCK[:2]) + frame(T_CONT, 0, 1, REQ_BLOCK[2:4])
                     + frame(T_CONT, END_HEADERS, 1, REQ_BLOCK[4:]), -2 + 1, 2),  # two spend, the request earns
    "data-on-a-closed-stream": (closed_1, frame(T_DATA, 0, 1, b"x"), -1, 1),
    "data-on-a-stream-we-reset": (reset_1, frame(T_DATA, 0, 1, b"x"), -1, 1),
    "headers-on-a-stream-we-reset": (reset_1, frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block(TRAIL)), -1, 1),
    "informational-response": (client_stream, frame(T_HEADERS, END_HEADERS, 1, block([(b":status", b"100")])), -1, 1),
    # free
    "empty-data-with-end-stream": (open_1, frame(T_DATA, END_STREAM, 1), 0, 0),
    "refused-stream": (open_1, frame(T_HEADERS, END_HEADERS, 3, REQ_BLOCK), 0, 0),
    # earn
    "data": (open_1, frame(T_DATA, 0, 1, b"x"), +1, 0),
    "padded-data": (open_1, frame(T_DATA, PADDED, 1, b"\x02x\x00\x00"), +1, 0),
    "request": (None, frame(T_HEADERS, END_HEADERS, 1, REQ_BLOCK), +1, 0),
    "response-and-trailers": (client_stream, frame(T_HEADERS, END_HEADERS, 1, block(RESP))
                              + frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block(TRAIL)), +2, 0),
}


@pytest.mark.parametrize(("setup", "data", "delta", "spends"),
                         [pytest.param(*case, id=name) for name, case in FLOOD_CASES.items()])
def test_which_frames_spend_and_which_earn(setup, data, delta, spends):
    """Frames that carry no request or response spend a token, delivered requests, responses and DATA earn one."""
    conn = client() if setup is client_stream else server(max_concurrent_streams=1)
    if setup is not None:
        setup(conn)
    conn.budget.tokens, conn.earned = 50.0, 0
    counted = conn.control_frames
    conn.receive(data, 0.0)
    assert (tokens(conn) - 50.0, conn.control_frames - counted) == (delta, spends)


def test_the_first_settings_is_free_and_later_ones_spend():
    conn = H2Connection(client_side=False, budget=FloodBudget(5, 1, 0.0))
    conn.initiate()
    conn.receive(PREFACE + frame(T_SETTINGS, 0, 0, setting(3, 10)), 0.0)
    assert conn.budget.tokens == 5.0 and conn.control_frames == 0
    conn.receive(frame(T_SETTINGS, 0, 0, setting(3, 10)), 0.0)
    assert conn.budget.tokens == 4.0 and conn.control_frames == 1


def test_a_flood_is_enhance_your_calm_after_the_burst():
    """ported: test_the_budget_refills_with_time_and_useful_frames"""
    ping = frame(T_PING, 0, 0, b"\x00" * 8)
    conn = server(ack=False, flood=FloodBudget(10, 5, 0.0))
    conn.receive(ping * 10, 0.0)
    error = refused(conn, ping)
    assert error.error_code == ENHANCE_YOUR_CALM and "flood of PING frames" in error.reason
    conn = server(ack=False, flood=FloodBudget(10, 5, 0.0))
    conn.receive(ping * 10, 0.0)
    conn.receive(ping * 5, 1.0)  # one second later: 5 more
    request(conn, 1)  # a useful frame earns one
    conn.receive(frame(T_DATA, 0, 1, b"x") * 2, 1.0)  # and so does DATA with payload: 3 in all
    conn.receive(ping * 3, 1.0)
    assert refused(conn, ping).error_code == ENHANCE_YOUR_CALM
    assert conn.control_frames == 10 + 5 + 3 + 1


@pytest.mark.parametrize(("name", "data"), [
    ("SETTINGS frames", frame(T_SETTINGS, 0, 0)),
    ("empty DATA frames", frame(T_DATA, 0, 1)),
    ("CONTINUATION frames", frame(T_HEADERS, 0, 5, REQ_BLOCK[:1]) + frame(T_CONT, 0, 5, REQ_BLOCK[1:2])),
    ("unknown frames", frame(0x77, 0, 0)),
    ("frames on closed streams", frame(T_DATA, 0, 3, b"x")),
    ("WINDOW_UPDATE frames", frame(T_WINDOW, 0, 0, u32(1))),
    ("PRIORITY frames", frame(T_PRIORITY, 0, 7, u32(0) + b"\x01")),
    ("GOAWAY frames", frame(T_GOAWAY, 0, 0, u32(0) + u32(0))),
    ("RST_STREAM frames", rst(1, CANCEL)),
    ("PING frames", frame(T_PING, 0, 0, b"12345678")),
], ids=lambda value: value if isinstance(value, str) else "")
def test_the_flood_error_names_the_frames(name, data):
    conn = server(flood=FloodBudget(10, 0, 0.0))
    request(conn, 1)
    request(conn, 3, end_stream=True)
    conn.send_headers(3, RESP, end_stream=True)  # stream 3 is closed
    conn.budget.tokens, conn.earned = 0.0, 0
    error = refused(conn, data)
    assert error.error_code == ENHANCE_YOUR_CALM and error.reason.startswith(f"flood of {name}:")


# --- size limits ----------------------------------------------------------------------------------------------

def test_a_header_block_past_the_limit_is_cut_before_hpack_sees_it():
    """ported: test_a_header_block_past_the_limit_is_cut"""
    conn = server(max_header_list=5000)

    class Untouchable(hpack.HeaderBlockDecoder):
        def decode(self, data, raw=True):
            raise AssertionError("the decoder was called")

    conn.decoder = Untouchable(max_header_list_size=5000)
    conn.receive(frame(T_HEADERS, 0, 1, b"\xff" * 1000), 0.0)  # garbage: HPACK would refuse it
    for _ in range(4):
        conn.receive(frame(T_CONT, 0, 1, b"\xff" * 1000), 0.0)
    error = refused(conn, frame(T_CONT, END_HEADERS, 1, b"\xff"))
    assert error.error_code == ENHANCE_YOUR_CALM


def test_a_header_block_up_to_the_limit_is_decoded():
    conn = server(max_header_list=5000)
    headers = REQ + [(b"x-pad", b"p" * 1000)]
    encoded = block(headers)
    data = frame(T_HEADERS, 0, 1, encoded[:10]) + frame(T_CONT, 0, 1, encoded[10:500]) + frame(T_CONT, END_HEADERS, 1, encoded[500:])
    assert conn.receive(data, 0.0) == [(REQUEST, 1, headers, False)]


def test_the_max_frame_size_is_judged_from_the_frame_header_alone():
    """ported: the oversized-frame and oversized-continuation cases: FRAME_SIZE_ERROR before the payload arrives"""
    for header in ((70_000).to_bytes(3, "big") + bytes((T_DATA, 0)) + u32(1),
                   (70_000).to_bytes(3, "big") + bytes((T_CONT, 0)) + u32(1)):
        conn = server(max_frame_size=1 << 16)
        conn.receive(header[:8], 0.0)
        assert conn.partial
        error = refused(conn, header[8:])
        assert error.error_code == FRAME_SIZE_ERROR
    conn = server(max_frame_size=16_384)
    assert refused(conn, frame(T_DATA, 0, 1, b"x" * 16_385)[:9]).error_code == FRAME_SIZE_ERROR
    conn = server(max_frame_size=16_384)  # in the middle of a header block too
    conn.receive(frame(T_HEADERS, 0, 1, REQ_BLOCK[:3]), 0.0)
    assert refused(conn, frame(T_CONT, 0, 1, b"x" * 16_385)[:9]).error_code == FRAME_SIZE_ERROR


def test_a_frame_of_exactly_the_max_frame_size_is_accepted():
    conn = server(max_frame_size=16_384)
    request(conn)
    assert conn.receive(frame(T_DATA, 0, 1, b"x" * 16_384), 0.0)[0][3] == 16_384


# --- partial --------------------------------------------------------------------------------------------------

def test_partial_preface_frame_header_frame_and_header_block():
    """ported: test_partial_frames_and_header_blocks_are_reported"""
    conn = fresh_server()
    assert not conn.partial
    assert conn.receive(PREFACE[:10], 0.0) == []
    assert conn.partial and not conn.preface_done
    conn.receive(PREFACE[10:] + frame(T_SETTINGS, 0, 0)[:4], 0.0)  # the preface, then part of a frame header
    assert conn.partial and not conn.preface_done
    conn.receive(frame(T_SETTINGS, 0, 0)[4:], 0.0)
    assert conn.preface_done and not conn.partial
    request(conn)
    data = frame(T_DATA, 0, 1, b"x" * 100)
    assert conn.receive(data[:50], 0.0) == []
    assert conn.partial
    assert conn.receive(data[50:], 0.0) == [(DATA, 1, b"x" * 100, 100, False)]
    assert not conn.partial
    conn.receive(frame(T_HEADERS, 0, 3, REQ_BLOCK[:4]), 0.0)  # HEADERS without END_HEADERS
    assert conn.partial
    conn.receive(frame(T_CONT, 0, 3, REQ_BLOCK[4:6]), 0.0)
    assert conn.partial
    assert conn.receive(frame(T_CONT, END_HEADERS, 3, REQ_BLOCK[6:]), 0.0) == [(REQUEST, 3, REQ, False)]
    assert not conn.partial


def test_a_client_has_no_preface_to_wait_for():
    conn = fresh_client()
    assert not conn.partial
    conn.receive(frame(T_SETTINGS, 0, 0)[:3], 0.0)
    assert conn.partial and not conn.preface_done


# --- reset_by_remote --------------------------------------------------------------------------------------------

def test_reset_by_remote_lists_the_streams_reset_in_one_batch():
    conn = server()
    data = (frame(T_HEADERS, END_HEADERS, 1, REQ_BLOCK) + frame(T_HEADERS, END_HEADERS, 3, REQ_BLOCK)
            + frame(T_HEADERS, END_HEADERS, 5, REQ_BLOCK) + rst(1, CANCEL) + rst(3, CANCEL))
    events = conn.receive(data, 0.0)
    assert [e[:2] for e in events] == [(REQUEST, 1), (REQUEST, 3), (REQUEST, 5), (RESET, 1), (RESET, 3)]
    assert conn.reset_by_remote == [1, 3]
    assert set(conn.streams) == {5}
    conn.receive(frame(T_PING, 0, 0, b"12345678"), 0.0)
    assert conn.reset_by_remote == []
    conn.receive(rst(5, CANCEL)[:5], 0.0)
    assert conn.reset_by_remote == []
    conn.receive(rst(5, CANCEL)[5:], 0.0)
    assert conn.reset_by_remote == [5]


# --- a realistic client, cut anywhere -----------------------------------------------------------------------------

def h2_client_bytes() -> bytes:
    """A realistic client stream (made by the h2 package): preface + SETTINGS, requests with data, resets, pings."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for index in range(5):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(k.decode(), v.decode()) for k, v in REQ] + [("x-pad", "p" * (index * 3000))])
        data = b"d" * (index * 3000 + 1)
        for start in range(0, len(data), 16_384):
            chunk = data[start : start + 16_384]
            conn.send_data(stream_id, chunk, end_stream=index % 2 == 0 and start + 16_384 >= len(data))
        if index % 2:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        conn.ping(b"12345678")
    return conn.data_to_send()


H2_CLIENT_BYTES = h2_client_bytes()


def feed(conn: H2Connection, pieces) -> tuple[list[tuple], list[int], bytes]:
    events, resets, out = [], [], b""
    for piece in pieces:
        events += conn.receive(piece, 0.0)
        resets += conn.reset_by_remote
        out += conn.take_output()
    return events, resets, out


def whole_client_stream_result():
    conn = fresh_server()
    return feed(conn, [H2_CLIENT_BYTES]), conn


def test_a_whole_client_stream_is_read_correctly():
    """ported: test_a_whole_client_stream_is_read_correctly"""
    (events, resets, out), conn = whole_client_stream_result()
    assert conn.preface_done and not conn.partial
    assert [e[1] for e in events if e[0] == REQUEST] == [1, 3, 5, 7, 9]
    assert [e[1:] for e in events if e[0] == RESET] == [(3, CANCEL, True), (7, CANCEL, True)]
    assert resets == [3, 7]
    assert {e[1]: e[2][-1] for e in events if e[0] == REQUEST}[9] == (b"x-pad", b"p" * 12_000)
    data: dict[int, int] = {}
    for event in events:
        if event[0] == DATA:
            data[event[1]] = data.get(event[1], 0) + len(event[2])
    assert data == {1: 1, 3: 3001, 5: 6001, 7: 9001, 9: 12_001}
    assert [f for f in frames_of(out) if f[0] != T_WINDOW] == [(T_SETTINGS, ACK, 0, b"")] + [(T_PING, ACK, 0, b"12345678")] * 5


@given(st.lists(st.integers(min_value=1, max_value=len(H2_CLIENT_BYTES) - 1), max_size=30))
@settings(max_examples=100, deadline=None)
def test_any_cut_of_the_reads_gives_the_same_events(cuts):
    """ported: test_any_cut_of_the_reads_gives_the_same_result (and the events, not only the streams)"""
    (whole_events, whole_resets, whole_out), _ = whole_client_stream_result()
    bounds = [0, *sorted(set(cuts)), len(H2_CLIENT_BYTES)]
    conn = fresh_server()
    events, resets, out = feed(conn, [H2_CLIENT_BYTES[a:b] for a, b in zip(bounds, bounds[1:])])
    assert events == whole_events and resets == whole_resets and not conn.partial
    assert [f for f in frames_of(out) if f[0] != T_WINDOW] == [f for f in frames_of(whole_out) if f[0] != T_WINDOW]


def small_conversation() -> bytes:
    """Every frame type the server side reads, with padding, priority and a header block in three frames."""
    trailers = block(TRAIL)
    return b"".join((
        PREFACE, frame(T_SETTINGS, 0, 0, setting(4, 100_000) + setting(0x99, 1)), SETTINGS_ACK,
        frame(T_HEADERS, PADDED | PRIORITY_FLAG, 1, b"\x03" + u32(0) + b"\x10" + REQ_BLOCK[:3] + b"\x00" * 3),
        frame(T_CONT, 0, 1, REQ_BLOCK[3:5]), frame(T_CONT, END_HEADERS, 1, REQ_BLOCK[5:]),
        frame(T_DATA, PADDED, 1, b"\x02hello\x00\x00"), frame(T_DATA, 0, 1, b"world"),
        frame(T_PRIORITY, 0, 3, u32(1) + b"\x20"), frame(T_WINDOW, 0, 0, u32(1000)), frame(T_WINDOW, 0, 1, u32(1000)),
        frame(T_PING, 0, 0, b"pingpong"), frame(0x42, 0x3, 0, b"unknown"),
        frame(T_HEADERS, END_HEADERS, 3, REQ_BLOCK), rst(3, CANCEL),
        frame(T_HEADERS, END_HEADERS | END_STREAM, 1, trailers), frame(T_GOAWAY, 0, 0, u32(3) + u32(0) + b"bye"),
    ))


def test_frames_cut_at_every_byte_boundary():
    data = small_conversation()
    whole = feed(fresh_server(), [data])
    assert [e[0] for e in whole[0]] == [WINDOW, REQUEST, DATA, DATA, WINDOW, WINDOW, REQUEST, RESET, TRAILERS, GOAWAY]
    assert whole[0][2] == (DATA, 1, b"hello", 8, False)
    assert whole[0][-1] == (GOAWAY, NO_ERROR, 3, b"bye")
    conn = fresh_server()
    partial = []
    byte_by_byte = [data[i : i + 1] for i in range(len(data))]
    events, resets, out = [], [], b""
    for piece in byte_by_byte:
        events += conn.receive(piece, 0.0)
        resets += conn.reset_by_remote
        out += conn.take_output()
        partial.append(conn.partial)
    assert (events, resets, out) == whole
    assert not partial[-1] and partial.count(False) < len(data) // 4
    for cut in range(1, len(data)):  # and every two-piece cut
        assert feed(fresh_server(), [data[:cut], data[cut:]]) == whole


# --- robustness -------------------------------------------------------------------------------------------------

@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=50), st.booleans())
@settings(max_examples=300, deadline=None)
def test_random_bytes_only_ever_raise_h2_connection_error(data, step, client_side):
    """ported: test_random_bytes_only_ever_raise_frame_abuse (after a valid preface, so that frames are read)"""
    conn = H2Connection(client_side=client_side, budget=budget(50, 10))
    conn.initiate()
    data = (b"" if client_side else PREFACE) + frame(T_SETTINGS, 0, 0) + data
    try:
        for start in range(0, len(data), step):
            conn.receive(data[start : start + step], 0.0)
    except H2ConnectionError:
        pass


frame_types = st.one_of(st.integers(0, 10), st.sampled_from([0x20, 0xFF]))
random_frames = st.lists(
    st.tuples(frame_types, st.integers(0, 255), st.integers(0, 9), st.binary(max_size=40)).map(lambda t: frame(*t)),
    max_size=30,
)


@given(random_frames, st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_frames_keep_the_books_straight(frames, client_side):
    """Well-framed random frames: only H2ConnectionError escapes, and the connection window is accounted exactly."""
    conn = H2Connection(client_side=client_side, budget=budget(10_000, 10), connection_window=65_535)
    conn.initiate()
    conn.take_output()
    if client_side:
        conn.open_stream(REQ)
    conn.receive((b"" if client_side else PREFACE) + frame(T_SETTINGS, 0, 0), 0.0)
    given_back = 0
    flow = 0
    try:
        for data in frames:
            if data[3] == T_DATA:
                flow += int.from_bytes(data[:3], "big")
            conn.receive(data, 0.0)
            given_back += sum(int.from_bytes(p, "big") for t, _, s, p in frames_of(conn.take_output()) if t == T_WINDOW and s == 0)
            assert conn._recv_window == 65_535 - flow + given_back
            assert conn.partial == bool(conn._block_stream)
    except H2ConnectionError:
        pass


# --- stream states and settings -----------------------------------------------------------------------------------

def test_informational_responses_are_skipped():
    conn = client()
    stream_id = conn.open_stream(REQ, end_stream=True)
    events = conn.receive(
        frame(T_HEADERS, END_HEADERS, stream_id, block([(b":status", b"100")]))
        + frame(T_HEADERS, END_HEADERS, stream_id, block([(b":status", b"103"), (b"link", b"</a>")]))
        + frame(T_HEADERS, END_HEADERS, stream_id, block(RESP + [(b"content-type", b"application/grpc")]))
        + frame(T_DATA, 0, stream_id, b"body")
        + frame(T_HEADERS, END_HEADERS | END_STREAM, stream_id, block(TRAIL)), 0.0)
    assert events == [
        (RESPONSE, stream_id, RESP + [(b"content-type", b"application/grpc")], False),
        (DATA, stream_id, b"body", 4, False),
        (TRAILERS, stream_id, TRAIL, True),
    ]
    assert not conn.streams


def test_a_response_with_end_stream_closes_the_stream():
    conn = client()
    stream_id = conn.open_stream(REQ)
    assert conn.receive(frame(T_HEADERS, END_HEADERS | END_STREAM, stream_id, block(RESP)), 0.0) == [
        (RESPONSE, stream_id, RESP, True)]
    assert conn.window(stream_id) == 65_535  # half-closed (remote): we may still send
    conn.send_data(stream_id, b"", end_stream=True)
    assert not conn.streams and conn.window(stream_id) == 0


def test_trailers_without_end_stream_are_refused():
    conn = server()
    request(conn)
    assert conn.receive(frame(T_HEADERS, END_HEADERS, 1, block(TRAIL)), 0.0) == [(RESET, 1, PROTOCOL_ERROR, False)]
    assert conn.take_output() == rst(1, PROTOCOL_ERROR)


def test_initial_window_size_changes_apply_to_open_streams_even_below_zero():
    conn = server()
    request(conn, 1)
    request(conn, 3)
    assert conn.window(1) == 65_535
    assert conn.receive(frame(T_SETTINGS, 0, 0, setting(4, 100)), 0.0) == [(WINDOW, 0)]
    assert conn.take_output() == SETTINGS_ACK
    assert conn.window(1) == conn.window(3) == 100
    conn.send_data(1, b"x" * 100)
    with pytest.raises(ValueError):
        conn.send_data(3, b"x" * 101)
    conn.receive(frame(T_SETTINGS, 0, 0, setting(4, 0)), 0.0)
    assert conn.streams[1].send_window == -100 and conn.window(1) == 0 and conn.window(3) == 0
    assert conn.receive(frame(T_WINDOW, 0, 1, u32(150)), 0.0) == [(WINDOW, 1)]
    assert conn.window(1) == 50
    assert conn.receive(frame(T_SETTINGS, 0, 0, setting(4, 0)), 0.0) == []  # no change, no event
    request(conn, 5)
    assert conn.window(5) == 0  # new streams start at the remote's current value
    conn.receive(frame(T_SETTINGS, 0, 0, setting(4, 70_000)), 0.0)
    assert (conn.window(1), conn.window(3), conn.window(5)) == (65_535 - 100, 65_535 - 100, 65_535 - 100)  # connection window


def test_an_empty_data_frame_may_end_a_stream_whose_window_is_negative():
    """RFC 9113 6.9.1: an empty DATA frame with END_STREAM may be sent when there is no room in the window."""
    conn = server()
    request(conn)
    conn.send_data(1, b"x" * 1000)
    conn.receive(frame(T_SETTINGS, 0, 0, setting(4, 0)), 0.0)
    assert conn.streams[1].send_window == -1000
    conn.take_output()
    conn.send_data(1, b"", end_stream=True)
    assert conn.take_output() == frame(T_DATA, END_STREAM, 1)
    with pytest.raises(StreamGone):
        conn.send_data(1, b"")


def test_our_settings_take_effect_when_acknowledged():
    conn = server(ack=False, initial_window=1000)
    request(conn, 1)
    # not yet acknowledged: the remote may use the default window of 65,535
    assert conn.receive(frame(T_DATA, 0, 1, b"x" * 60_000), 0.0)[0][3] == 60_000
    assert conn.streams[1].recv_window == 5_535
    conn.receive(SETTINGS_ACK, 0.0)
    assert conn.streams[1].recv_window == 5_535 - 64_535  # shrunk by the difference, below zero
    assert conn.receive(frame(T_DATA, 0, 1, b"x"), 0.0) == [(RESET, 1, FLOW_CONTROL_ERROR, False)]
    request(conn, 3)
    assert conn.streams[3].recv_window == 1000
    assert conn.receive(frame(T_DATA, 0, 3, b"x" * 1000), 0.0)[0][0] == DATA
    assert conn.receive(SETTINGS_ACK, 0.0) == []  # an unsolicited ACK changes nothing
    assert conn.streams[3].recv_window == 0


def test_our_header_table_size_takes_effect_when_acknowledged():
    conn = server(ack=False)
    conn.receive(frame(T_HEADERS, END_HEADERS, 1, b"\x3f\xe1\x1f" + REQ_BLOCK), 0.0)  # size update to 4096: allowed
    conn.receive(SETTINGS_ACK, 0.0)
    assert refused(conn, frame(T_HEADERS, END_HEADERS, 3, b"\x3f\xe1\x1f" + REQ_BLOCK)).error_code == COMPRESSION_ERROR
    conn = server()
    assert conn.receive(frame(T_HEADERS, END_HEADERS, 1, b"\x20" + REQ_BLOCK), 0.0)[0][0] == REQUEST  # to 0: fine


def test_the_remotes_header_table_size_makes_our_next_block_start_with_a_size_update():
    conn = server()
    request(conn, 1)
    request(conn, 3)
    conn.receive(frame(T_SETTINGS, 0, 0, setting(1, 100)), 0.0)
    conn.take_output()
    conn.send_headers(1, RESP)
    assert conn.take_output() == frame(T_HEADERS, END_HEADERS, 1, b"\x20\x88")
    conn.send_headers(3, RESP)
    assert conn.take_output() == frame(T_HEADERS, END_HEADERS, 3, b"\x88")  # once
    conn = client()
    conn.receive(frame(T_SETTINGS, 0, 0, setting(1, 0)), 0.0)
    conn.take_output()
    conn.open_stream(REQ)
    assert conn.take_output() == frame(T_HEADERS, END_HEADERS, 1, b"\x20" + REQ_BLOCK)


def test_writes_to_closed_reset_and_unknown_streams_are_stream_gone():
    conn = server()
    for stream_id in (1, 3, 5):
        request(conn, stream_id)
    conn.send_headers(1, RESP, end_stream=True)  # ended by us
    conn.reset(3)
    conn.receive(rst(5, CANCEL), 0.0)  # reset by them
    for stream_id in (1, 3, 5, 7, 2):
        with pytest.raises(StreamGone):
            conn.send_headers(stream_id, RESP)
        with pytest.raises(StreamGone):
            conn.send_data(stream_id, b"x")
        assert conn.window(stream_id) == 0


def test_send_data_beyond_the_window_is_a_value_error():
    conn = server(connection_window=65_535)
    request(conn, 1)
    request(conn, 3)
    with pytest.raises(ValueError):
        conn.send_data(1, b"x" * 65_536)  # the stream's window (and the connection's)
    conn.send_data(1, b"x" * 65_000)
    assert conn.window(3) == 535  # the connection's window is what is left
    with pytest.raises(ValueError):
        conn.send_data(3, b"x" * 536)
    conn.send_data(3, b"x" * 535)
    conn.receive(frame(T_WINDOW, 0, 0, u32(10)), 0.0)
    assert conn.window(1) == 10 and conn.window(3) == 10
    assert conn.send_window == 10


def test_settings_from_the_remote():
    conn = server()
    request(conn)
    events = conn.receive(frame(T_SETTINGS, 0, 0, b"".join((
        setting(3, 7), setting(2, 0), setting(6, 100), setting(0x4242, 9), setting(5, (1 << 24) - 1)))), 0.0)
    assert events == []
    assert conn.remote_max_concurrent == 7 and conn.remote_max_frame == (1 << 24) - 1
    assert conn.take_output() == SETTINGS_ACK


def test_goaway_is_an_event_and_the_connection_goes_on():
    conn = server()
    request(conn, 1)
    assert conn.receive(frame(T_GOAWAY, 0, 0, u32(0x80000001) + u32(NO_ERROR) + b"debug"), 0.0) == [
        (GOAWAY, NO_ERROR, 1, b"debug")]
    assert conn.goaway_received
    assert conn.receive(frame(T_DATA, END_STREAM, 1, b"x"), 0.0) == [(DATA, 1, b"x", 1, True)]


def test_priority_frames_are_read_and_ignored():
    conn = server()
    assert conn.receive(frame(T_PRIORITY, 0, 3, u32(0x80000001) + b"\xff") + frame(T_PRIORITY, 0, 1, u32(3) + b"\x00"), 0.0) == []
    assert conn.take_output() == b""
    request(conn, 1)  # PRIORITY frames on idle streams do not open them
    assert conn.receive(frame(T_HEADERS, PRIORITY_FLAG | END_HEADERS, 3, u32(0x80000001) + b"\x10" + REQ_BLOCK), 0.0) == [
        (REQUEST, 3, REQ, False)]
    assert conn.receive(frame(T_PRIORITY, 0, 1, u32(3) + b"\x00"), 0.0) == []


def test_unknown_frames_are_ignored_but_not_inside_a_header_block():
    conn = server()
    assert conn.receive(frame(0xFA, 0xFF, 0, b"x" * 100) + frame(0x0B, 0, 99, b""), 0.0) == []
    conn.receive(frame(T_HEADERS, 0, 1, REQ_BLOCK[:2]), 0.0)
    assert refused(conn, frame(0xFA, 0, 1)).error_code == PROTOCOL_ERROR


def test_self_dependent_headers_in_a_header_block_are_a_stream_error_after_the_block():
    """RFC 9113 5.3.1: a stream error; the block is still decoded whole (RFC 9113 4.3), the stream id used."""
    conn = server()
    data = (frame(T_HEADERS, PRIORITY_FLAG, 1, u32(1) + b"\x10" + REQ_BLOCK[:2])
            + frame(T_CONT, END_HEADERS, 1, REQ_BLOCK[2:]))
    assert conn.receive(data, 0.0) == []
    assert conn.take_output() == rst(1, PROTOCOL_ERROR)
    assert conn.highest_remote == 1
    assert conn.receive(frame(T_HEADERS, END_HEADERS, 1, REQ_BLOCK), 0.0) == []  # reset by us: ignored
    request(conn, 3)


def test_a_malformed_priority_frame_on_a_closed_stream_resets_it_again():
    conn = server()
    request(conn, 1, end_stream=True)
    conn.send_headers(1, RESP, end_stream=True)
    conn.take_output()
    assert conn.receive(frame(T_PRIORITY, 0, 1, u32(1) + b"\x10"), 0.0) == []
    assert conn.take_output() == rst(1, PROTOCOL_ERROR)


def test_the_memory_of_resets_is_bounded():
    conn = server(max_concurrent_streams=REMEMBERED_RESETS + 10)
    stream_ids = range(1, 2 * (REMEMBERED_RESETS + 1) + 1, 2)
    conn.receive(b"".join(frame(T_HEADERS, END_HEADERS, s, REQ_BLOCK) for s in stream_ids), 0.0)
    for stream_id in stream_ids:
        conn.reset(stream_id)
    conn.take_output()
    assert len(conn._resets) == REMEMBERED_RESETS
    first, second = stream_ids[0], stream_ids[1]
    conn.receive(frame(T_DATA, 0, second, b"x"), 0.0)
    assert conn.take_output() == b""  # still remembered
    conn.receive(frame(T_DATA, 0, first, b"x"), 0.0)
    assert conn.take_output() == rst(first, STREAM_CLOSED)  # forgotten: an ordinary closed stream
    assert len(conn._resets) == REMEMBERED_RESETS


def test_a_client_request_with_data_and_the_whole_exchange():
    conn = client()
    stream_id = conn.open_stream(REQ)
    conn.send_data(stream_id, b"request", end_stream=True)
    out = frames_of(conn.take_output())
    assert [(t, f) for t, f, _, _ in out] == [(T_HEADERS, END_HEADERS), (T_DATA, END_STREAM)]
    events = conn.receive(frame(T_HEADERS, END_HEADERS, stream_id, block(RESP)) + frame(T_DATA, 0, stream_id, b"reply")
                          + frame(T_HEADERS, END_HEADERS | END_STREAM, stream_id, block(TRAIL)), 0.0)
    assert [e[0] for e in events] == [RESPONSE, DATA, TRAILERS]
    assert not conn.streams
    assert conn.open_stream(REQ) == 3
