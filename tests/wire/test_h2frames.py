"""FrameScanner: frame headers read ahead of h2, whatever the cut points of the reads."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.wire.h2frames import (
    ENHANCE_YOUR_CALM,
    FRAME_SIZE_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    FloodBudget,
    FrameAbuse,
    FrameScanner,
)

REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/svc/m"), (":authority", "x")]


def scanner(**kwargs) -> FrameScanner:
    options = {"expect_preface": True, "max_frame_size": 1 << 16, "max_header_block": 1 << 16,
               "budget": FloodBudget(1000, 100, 0.0)}
    options.update(kwargs)
    return FrameScanner(**options)


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((frame_type, flags)) + stream_id.to_bytes(4, "big") + payload


def client_bytes() -> bytes:
    """A realistic client stream: preface + SETTINGS, requests with data, resets, pings."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for index in range(5):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, REQUEST + [("x-pad", "p" * (index * 3000))])
        data = b"d" * (index * 3000 + 1)
        for start in range(0, len(data), 16_384):
            chunk = data[start : start + 16_384]
            conn.send_data(stream_id, chunk, end_stream=index % 2 == 0 and start + 16_384 >= len(data))
        if index % 2:
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        conn.ping(b"12345678")
    return conn.data_to_send()


def test_a_whole_client_stream_is_read_correctly():
    scan = scanner()
    scan.scan(client_bytes(), 0.0)
    assert scan.preface_done and not scan.partial
    assert scan.opened == [1, 3, 5, 7, 9] and scan.reset == [3, 7]


@given(st.lists(st.integers(min_value=1, max_value=40_000), max_size=30))
@settings(max_examples=200, deadline=None)
def test_any_cut_of_the_reads_gives_the_same_result(cuts):
    data = client_bytes()
    scan = scanner()
    opened, reset, position = [], [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if cut <= position or cut > len(data):
            continue
        scan.opened.clear()
        scan.reset.clear()
        scan.scan(data[position:cut], 0.0)
        opened += scan.opened
        reset += scan.reset
        position = cut
    assert position == len(data)
    assert opened == [1, 3, 5, 7, 9] and reset == [3, 7] and not scan.partial


def test_partial_frames_and_header_blocks_are_reported():
    scan = scanner()
    scan.scan(PREFACE[:10], 0.0)
    assert scan.partial and not scan.preface_done
    scan.scan(PREFACE[10:] + frame(0x4, 0, 0), 0.0)
    assert scan.preface_done and not scan.partial
    scan.scan(frame(0x0, 0, 1, b"x" * 100)[:50], 0.0)
    assert scan.partial
    scan.scan(frame(0x0, 0, 1, b"x" * 100)[50:], 0.0)
    assert not scan.partial
    scan.scan(frame(0x1, 0, 3, b"\x00" * 10), 0.0)  # HEADERS without END_HEADERS
    assert scan.partial
    scan.scan(frame(0x9, 0x4, 3, b"\x00" * 10), 0.0)  # CONTINUATION with END_HEADERS
    assert not scan.partial


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", PROTOCOL_ERROR),
        (PREFACE + frame(0x4, 0, 0) + (70_000).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01", FRAME_SIZE_ERROR),
        (PREFACE + frame(0x4, 0, 0) + frame(0x1, 0, 1, b"\x00") + frame(0x0, 0, 1, b"x"), PROTOCOL_ERROR),
        (PREFACE + frame(0x4, 0, 0) + frame(0x1, 0, 1, b"\x00" * 100) + frame(0x9, 0, 1, b"\x00" * 70_000)[:9]
         + b"\x00" * 20, FRAME_SIZE_ERROR),
    ],
    ids=["not-http2", "oversized-frame", "interrupted-header-block", "oversized-continuation"],
)
def test_protocol_violations(data, code):
    with pytest.raises(FrameAbuse) as info:
        scanner().scan(data, 0.0)
    assert info.value.error_code == code


def test_a_header_block_past_the_limit_is_cut():
    scan = scanner(max_header_block=5000)
    data = PREFACE + frame(0x4, 0, 0) + frame(0x1, 0, 1, b"\x00" * 1000)
    scan.scan(data, 0.0)
    with pytest.raises(FrameAbuse) as info:
        for _ in range(10):
            scan.scan(frame(0x9, 0, 1, b"\x00" * 1000), 0.0)
    assert info.value.error_code == ENHANCE_YOUR_CALM


def test_the_budget_refills_with_time_and_useful_frames():
    scan = scanner(budget=FloodBudget(10, 5, 0.0))
    scan.scan(PREFACE + frame(0x4, 0, 0) + frame(0x6, 0, 0, b"\x00" * 8) * 10, 0.0)
    with pytest.raises(FrameAbuse):
        scan.scan(frame(0x6, 0, 0, b"\x00" * 8), 0.0)
    scan = scanner(budget=FloodBudget(10, 5, 0.0))
    scan.scan(PREFACE + frame(0x4, 0, 0) + frame(0x6, 0, 0, b"\x00" * 8) * 10, 0.0)
    scan.scan(frame(0x6, 0, 0, b"\x00" * 8) * 5, 1.0)  # one second later: 5 more
    scan.budget.earn(3)  # e.g. three DATA frames with payload
    scan.scan(frame(0x6, 0, 0, b"\x00" * 8) * 3, 1.0)


@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=50))
@settings(max_examples=500, deadline=None)
def test_random_bytes_only_ever_raise_frame_abuse(data, step):
    scan = scanner(budget=FloodBudget(50, 10, 0.0))
    try:
        for start in range(0, len(data), step):
            scan.scan(data[start : start + step], 0.0)
    except FrameAbuse:
        pass
