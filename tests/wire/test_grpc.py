"""gRPC framing, grpc-timeout and grpc-message: vectors, splits at every boundary, property round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.model import Refusal, Status
from interlink.wire import grpc, link_headers

# From ../shared/vectors/grpc/h2c_grpcjs_client_to_grpcjs_server.log: EchoRequest{message: "hello-0"}.
ECHO_HELLO_0 = bytes.fromhex("00000000090a0768656c6c6f2d30")


def test_decodes_captured_message():
    (message,) = grpc.MessageDecoder().feed(ECHO_HELLO_0)
    assert message == grpc.Message(False, bytes.fromhex("0a0768656c6c6f2d30"))
    assert grpc.encode_message(message.data) == ECHO_HELLO_0


@pytest.mark.parametrize("cut", range(1, len(ECHO_HELLO_0)))
def test_message_split_across_data_frames_at_every_offset(cut):
    decoder = grpc.MessageDecoder()
    assert decoder.feed(ECHO_HELLO_0[:cut]) == []
    assert decoder.pending
    assert [m.data for m in decoder.feed(ECHO_HELLO_0[cut:])] == [ECHO_HELLO_0[5:]]
    assert not decoder.pending


def test_several_messages_in_one_frame_and_empty_messages():
    frame = grpc.encode_message(b"") + grpc.encode_message(b"a") + grpc.encode_message(b"bc", compressed=True)
    assert grpc.MessageDecoder().feed(frame) == [
        grpc.Message(False, b""),
        grpc.Message(False, b"a"),
        grpc.Message(True, b"bc"),
    ]


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 64), min_size=1))
def test_round_trip_with_arbitrary_chunking(payloads, sizes):
    stream = b"".join(grpc.encode_message(p) for p in payloads)
    decoder = grpc.MessageDecoder()
    got, offset, i = [], 0, 0
    while offset < len(stream):
        size = sizes[i % len(sizes)]
        got.extend(m.data for m in decoder.feed(stream[offset : offset + size]))
        offset += size
        i += 1
    assert got == payloads
    assert not decoder.pending


def test_rejects_bad_flag_and_oversized_message():
    with pytest.raises(grpc.GrpcFramingError, match="compressed flag"):
        grpc.MessageDecoder().feed(b"\x02\x00\x00\x00\x00")
    with pytest.raises(grpc.GrpcFramingError, match="exceeds the limit"):
        grpc.MessageDecoder(max_message=10).feed(b"\x00\x00\x00\x00\x0b")


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (b"2977m", 2.977),  # grpc-js
        (b"3S", 3.0),  # grpcio
        (b"51m", 0.051),
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"99999999u", 99.999999),
        (b"5n", 5e-9),
    ],
)
def test_parse_timeout(raw, seconds):
    assert grpc.parse_timeout(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", [b"", b"m", b"123456789m", b"12x", b"-1S", b"1.5S", b" 1S", b"1s"])
def test_parse_timeout_rejects(raw):
    with pytest.raises(ValueError):
        grpc.parse_timeout(raw)


@pytest.mark.parametrize(
    ("seconds", "raw"),
    [
        (0.0, b"1n"), (-1.0, b"1n"), (1e-12, b"1n"), (0.05, b"50m"), (3.0, b"3S"), (100.0, b"100S"), (1.5, b"1500m"),
        (29.987654, b"29980m"), (29.887654, b"29880m"), (0.0123456, b"12340u"), (120.0, b"2M"), (7200.0, b"2H"),
        (1e-9, b"1n"), (1234e-9, b"1234n"), (1.9995, b"1999m"), (1e9, b"16666666M"), (1e12, b"99999999H"),
    ],
)
def test_format_timeout(seconds, raw):
    assert grpc.format_timeout(seconds) == raw


@given(st.floats(min_value=1e-9, max_value=1e8, allow_nan=False))
def test_format_timeout_fits_is_never_longer_and_at_most_a_thousandth_shorter(seconds):
    raw = grpc.format_timeout(seconds)
    assert len(raw) <= 9
    told = grpc.parse_timeout(raw)
    assert told <= seconds * (1 + 1e-12)
    assert told >= seconds * 0.999 - 1e-9 or raw.endswith((b"M", b"H"))  # minutes and hours: 8 digits, floored


@given(st.floats(min_value=1.0, max_value=1e8, allow_nan=False), st.floats(min_value=0.0, max_value=0.000999))
def test_format_timeout_remembered_per_millisecond_is_what_it_computes(seconds, jitter):
    """From 1 s on, values are remembered per millisecond: another time in the same millisecond, formatted
    first, never changes the answer."""
    grpc.format_timeout(seconds + jitter)
    assert grpc.format_timeout(seconds) == grpc._format_timeout(int(seconds * 1e9))  # noqa: SLF001


def test_format_timeout_takes_few_values_as_a_deadline_runs_down():
    """What a gateway sends for a 30 s default deadline over its first second: one value per 10 ms, not one
    per call."""
    values = {grpc.format_timeout(30.0 - i * 1e-4) for i in range(10_000)}
    assert len(values) == 101  # 30S, 29990m ... 29000m


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("boom: 100% bad", b"boom: 100%25 bad"),
        ("plain", b"plain"),
        ("é", b"%C3%A9"),
        ("tab\there", b"tab%09here"),
        ("😀", b"%F0%9F%98%80"),
    ],
)
def test_grpc_message_percent_encoding(text, wire):
    assert grpc.encode_grpc_message(text) == wire
    assert grpc.decode_grpc_message(wire) == text


def test_grpc_message_decoding_is_lenient():
    # grpc-js percent-encodes spaces, grpcio does not; bad escapes stay as they are.
    assert grpc.decode_grpc_message(b"boom:%20100%25%20bad") == "boom: 100% bad"
    assert grpc.decode_grpc_message(b"50% off %zz %4") == "50% off %zz %4"


@given(st.text())
def test_grpc_message_round_trip(text):
    wire = grpc.encode_grpc_message(text)
    assert all(0x20 <= b < 0x7F for b in wire)
    assert grpc.decode_grpc_message(wire) == text.encode("utf-8", "replace").decode("utf-8", "replace")


def test_trailers_only():
    assert grpc.trailers_only(Status.PERMISSION_DENIED, "no 100%") == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"7"),
        (b"grpc-message", b"no 100%25"),
    ]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/com.example.EchoService/echo", ("com.example.EchoService", "echo")),
        (b"/ctx/com.example.EchoService/echo", ("ctx/com.example.EchoService", "echo")),
        (b"/nomethod/", None),
        (b"//echo", None),
        (b"echo", None),
        (b"/x", None),
    ],
)
def test_split_path(path, expected):
    assert grpc.split_path(path) == expected


def _request(*extra, path=b"/com.example.EchoService/echo"):
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"Site-B.gw.site-a.test:8443"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        *extra,
    ]


def test_parse_request_head_strips_identity_and_hop_headers():
    head = grpc.parse_request_head(
        _request(
            (b"grpc-timeout", b"3S"),
            (b"tri-consumer-appname", b"order-app"),
            (b"x-interlink-caller-app", b"forged"),
            (b"x-interlink-caller-site", b"forged"),
            (b"connection", b"keep-alive"),
            (b"x-custom", b"1"),
        )
    )
    assert (head.service, head.method, head.timeout) == ("com.example.EchoService", "echo", 3.0)
    assert head.authority == b"site-b.gw.site-a.test"
    assert head.consumer_app == "order-app"
    assert head.caller_app == "forged"  # reported, but only the peer ingress believes it
    assert head.metadata == ((b"content-type", b"application/grpc"), (b"tri-consumer-appname", b"order-app"), (b"x-custom", b"1"))
    forwarded = grpc.request_headers(
        head, scheme=b"https", authority=b"a.test", timeout=1.5, stamps=[(link_headers.CALLER_APP, b"order-app")]
    )
    assert forwarded[:6] == [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", b"/com.example.EchoService/echo"),
        (b":authority", b"a.test"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"1500m"),
    ]
    assert [name for name, _ in forwarded].count(b"x-interlink-caller-app") == 1
    assert (b"x-interlink-caller-site", b"forged") not in forwarded


@pytest.mark.parametrize(
    ("headers", "status", "http"),
    [
        (_request(path=b"/bad"), Status.UNIMPLEMENTED, b"200"),
        ([(b":method", b"GET"), (b":path", b"/a/b")], Status.UNIMPLEMENTED, b"405"),
        ([(b":method", b"POST"), (b":path", b"/a/b"), (b"content-type", b"text/html")], Status.INTERNAL, b"415"),
        (_request((b"grpc-timeout", b"soon")), Status.INTERNAL, b"200"),
    ],
)
def test_parse_request_head_errors(headers, status, http):
    with pytest.raises(Refusal) as info:
        grpc.parse_request_head(headers)
    assert (info.value.status, info.value.http_status) == (status, http)


def test_request_heads_are_remembered_and_shared_read_only():
    """A head seen again is the same (frozen) object: callers send the same heads call after call."""
    headers = _request((b"x-custom", b"again"))
    first, second, third = (grpc.parse_request_head(list(headers)) for _ in range(3))
    assert first == second == third and third is second  # kept the second time it was seen
    with pytest.raises(AttributeError):
        third.service = "other"  # type: ignore[misc]
    assert grpc.parse_request_head(_request((b"x-custom", b"other"))).metadata[-1] == (b"x-custom", b"other")


def test_a_trailing_traceparent_comes_with_the_head_the_rest_of_the_list_names():
    trace = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    for _ in range(3):  # parsed, then remembered: the head without the trace context is what repeats
        head, traceparent = grpc.read_request_head(_request(trace))
        assert traceparent == trace[1]
        assert head == grpc.parse_request_head(_request())
        assert all(name != b"traceparent" for name, _ in head.metadata)
    inner, traceparent = grpc.read_request_head(_request(trace, (b"x-after", b"1")))  # anywhere: the same answer
    assert traceparent == trace[1] and (b"x-after", b"1") in inner.metadata


@pytest.mark.parametrize(("value", "status"), [
    (b"0", Status.OK), (b"14", Status.UNAVAILABLE), (b"16", Status.UNAUTHENTICATED),  # as senders write them
    (b"00", Status.OK), (b" 4", Status.DEADLINE_EXCEEDED), (b"+5", Status.NOT_FOUND),  # other spellings of a number
    (b"17", Status.UNKNOWN), (b"-1", Status.UNKNOWN), (b"ok", Status.UNKNOWN), (b"", Status.UNKNOWN),
])
def test_the_status_of_trailers_is_read_whatever_the_spelling_of_its_number(value, status):
    assert grpc.status_of([(b"grpc-status", value), (b"grpc-message", b"x")]) is status
    assert grpc.status_of([(b"grpc-message", b"x")]) is None
