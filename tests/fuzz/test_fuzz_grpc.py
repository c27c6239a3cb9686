"""Fuzzing the gRPC message decoder and request-head parser (interlink.wire.grpc).

Declared: `GrpcFramingError` for `MessageDecoder.feed` (any bytes, in any chunks, any size limit) and
`Refusal` for `parse_request_head` (any list of (name, value) byte pairs).

Oracles: an independent Length-Prefixed-Message parser written here decides what the decoder must return
or refuse, fed whole or in pieces; an accepted request head must be a well-formed POST to
/<service>/<method> with a valid timeout, keep no pseudo, hop-by-hop or gateway headers in its metadata,
and be usable to build the next hop's headers.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.model import Refusal, Status
from interlink.wire import grpc, link_headers

from .conftest import FULL_INPUTS, SIZES, Mutator, cuts, fuzz_loop, given_settings, guarded

LIMITS = (0, 1, 5, 100, 4096, grpc.DEFAULT_MAX_MESSAGE, grpc.DEFAULT_MAX_MESSAGE)


# --- messages ------------------------------------------------------------------------------------------------------


def reference(data: bytes, limit: int) -> tuple[list[tuple[bool, bytes]], bool, int]:
    """(messages, refused, bytes consumed) by the spec: flag byte 0/1, uint32 length <= limit, payload."""
    messages, pos = [], 0
    while len(data) - pos >= 5:
        flag, length = struct.unpack_from(">BI", data, pos)
        if flag > 1 or length > limit:
            return messages, True, pos
        if pos + 5 + length > len(data):
            break
        messages.append((flag == 1, data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return messages, False, pos


def check_messages(case: tuple[bytes, list[bytes], int]) -> None:
    data, pieces, limit = case
    expected, refused, consumed = reference(data, limit)
    whole = grpc.MessageDecoder(limit)
    try:
        got = whole.feed(data)
    except grpc.GrpcFramingError:
        assert refused, "refused a stream that the spec allows"
    else:
        assert not refused, "accepted a stream that the spec refuses"
        assert [(m.compressed, m.data) for m in got] == expected
        assert all(type(m.data) is bytes for m in got)
        assert whole.pending == (consumed < len(data))
        assert b"".join(grpc.encode_message(m.data, m.compressed) for m in got) == data[:consumed]
    split = grpc.MessageDecoder(limit)
    seen: list[tuple[bool, bytes]] = []
    failed = False
    for index, piece in enumerate(pieces):
        try:
            seen += [(m.compressed, m.data) for m in split.feed(bytearray(piece) if index % 3 == 2 else piece)]
        except grpc.GrpcFramingError:
            failed = True
            break
    assert failed == refused, "cutting the stream changed the verdict"
    if refused:
        assert seen == expected[: len(seen)]
    else:
        assert seen == expected
        assert split.pending == (consumed < len(data))


def message_streams(rng: random.Random, mutator: Mutator) -> bytes:
    parts = []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 6))):
        payload = rng.randbytes(rng.choice((0, 1, 4, 30, rng.randrange(300))))
        parts.append(grpc.encode_message(payload, rng.random() < 0.3))
    data = b"".join(parts)
    return mutator.mutate(data) if rng.random() < 0.5 or not data else data


@pytest.mark.parametrize("size", SIZES)
def test_messages_near_valid(size):
    @given_settings(size, quick=400, full=4000)
    @given(
        st.lists(st.tuples(st.booleans(), st.binary(max_size=200)), max_size=5),
        st.lists(st.tuples(st.integers(0, 1100), st.integers(0, 255)), max_size=3),
        st.one_of(st.none(), st.integers(0, 1100)),
        st.lists(st.integers(0, 1100), max_size=8),
        st.sampled_from(LIMITS),
    )
    def run(messages, edits, cut, points, limit):
        data = bytearray(b"".join(grpc.encode_message(payload, flag) for flag, payload in messages))
        for pos, byte in edits:
            if pos < len(data):
                data[pos] = byte
        data = bytes(data if cut is None else data[:cut])
        bounds = [0, *sorted(min(p, len(data)) for p in points), len(data)]
        guarded(check_messages, (data, [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)], limit))

    run()


# --- request heads -------------------------------------------------------------------------------------------------

NAMES = (
    b":path", b":method", b":authority", b":scheme", b"content-type", b"grpc-timeout", b"te", b"host",
    b"connection", b"x-interlink-caller-app", b"x-interlink-caller-site", b"x-interlink-other", b"tri-consumer-appname",
    b"grpc-encoding", b"user-agent", b"x-custom", b":", b"", b"Content-Type", b":PATH", b"\xff\x00",
)  # fmt: skip
VALUES = {
    b":path": (b"/pkg.Svc/Method", b"/a/b/c", b"/", b"//", b"/a/", b"/a//b", b"/\xff/x", b"/a/\xe9", b"svc/m", b""),
    b":method": (b"POST", b"GET", b"post", b""),
    b":authority": (b"host:80", b"[::1]:8443", b"[::1", b"HOST", b"a:b:c", b":", b""),
    b"content-type": (b"application/grpc", b"application/grpc+proto", b"application/json", b"application/gr", b""),
    b"grpc-timeout": (b"1S", b"99999999H", b"123456789S", b"1x", b"", b"S", b"0n", b"00000001m", b"\xd9\xa0S", b"1.5S"),
    b"x-interlink-caller-app": (b"app", b"\xff\xfe", b""),
    b"tri-consumer-appname": (b"consumer", b"\x80", b""),
}  # fmt: skip
VALID_HEAD = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Svc/Method"), (b":authority", b"gw:8080"),
    (b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"grpc-timeout", b"5S"),
]  # fmt: skip


def check_head(headers: list[tuple[bytes, bytes]]) -> None:
    try:
        head = grpc.parse_request_head(headers)
    except Refusal as exc:
        assert isinstance(exc.status, Status) and exc.status != Status.OK
        assert isinstance(exc.message, str) and exc.message
        assert exc.http_status in (b"200", b"405", b"415")
        return
    assert (b":method", b"POST") in headers
    assert grpc.split_path(head.path) == (head.service, head.method)
    assert head.service and head.method and head.service.isascii() and head.method.isascii()
    assert head.timeout is None or head.timeout >= 0
    for name, _ in head.metadata:
        assert not name.startswith(b":") and not name.startswith(link_headers.PREFIX)
        assert name not in (b"te", b"grpc-timeout", b"connection", b"host")
    assert head.caller_app is None or isinstance(head.caller_app, str)
    stamps = [(link_headers.CALLER_APP, b"app")]
    out = grpc.request_headers(head, scheme=b"http", authority=b"next:1", timeout=head.timeout, stamps=stamps)
    assert all(type(name) is bytes and type(value) is bytes for name, value in out)
    again = grpc.parse_request_head(out + [(b"content-type", b"application/grpc")])
    assert (again.service, again.method) == (head.service, head.method)


_NAME = st.one_of(st.sampled_from(NAMES), st.binary(max_size=12))


@st.composite
def head_lists(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    headers = list(VALID_HEAD) if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(_NAME)
        value = draw(st.one_of(st.sampled_from(VALUES.get(name, (b"v",))), st.binary(max_size=20)))
        action = draw(st.sampled_from(["add", "replace", "drop"]))
        if action == "add" or not headers:
            headers.insert(draw(st.integers(0, len(headers))), (name, value))
        elif action == "replace":
            at = draw(st.integers(0, len(headers) - 1))
            headers[at] = (headers[at][0], value)
        else:
            del headers[draw(st.integers(0, len(headers) - 1))]
    return headers


@pytest.mark.parametrize("size", SIZES)
def test_request_heads(size):
    @given_settings(size, quick=600, full=5000)
    @given(head_lists())
    def run(headers):
        guarded(check_head, headers)

    run()


def random_head(rng: random.Random, mutator: Mutator) -> list[tuple[bytes, bytes]]:
    headers = list(VALID_HEAD) if rng.random() < 0.7 else []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 6))):
        name = rng.choice(NAMES) if rng.random() < 0.8 else mutator.junk(10)
        choices = VALUES.get(name, (b"v",))
        value = rng.choice(choices) if rng.random() < 0.6 else mutator.mutate(rng.choice(choices))
        roll = rng.random()
        if roll < 0.4 or not headers:
            headers.insert(rng.randrange(len(headers) + 1), (name, value))
        elif roll < 0.8:
            at = rng.randrange(len(headers))
            headers[at] = (headers[at][0], mutator.mutate(headers[at][1]) if rng.random() < 0.5 else value)
        else:
            del headers[rng.randrange(len(headers))]
    return headers


# --- the counted mutation loop -----------------------------------------------------------------------------------


def check_case(case: tuple) -> None:
    if case[0] == "messages":
        check_messages(case[1])
    else:
        check_head(case[1])


@pytest.mark.parametrize(("size", "inputs", "cap"), [
    pytest.param("quick", 5_000, 60, id="quick"),
    pytest.param("full", 3 * FULL_INPUTS, 400, id="full", marks=pytest.mark.slow),
])  # fmt: skip
def test_mutation_loop(size, inputs, cap):
    seed_rng = random.Random(0)
    seeds = [
        grpc.encode_message(seed_rng.randbytes(seed_rng.randrange(64)), seed_rng.random() < 0.3)
        * seed_rng.randint(1, 3)
        for _ in range(40)
    ]
    tokens = [b"\x00\x00\x00\x00\x00", b"\x01", b"\x02", b"\xff\xff\xff\xff", b"\x00\x40\x00\x00"]
    mutator = Mutator(random.Random(), seeds, tokens)

    def make(rng: random.Random) -> tuple:
        mutator.rng = rng
        if rng.random() < 0.5:  # half the inputs are message streams, half request heads
            data = message_streams(rng, mutator) if rng.random() < 0.7 else mutator.input()
            return ("messages", (data, cuts(rng, data), rng.choice(LIMITS)))
        return ("head", random_head(rng, mutator))

    fuzz_loop("grpc", inputs, make, check_case, time_cap=cap)


def test_the_oracle_catches_an_undeclared_exception(monkeypatch):
    """The loop fails (it does not swallow) when reading a head raises anything but a declared error."""

    # The heads' cache, broken. A module global stays replaceable in the compiled module, whose own type check
    # then raises the TypeError (the sources raise it from get).
    class Broken:
        def get(self, key):
            raise TypeError("boom")

    monkeypatch.setattr(grpc, "_HEADS", Broken())
    with pytest.raises(AssertionError, match="TypeError"):
        fuzz_loop("grpc-sanity", 1, lambda rng: ("head", list(VALID_HEAD)), check_case, time_cap=10, seed=1)
