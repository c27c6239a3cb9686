"""NATS protocol codec (broker_adapters/nats_wire.py): golden bytes for every encoder and every parser
event (as nats-server 2.9 writes them), feeding split at every byte, property round trips, malformed input
(only NatsProtocolError ever escapes) and the size limits."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_adapters import nats_wire as wire
from broker_adapters.nats_wire import (
    Err,
    Info,
    Msg,
    NatsParser,
    NatsProtocolError,
    OK_EVENT,
    PING_EVENT,
    PONG_EVENT,
)

QUICK = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_all(data: bytes, parser: NatsParser | None = None) -> list[wire.Event]:
    parser = parser or NatsParser()
    events = parser.feed(data)
    assert parser.buffered == 0, "a complete input left bytes behind"
    return events


def server_msg(subject: str, sid: int, payload: bytes, reply: str = "", header_block: bytes | None = None) -> bytes:
    """What nats-server writes for a delivery (built here independently of the encoders under test)."""
    reply_part = f" {reply}" if reply else ""
    if header_block is None:
        return f"MSG {subject} {sid}{reply_part} {len(payload)}\r\n".encode() + payload + b"\r\n"
    total = len(header_block) + len(payload)
    head = f"HMSG {subject} {sid}{reply_part} {len(header_block)} {total}\r\n".encode()
    return head + header_block + payload + b"\r\n"


# --- encoders: golden bytes -------------------------------------------------------------------------------


def test_pub_golden() -> None:
    assert wire.encode_pub("orders.new", b"hello") == b"PUB orders.new 5\r\nhello\r\n"
    assert wire.encode_pub("orders.new", b"hello", reply="_INBOX.ab.1") == b"PUB orders.new _INBOX.ab.1 5\r\nhello\r\n"
    assert wire.encode_pub("a", b"") == b"PUB a 0\r\n\r\n"
    assert wire.encode_pub("a", b"x\r\ny") == b"PUB a 4\r\nx\r\ny\r\n"
    assert wire.encode_pub("a", bytearray(b"ab")) == b"PUB a 2\r\nab\r\n"
    assert wire.encode_pub("a", memoryview(b"abc")) == b"PUB a 3\r\nabc\r\n"
    assert wire.encode_pub("$JS.ACK.S.d.1.2.3.4.5", b"+ACK") == b"PUB $JS.ACK.S.d.1.2.3.4.5 4\r\n+ACK\r\n"


def test_headers_golden() -> None:
    assert wire.encode_headers([]) == b"NATS/1.0\r\n\r\n"
    assert wire.encode_headers([("Nats-Msg-Id", "42"), ("X-Trace", "a b"), ("X-Trace", "c")]) == (
        b"NATS/1.0\r\nNats-Msg-Id: 42\r\nX-Trace: a b\r\nX-Trace: c\r\n\r\n"
    )
    assert wire.encode_headers([], status=503) == b"NATS/1.0 503\r\n\r\n"
    assert wire.encode_headers([], status=404, description="No Messages") == b"NATS/1.0 404 No Messages\r\n\r\n"
    assert wire.encode_headers([("K", "")]) == b"NATS/1.0\r\nK: \r\n\r\n"
    assert wire.encode_headers([("K", "caf\u00e9")]) == "NATS/1.0\r\nK: caf\u00e9\r\n\r\n".encode()


def test_hpub_golden() -> None:
    block = wire.encode_headers([("Nats-Msg-Id", "1")])
    assert block == b"NATS/1.0\r\nNats-Msg-Id: 1\r\n\r\n" and len(block) == 28
    assert wire.encode_hpub("a.b", block, b"xy", reply="r.1") == (
        b"HPUB a.b r.1 28 30\r\nNATS/1.0\r\nNats-Msg-Id: 1\r\n\r\nxy\r\n"
    )
    assert wire.encode_hpub("a.b", block, b"") == b"HPUB a.b 28 28\r\nNATS/1.0\r\nNats-Msg-Id: 1\r\n\r\n\r\n"


def test_sub_unsub_ping_pong_golden() -> None:
    assert wire.encode_sub("_INBOX.abc.*", 1) == b"SUB _INBOX.abc.* 1\r\n"
    assert wire.encode_sub("orders.>", 17, queue="workers") == b"SUB orders.> workers 17\r\n"
    assert wire.encode_unsub(5) == b"UNSUB 5\r\n"
    assert wire.encode_unsub(5, 10) == b"UNSUB 5 10\r\n"
    assert wire.PING == b"PING\r\n"
    assert wire.PONG == b"PONG\r\n"


def test_connect_golden() -> None:
    line = wire.encode_connect(name="gw-a", version="0.1.0")
    assert line == (
        b'CONNECT {"verbose":false,"pedantic":false,"tls_required":false,"name":"gw-a","lang":"python-trio",'
        b'"version":"0.1.0","protocol":1,"echo":true,"headers":true,"no_responders":true}\r\n'
    )
    with_user = json.loads(wire.encode_connect(name="n", version="1", user="u", password="p w")[8:])
    assert (with_user["user"], with_user["pass"]) == ("u", "p w") and "auth_token" not in with_user
    with_token = json.loads(wire.encode_connect(name="n", version="1", token="t0k")[8:])
    assert with_token["auth_token"] == "t0k" and "user" not in with_token
    assert wire.encode_connect(name="x\r\ny", version="1").count(b"\r\n") == 1  # JSON escapes control characters


@pytest.mark.parametrize("subject", ["", "a b", "a\tb", "a\r\nb", "a\n", " a"])
def test_encoders_refuse_bad_subjects(subject: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        wire.encode_pub(subject, b"x")
    with pytest.raises(ValueError, match="subject"):
        wire.encode_hpub(subject, wire.encode_headers([]), b"x")
    with pytest.raises(ValueError, match="subject"):
        wire.encode_sub(subject, 1)
    with pytest.raises(ValueError, match="reply subject"):
        wire.encode_pub("ok", b"x", reply=subject or " ")


@pytest.mark.parametrize("name", ["", "a:b", "a b", "a\r\nb", "caf\u00e9", "a\x00", "a\tb"])
def test_encode_headers_refuses_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="header name"):
        wire.encode_headers([(name, "v")])


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nInjected: 1", "\n"])
def test_encode_headers_refuses_cr_lf_in_values(value: str) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        wire.encode_headers([("K", value)])


def test_encode_headers_refuses_bad_status() -> None:
    with pytest.raises(ValueError):
        wire.encode_headers([], status=42)
    with pytest.raises(ValueError):
        wire.encode_headers([], status=404, description="x\r\ny")


# --- parser: golden events --------------------------------------------------------------------------------

INFO_LINE = (
    b'INFO {"server_id":"NDX","server_name":"test","version":"2.9.10","proto":1,"go":"go1.19","host":"127.0.0.1",'
    b'"port":4222,"headers":true,"max_payload":1048576,"jetstream":true,"client_id":5,"client_ip":"127.0.0.1"}\r\n'
)

# (bytes from the server, the events they must give)
GOLDEN: list[tuple[str, bytes, list[wire.Event]]] = [
    ("info", INFO_LINE, [Info({"server_id": "NDX", "server_name": "test", "version": "2.9.10", "proto": 1,
                               "go": "go1.19", "host": "127.0.0.1", "port": 4222, "headers": True,
                               "max_payload": 1048576, "jetstream": True, "client_id": 5,
                               "client_ip": "127.0.0.1"})]),
    ("ping", b"PING\r\n", [PING_EVENT]),
    ("pong", b"PONG\r\n", [PONG_EVENT]),
    ("ok", b"+OK\r\n", [OK_EVENT]),
    ("err", b"-ERR 'Authorization Violation'\r\n", [Err("Authorization Violation")]),
    ("err unquoted", b"-ERR Stale Connection\r\n", [Err("Stale Connection")]),
    ("msg", b"MSG orders.new 1 5\r\nhello\r\n", [Msg("orders.new", 1, "", b"hello")]),
    ("msg reply", b"MSG a.b 7 _INBOX.x.1 5\r\nhello\r\n", [Msg("a.b", 7, "_INBOX.x.1", b"hello")]),
    ("msg empty", b"MSG a 1 0\r\n\r\n", [Msg("a", 1, "", b"")]),
    ("msg crlf inside payload", b"MSG a 1 6\r\nPING\r\n\r\n", [Msg("a", 1, "", b"PING\r\n")]),
    ("pub ack", b'MSG _INBOX.x.2a 1 45\r\n{"stream":"ORDERS","seq":17,"duplicate":true}\r\n',
     [Msg("_INBOX.x.2a", 1, "", b'{"stream":"ORDERS","seq":17,"duplicate":true}')]),
    ("hmsg", b"HMSG orders.new 2 $JS.ACK.S.d.1.2.3.4.5 28 30\r\nNATS/1.0\r\nNats-Msg-Id: 1\r\n\r\nhi\r\n",
     [Msg("orders.new", 2, "$JS.ACK.S.d.1.2.3.4.5", b"hi", [("Nats-Msg-Id", "1")])]),
    ("hmsg repeats kept in order", b"HMSG a 2 32 32\r\nNATS/1.0\r\nB: 1\r\nA: x y\r\nB: 2\r\n\r\n\r\n",
     [Msg("a", 2, "", b"", [("B", "1"), ("A", "x y"), ("B", "2")])]),
    ("no responders", b"HMSG _INBOX.x.1 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n",
     [Msg("_INBOX.x.1", 1, "", b"", [], 503, "")]),
    ("no messages", b"HMSG _INBOX.x.pull.3 4 28 28\r\nNATS/1.0 404 No Messages\r\n\r\n\r\n",
     [Msg("_INBOX.x.pull.3", 4, "", b"", [], 404, "No Messages")]),
    ("request timeout",
     b"HMSG _INBOX.x.pull.3 4 81 81\r\nNATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 7\r\n"
     b"Nats-Pending-Bytes: 0\r\n\r\n\r\n",
     [Msg("_INBOX.x.pull.3", 4, "", b"", [("Nats-Pending-Messages", "7"), ("Nats-Pending-Bytes", "0")], 408,
          "Request Timeout")]),
    ("exceeded max waiting", b"HMSG _INBOX.x.pull.3 4 36 36\r\nNATS/1.0 409 Exceeded MaxWaiting\r\n\r\n\r\n",
     [Msg("_INBOX.x.pull.3", 4, "", b"", [], 409, "Exceeded MaxWaiting")]),
    ("lower case and tabs", b"msg\ta.b\t3\t2\r\nhi\r\nping\r\n", [Msg("a.b", 3, "", b"hi"), PING_EVENT]),
]


@pytest.mark.parametrize("name,data,expected", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_parser_golden(name: str, data: bytes, expected: list[wire.Event]) -> None:
    assert parse_all(data) == expected


def test_golden_sizes_match_the_bytes() -> None:
    """The hand-written HMSG sizes above are right (else the golden tests would test the wrong thing)."""
    for name, data, _ in GOLDEN:
        head, _, rest = data.partition(b"\r\n")
        if head.startswith(b"HMSG"):
            header_size, total = (int(x) for x in head.split()[-2:])
            assert len(rest) == total + 2, name
            assert rest[header_size - 4:header_size] == b"\r\n\r\n", name


ALL_GOLDEN = b"".join(data for _, data, _ in GOLDEN)
ALL_EVENTS = [event for _, _, events in GOLDEN for event in events]


def test_all_golden_in_one_chunk() -> None:
    assert parse_all(ALL_GOLDEN) == ALL_EVENTS


def test_split_at_every_byte() -> None:
    for cut in range(len(ALL_GOLDEN) + 1):
        parser = NatsParser()
        events = parser.feed(ALL_GOLDEN[:cut]) + parser.feed(ALL_GOLDEN[cut:])
        assert events == ALL_EVENTS, f"split at {cut}"
        assert parser.buffered == 0


def test_byte_by_byte_and_memoryview_chunks() -> None:
    parser = NatsParser()
    events: list[wire.Event] = []
    for index in range(len(ALL_GOLDEN)):
        events += parser.feed(memoryview(ALL_GOLDEN)[index:index + 1])
    assert events == ALL_EVENTS
    assert parser.feed(b"") == []


def test_info_sets_the_payload_limit_and_a_cap_bounds_it() -> None:
    parser = NatsParser()
    assert parser.max_payload == wire.DEFAULT_MAX_PAYLOAD
    parser.feed(b'INFO {"max_payload":100}\r\n')
    assert parser.max_payload == 100
    capped = NatsParser(max_payload=50)
    capped.feed(b'INFO {"max_payload":100}\r\n')
    assert capped.max_payload == 50
    ignored = NatsParser()
    ignored.feed(b'INFO {"max_payload":"lots"}\r\n')
    assert ignored.max_payload == wire.DEFAULT_MAX_PAYLOAD


# --- header blocks from publishers: lenient content, strict framing ---------------------------------------


def test_malformed_header_lines_are_skipped_not_fatal() -> None:
    block = b"NATS/1.0\r\nno colon here\r\nX: 1\r\n: empty name\r\n\r\n"
    data = server_msg("a", 1, b"body", header_block=block) + b"PING\r\n"
    message, ping = parse_all(data)
    assert isinstance(message, Msg) and ping == PING_EVENT
    assert message.headers == [("X", "1")] and message.payload == b"body"
    assert "no colon here" in message.header_error and "empty name" in message.header_error


def test_header_block_without_version_line_is_reported() -> None:
    (message,) = parse_all(server_msg("a", 1, b"", header_block=b"HTTP/1.1 200\r\nX: 1\r\n\r\n"))
    assert isinstance(message, Msg) and message.status == 0
    assert "NATS/1.0" in message.header_error and message.headers == [("X", "1")]


@pytest.mark.parametrize("block,status,description,error", [
    (b"NATS/1.0 50\r\n\r\n", 0, "", "3-digit"),
    (b"NATS/1.0 5030\r\n\r\n", 0, "", "3-digit"),
    (b"NATS/1.0x\r\n\r\n", 0, "", "NATS/1.0"),
    (b"NATS/1.0  408   Request Timeout  \r\n\r\n", 408, "Request Timeout", ""),
    (b"NATS/1.0\r\nK:v\r\nL:  spaced  \r\n\r\n", 0, "", ""),
])
def test_decode_headers_status_lines(block: bytes, status: int, description: str, error: str) -> None:
    got_status, got_description, headers, got_error = wire.decode_headers(block)
    assert (got_status, got_description) == (status, description)
    assert (error in got_error) if error else got_error == ""
    if block.startswith(b"NATS/1.0\r\nK"):
        assert headers == [("K", "v"), ("L", "spaced")]


# --- malformed input ----------------------------------------------------------------------------------------

MALFORMED = [
    b"FOO bar\r\n",
    b"MSG\r\n",
    b"MSG a 1\r\n",
    b"MSG a 1 r 5 6\r\n",
    b"MSG a 1 -5\r\n",
    b"MSG a 1 +5\r\n",
    b"MSG a 1 0x5\r\n",
    b"MSG a 1 5_0\r\n",
    b"MSG a 1 99999999999\r\n",
    b"MSG a x 5\r\nhello\r\n",
    b"MSG a 1 5\r\nhelloXX",
    b"MSG a 1 5\r\nhello\n\n",
    b"MSG \xff\xfe 1 1\r\nx\r\n",
    b"HMSG a 1 5\r\n",
    b"HMSG a 1 r 12 14 9\r\n",
    b"HMSG a 1 20 10\r\n",
    b"HMSG a 1 5 10\r\n",
    b"HMSG a 1 12 14\r\nNATS/1.0\r\n\r\nhiXX",
    b"INFO\r\n",
    b"INFO not json\r\n",
    b"INFO [1,2]\r\n",
    b"INFO {\"a\":\r\n",
    b"\r\n",
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_input_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(NatsProtocolError):
        NatsParser().feed(data)


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_input_fed_byte_by_byte_raises_too(data: bytes) -> None:
    parser = NatsParser()
    with pytest.raises(NatsProtocolError):
        for index in range(len(data)):
            parser.feed(data[index:index + 1])
        parser.feed(b"\r\n" * 4)  # a truncated item completes (and fails) when more bytes come


@FUZZ
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_fuzz_only_protocol_errors_escape(data: bytes, chunk: int) -> None:
    parser = NatsParser(max_payload=1000)
    try:
        for start in range(0, len(data), chunk):
            for event in parser.feed(data[start:start + chunk]):
                assert isinstance(event, (Info, Msg, wire.Ping, wire.Pong, wire.Ok, Err))
    except NatsProtocolError:
        pass
    assert parser.buffered <= wire.MAX_CONTROL_LINE + 1000 + wire.HEADER_SLACK + 2


@FUZZ
@given(st.lists(st.sampled_from([d for _, d, _ in GOLDEN]), max_size=8), st.data())
def test_fuzz_mutated_golden_streams(pieces: list[bytes], data: st.DataObject) -> None:
    stream = bytearray(b"".join(pieces))
    if stream:
        for _ in range(data.draw(st.integers(0, 3))):
            index = data.draw(st.integers(0, len(stream) - 1))
            stream[index] = data.draw(st.integers(0, 255))
    try:
        NatsParser().feed(bytes(stream))
    except NatsProtocolError:
        pass


# --- limits -------------------------------------------------------------------------------------------------


def test_control_line_limit() -> None:
    ok_line = b"-ERR '" + b"x" * (wire.MAX_CONTROL_LINE - 7) + b"'"
    assert len(ok_line) == wire.MAX_CONTROL_LINE
    (event,) = parse_all(ok_line + b"\r\n")
    assert isinstance(event, Err) and len(event.text) == wire.MAX_CONTROL_LINE - 7
    with pytest.raises(NatsProtocolError, match="control line"):
        NatsParser().feed(b"-ERR '" + b"x" * wire.MAX_CONTROL_LINE + b"'\r\n")
    parser = NatsParser()  # refused as soon as more than the limit is buffered, without waiting for a CRLF
    parser.feed(b"x" * wire.MAX_CONTROL_LINE)
    with pytest.raises(NatsProtocolError, match="without CRLF"):
        parser.feed(b"x")


def test_payload_limit_is_checked_on_the_control_line() -> None:
    parser = NatsParser()
    parser.feed(b'INFO {"max_payload":100}\r\n')
    assert parse_all(b"MSG a 1 100\r\n" + b"x" * 100 + b"\r\n", parser)[0].payload == b"x" * 100
    with pytest.raises(NatsProtocolError, match="exceeds the limit"):
        parser.feed(b"MSG a 1 101\r\n")  # before any of the payload arrived
    capped = NatsParser(max_payload=10)
    with pytest.raises(NatsProtocolError, match="exceeds the limit"):
        capped.feed(b"MSG a 1 11\r\n")


def test_hmsg_limit_allows_the_header_slack_only() -> None:
    parser = NatsParser(max_payload=100)
    block = b"NATS/1.0\r\nK: " + b"v" * 50 + b"\r\n\r\n"
    parse_all(server_msg("a", 1, b"y" * (100 + wire.HEADER_SLACK - len(block)), header_block=block), parser)
    with pytest.raises(NatsProtocolError, match="exceeds the limit"):
        parser.feed(b"HMSG a 1 12 %d\r\n" % (100 + wire.HEADER_SLACK + 1))


def test_at_most_one_incomplete_item_is_buffered() -> None:
    complete = b"".join(server_msg("a.b", 1, b"p" * 100, reply="r") for _ in range(1000))
    partial = server_msg("a.b", 1, b"q" * 5000)[:3000]
    parser = NatsParser()
    events = parser.feed(complete + partial)
    assert len(events) == 1000
    assert parser.buffered == len(partial) - len(b"MSG a.b 1 5000\r\n")  # its control line is parsed already
    rest = server_msg("a.b", 1, b"q" * 5000)[3000:]
    for index in range(0, len(rest), 7):  # the body keeps arriving: only that one item is held
        assert parser.buffered <= len(server_msg("a.b", 1, b"q" * 5000))
        tail = parser.feed(rest[index:index + 7])
    assert tail == [Msg("a.b", 1, "", b"q" * 5000)] and parser.buffered == 0


# --- property round trips -----------------------------------------------------------------------------------

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-$", min_size=1, max_size=8)
SUBJECT = st.lists(TOKEN, min_size=1, max_size=6).map(".".join)
HEADER_NAME = st.text(alphabet=[chr(c) for c in range(33, 127) if chr(c) != ":"], min_size=1, max_size=20)
HEADER_VALUE = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40
).map(lambda v: v.strip(" \t"))
HEADERS = st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=6)
MESSAGE = st.tuples(SUBJECT, st.integers(1, 2**31), st.one_of(st.just(""), SUBJECT), st.binary(max_size=600),
                    st.one_of(st.none(), HEADERS))


@QUICK
@given(st.lists(MESSAGE, min_size=1, max_size=12), st.lists(st.integers(1, 400), min_size=1, max_size=20))
def test_round_trip_messages_in_random_chunks(messages: list, chunk_sizes: list[int]) -> None:
    stream = b"".join(
        server_msg(subject, sid, payload, reply,
                   None if headers is None else wire.encode_headers(headers))
        for subject, sid, reply, payload, headers in messages
    )
    parser = NatsParser()
    events: list[wire.Event] = []
    position = 0
    index = 0
    while position < len(stream):
        size = chunk_sizes[index % len(chunk_sizes)]
        events += parser.feed(stream[position:position + size])
        position += size
        index += 1
    assert parser.buffered == 0
    assert events == [
        Msg(subject, sid, reply, payload, None if headers is None else list(headers))
        for subject, sid, reply, payload, headers in messages
    ]


@QUICK
@given(SUBJECT, st.one_of(st.just(""), SUBJECT), HEADERS, st.binary(max_size=300))
def test_hpub_frame_becomes_the_same_hmsg(subject: str, reply: str, headers: list, payload: bytes) -> None:
    """An HPUB frame, relabelled as the server relabels it (HMSG + sid), parses back to what was sent."""
    frame = wire.encode_hpub(subject, wire.encode_headers(headers), payload, reply)
    head, _, body = frame.partition(b"\r\n")
    args = head.split(b" ")[1:]
    delivered = b" ".join([b"HMSG", args[0], b"9", *args[1:]]) + b"\r\n" + body
    (message,) = parse_all(delivered)
    assert message == Msg(subject, 9, reply, payload, list(headers))


@QUICK
@given(SUBJECT, st.one_of(st.just(""), SUBJECT), st.binary(max_size=300))
def test_pub_frame_becomes_the_same_msg(subject: str, reply: str, payload: bytes) -> None:
    frame = wire.encode_pub(subject, payload, reply)
    head, _, body = frame.partition(b"\r\n")
    args = head.split(b" ")[1:]
    delivered = b" ".join([b"MSG", args[0], b"3", *args[1:]]) + b"\r\n" + body
    assert parse_all(delivered) == [Msg(subject, 3, reply, payload)]


@QUICK
@given(st.integers(100, 999), st.text(alphabet="abcdefghij XYZ", max_size=20).map(str.strip), HEADERS)
def test_status_blocks_round_trip(status: int, description: str, headers: list) -> None:
    block = wire.encode_headers(headers, status=status, description=description)
    assert wire.decode_headers(block) == (status, description, list(headers), "")
