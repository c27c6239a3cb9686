"""Fuzzing the Bolt frame decoder and the header-map readers (interlink.wire.bolt).

Declared: `BoltProtocolError` (and nothing else) for any bytes, cut anywhere, with any frame-size limit.
Besides the exception type, every input is checked against oracles that hold for all inputs:

- feeding the stream whole or cut into pieces gives the same frames and the same verdict;
- the frames are a prefix of the stream, each within the size limit, and re-encode to their exact bytes;
- a decoder that failed keeps failing;
- `decode_header_map`, `header_get` and `header_set` agree on which header maps are well-formed, and on
  the value of every key.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.wire import bolt

from .conftest import FULL_INPUTS, SIZES, Mutator, cuts, fuzz_loop, given_settings, guarded

DECLARED = bolt.BoltProtocolError

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "bolt"
VECTORS = [bytes.fromhex("".join(path.read_text().split())) for path in sorted(VECTOR_DIR.glob("*.hex"))]
SMALL_LIMITS = (0, 1, 20, 21, 22, 24, 28, 64, 300, 1024, 1 << 16)
MAX_FRAME_SIZES = SMALL_LIMITS + (bolt.DEFAULT_MAX_FRAME_SIZE,) * 8  # mostly the default: limits end most inputs

COMMANDS = sorted(bolt._VALID_COMMANDS)  # (type, cmdcode) pairs a correct peer sends
STATUSES = [status.value for status in bolt.ResponseStatus]

# (proto, is_response) -> field -> (offset, width) in the fixed header (PROTOCOLS.md 1.2/1.3)
FIELDS: dict[tuple[int, bool], dict[str, tuple[int, int]]] = {
    (1, False): {"proto": (0, 1), "type": (1, 1), "cmdcode": (2, 2), "ver2": (4, 1), "id": (5, 4), "codec": (9, 1),
                 "timeout": (10, 4), "class_len": (14, 2), "header_len": (16, 2), "content_len": (18, 4)},
    (1, True): {"proto": (0, 1), "type": (1, 1), "cmdcode": (2, 2), "ver2": (4, 1), "id": (5, 4), "codec": (9, 1),
                "status": (10, 2), "class_len": (12, 2), "header_len": (14, 2), "content_len": (16, 4)},
    (2, False): {"proto": (0, 1), "ver1": (1, 1), "type": (2, 1), "cmdcode": (3, 2), "ver2": (5, 1), "id": (6, 4),
                 "codec": (10, 1), "switch": (11, 1), "timeout": (12, 4), "class_len": (16, 2),
                 "header_len": (18, 2), "content_len": (20, 4)},
    (2, True): {"proto": (0, 1), "ver1": (1, 1), "type": (2, 1), "cmdcode": (3, 2), "ver2": (5, 1), "id": (6, 4),
                "codec": (10, 1), "switch": (11, 1), "status": (12, 2), "class_len": (14, 2), "header_len": (16, 2),
                "content_len": (18, 4)},
}  # fmt: skip
HEADER_KEYS = (b"service", b"sofa_head_method_name", b"app", b"", b"rpc_trace_context.sofaTraceId", b"\xff")
TOKENS = [
    b"\x01\x01\x00\x01", b"\x01\x00\x00\x02", b"\x02\x02\x01\x00\x01", b"\x02\x01\x00\x00\x02",
    b"\x00\x00\x00\x07service", b"\xff\xff\xff\xff", b"\x7f\xff", b"\x80\x00", b"\x00\x00\x00\x00",
    bolt.SOFA_REQUEST_CLASS, bolt.SOFA_RESPONSE_CLASS,
]  # fmt: skip


# --- building frames -------------------------------------------------------------------------------------------


def make_frame(
    proto: int,
    command: tuple[int, int],
    *,
    ver1: int = 1,
    switch: int = 0,
    request_id: int = 1,
    codec: int = 1,
    ver2: int = 1,
    timeout: int = 3000,
    status: int = 0,
    class_name: bytes = b"",
    header: bytes = b"",
    content: bytes = b"",
) -> bytes:
    if proto == 1:
        ver1 = switch = 0
    frame = bolt.BoltFrame(
        proto, command[0], command[1], request_id, codec, ver1, ver2, switch, timeout, status,
        class_name, header, content, bolt.crc_present(proto, ver1, switch),
    )  # fmt: skip
    return bolt.encode(frame)


def header_map(entries: list[tuple[bytes | None, bytes | None]]) -> bytes:
    """A header map as any peer could write it: -1 (null) lengths and duplicate keys included."""
    out = bytearray()
    for key, value in entries:
        for part in (key, value):
            out += struct.pack(">i", -1) if part is None else struct.pack(">i", len(part)) + part
    return bytes(out)


def set_field(data: bytes, name: str, value: int, fix_crc: bool) -> bytes:
    """`data` (starting with a frame) with one fixed-header field overwritten, optionally with its CRC32
    trailer recomputed so that the decoder gets past the CRC check to the lengths and limits."""
    if not data or data[0] not in (1, 2) or len(data) < 3:
        return data
    proto = data[0]
    is_response = data[1 if proto == 1 else 2] == 0
    offset, width = FIELDS[(proto, is_response)][name]
    out = bytearray(data)
    out[offset : offset + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
    if fix_crc and proto == 2 and len(out) >= 24 and out[1] == 2 and out[11] & 1 and len(out) >= 28:
        out[-4:] = struct.pack(">I", zlib.crc32(bytes(out[:-4])))
    return bytes(out)


def random_frame(rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        return rng.choice(VECTORS)
    proto = rng.choice((1, 2))
    command = rng.choice(COMMANDS)
    entries = [
        (
            rng.choice((*HEADER_KEYS[:3], None, rng.randbytes(rng.randrange(6)))),
            rng.choice((None, rng.randbytes(rng.randrange(12)))),
        )
        for _ in range(rng.choice((0, 0, 1, 2, 4)))
    ]
    return make_frame(
        proto,
        command,
        ver1=rng.choice((1, 2, 2)),
        switch=rng.choice((0, 1, 1, 3, 127, rng.randrange(128))),
        request_id=rng.randint(-(1 << 31), (1 << 31) - 1),
        codec=rng.randrange(256),
        ver2=rng.randrange(256),
        timeout=rng.randint(-(1 << 31), (1 << 31) - 1),
        status=rng.choice(STATUSES),
        class_name=rng.choice((b"", bolt.SOFA_REQUEST_CLASS, rng.randbytes(rng.randrange(8)))),
        header=header_map(entries),
        content=rng.randbytes(rng.choice((0, 1, 5, 40, rng.randrange(400)))),
    )


# --- oracles ---------------------------------------------------------------------------------------------------


def feed_all(decoder: bolt.BoltDecoder, pieces: list[bytes]) -> tuple[list[bolt.BoltFrame], bool]:
    """(frames, failed): every frame the decoder completed, and whether it refused the stream."""
    frames: list[bolt.BoltFrame] = []
    for piece in pieces:
        try:
            frames.extend(decoder.feed(piece))
        except DECLARED as exc:
            frames.extend(exc.frames)
            try:
                decoder.feed(b"\x01")
            except DECLARED:
                pass
            else:
                raise AssertionError("a decoder that failed accepted more bytes") from None
            return frames, True
    return frames, False


def check_stream(data: bytes, pieces: list[bytes], max_frame_size: int) -> None:
    whole, whole_failed = feed_all(bolt.BoltDecoder(max_frame_size=max_frame_size), [data])
    decoder = bolt.BoltDecoder(max_frame_size=max_frame_size)
    split, split_failed = feed_all(decoder, pieces)
    assert [frame.raw for frame in split] == [frame.raw for frame in whole], "cutting the stream changed its frames"
    assert split_failed == whole_failed, "cutting the stream changed the verdict"
    joined = b"".join(frame.raw or b"" for frame in whole)
    assert data.startswith(joined)
    if not whole_failed:
        assert decoder.pending == (len(joined) < len(data))
    for frame in whole:
        assert frame.raw is not None and len(frame.raw) <= max_frame_size
        assert bolt.encode(frame) == frame.raw
        assert bolt.decode(frame.raw) == frame
        check_header_map(frame.header, ())


_MISSING = object()


def check_header_map(data: bytes, probes: tuple[bytes, ...]) -> None:
    try:
        decoded: dict[str, str] | None = bolt.decode_header_map(data)
    except DECLARED:
        decoded = None
    try:
        same = bolt.header_set(data, {})
    except DECLARED:
        well_formed = False
    else:
        well_formed = True
        assert same == data
    keys = list(probes) + list(HEADER_KEYS[:4])
    if decoded is not None:
        assert well_formed, "decode_header_map read a map that header_set calls malformed"
        keys += [key.encode() for key in decoded]
    for key in keys:
        try:
            got: object = bolt.header_get(data, key)
        except DECLARED:
            assert not well_formed, "header_get refused a map that header_set accepts"
            got = _MISSING
        else:
            assert well_formed, "header_get read a map that header_set calls malformed"
        if decoded is not None:
            try:
                text_key = key.decode()
            except UnicodeDecodeError:
                continue
            expected = decoded.get(text_key)
            assert got == (None if expected is None else expected.encode()), key
    if not well_formed:
        try:
            bolt.header_set(data, {b"service": b"x"})
        except DECLARED:
            pass
        else:
            raise AssertionError("header_set edited a malformed map")
        return
    edited = bolt.header_set(data, {b"service": b"svc", b"app": None})
    assert bolt.header_get(edited, b"service") == b"svc"
    assert bolt.header_get(edited, b"app") is None


def check_case(case: tuple[bytes, list[bytes], int, tuple[bytes, ...]]) -> None:
    data, pieces, max_frame_size, probes = case
    check_stream(data, pieces, max_frame_size)
    check_header_map(data, probes)  # the same bytes as a header map, too
    if len(data) > 24:
        check_header_map(data[24:], probes)


# --- hypothesis: structured near-valid frames --------------------------------------------------------------------

_I32 = st.one_of(
    st.sampled_from([0, 1, -1, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, -(1 << 31)]), st.integers(-(1 << 31), (1 << 31) - 1)
)
_BYTES = st.binary(max_size=48)
_ENTRIES = st.lists(
    st.tuples(st.one_of(st.none(), st.sampled_from(HEADER_KEYS), _BYTES), st.one_of(st.none(), _BYTES)), max_size=4
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    return make_frame(
        draw(st.sampled_from((1, 2))),
        draw(st.sampled_from(COMMANDS)),
        ver1=draw(st.sampled_from((1, 2))),
        switch=draw(st.integers(0, 127)),
        request_id=draw(_I32),
        codec=draw(st.integers(0, 255)),
        ver2=draw(st.integers(0, 255)),
        timeout=draw(_I32),
        status=draw(st.sampled_from(STATUSES)),
        class_name=draw(st.one_of(st.just(b""), st.just(bolt.SOFA_REQUEST_CLASS), _BYTES)),
        header=header_map(draw(_ENTRIES)),
        content=draw(st.binary(max_size=300)),
    )


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[bytes, list[bytes], int, tuple[bytes, ...]]:
    """1-3 valid frames, then field edits (lengths, type, cmdcode, status, ver1, switch, proto...) on one of
    them, CRC trailers fixed up or not, then maybe truncation or trailing bytes; cut into pieces."""
    parts = draw(st.lists(frames(), min_size=1, max_size=3))
    target = draw(st.integers(0, len(parts) - 1))
    frame = parts[target]
    for _ in range(draw(st.integers(0, 3))):
        proto = frame[0]
        is_response = frame[1 if proto == 1 else 2] == 0
        name = draw(st.sampled_from(sorted(FIELDS[(proto, is_response)])))
        width = FIELDS[(proto, is_response)][name][1]
        value = draw(
            st.one_of(
                st.sampled_from([0, 1, 2, 3, 0x10, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000]),
                st.integers(0, (1 << (8 * width)) - 1),
                st.integers(-8, 8).map(lambda d, f=frame, n=name, p=proto, r=is_response: _field(f, p, r, n) + d),
            )
        )
        frame = set_field(frame, name, value, draw(st.booleans()))
        if not frame or frame[0] not in (1, 2):
            break
    parts[target] = frame
    data = b"".join(parts)
    tail = draw(st.sampled_from(["none", "none", "truncate", "junk"]))
    if tail == "truncate" and data:
        data = data[: draw(st.integers(0, len(data)))]
    elif tail == "junk":
        data += draw(st.binary(min_size=1, max_size=40))
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *points, len(data)]
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return data, pieces, draw(st.sampled_from(MAX_FRAME_SIZES)), tuple(draw(st.lists(_BYTES, max_size=2)))


def _field(frame: bytes, proto: int, is_response: bool, name: str) -> int:
    offset, width = FIELDS[(proto, is_response)][name]
    return int.from_bytes(frame[offset : offset + width], "big")


@pytest.mark.parametrize("size", SIZES)
def test_near_valid_frames(size):
    @given_settings(size, quick=700, full=6000)
    @given(near_valid())
    def run(case):
        guarded(check_case, case)

    run()


@pytest.mark.parametrize("size", SIZES)
def test_arbitrary_bytes(size):
    @given_settings(size, quick=300, full=3000)
    @given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8), st.sampled_from(MAX_FRAME_SIZES))
    def run(data, points, max_frame_size):
        bounds = [0, *sorted(min(p, len(data)) for p in points), len(data)]
        pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        guarded(check_case, (data, pieces, max_frame_size, ()))

    run()


@pytest.mark.parametrize("size", SIZES)
def test_header_maps(size):
    @given_settings(size, quick=300, full=3000)
    @given(_ENTRIES, st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3), st.integers(0, 400),
           st.lists(_BYTES, max_size=3))  # fmt: skip
    def run(entries, edits, cut, probes):
        data = bytearray(header_map(entries))
        for pos, byte in edits:
            if pos < len(data):
                data[pos] = byte
        guarded(check_header_map, bytes(data[: cut if cut < len(data) else len(data)]), tuple(probes))

    run()


# --- the counted mutation loop -----------------------------------------------------------------------------------


def loop_input(mutator: Mutator):
    def make(rng: random.Random) -> tuple[bytes, list[bytes], int, tuple[bytes, ...]]:
        roll = rng.random()
        if roll < 0.45:  # valid streams with field edits, CRC fixed or not
            data = b"".join(random_frame(rng) for _ in range(rng.choice((1, 1, 2, 3))))
            for _ in range(rng.choice((0, 1, 1, 2))):
                proto = data[0]
                is_response = data[1 if proto == 1 else 2] == 0
                name = rng.choice(sorted(FIELDS[(proto, is_response)]))
                width = FIELDS[(proto, is_response)][name][1]
                if rng.random() < 0.6:
                    value = int.from_bytes(mutator.boundary(width), "big")
                else:
                    value = rng.randrange(1 << (8 * width))
                data = set_field(data, name, value, rng.random() < 0.5)
                if not data or data[0] not in (1, 2):
                    break
            if rng.random() < 0.3:
                data = mutator.mutate(data)
        else:
            data = mutator.input()
        probes = tuple(rng.choice(HEADER_KEYS) for _ in range(rng.randrange(2)))
        return data, cuts(rng, data), rng.choice(MAX_FRAME_SIZES), probes

    return make


@pytest.mark.parametrize(("size", "inputs", "cap"), [
    pytest.param("quick", 4_000, 60, id="quick"),
    pytest.param("full", 2 * FULL_INPUTS, 400, id="full", marks=pytest.mark.slow),
])  # fmt: skip
def test_mutation_loop(size, inputs, cap):
    seed_rng = random.Random(0)
    seeds = VECTORS + [b"".join(random_frame(seed_rng) for _ in range(seed_rng.randint(1, 3))) for _ in range(60)]
    mutator = Mutator(random.Random(), seeds, TOKENS)
    inner = loop_input(mutator)

    def make(rng: random.Random):
        mutator.rng = rng  # the loop's seeded generator drives the mutations too
        return inner(rng)

    fuzz_loop("bolt", inputs, make, check_case, time_cap=cap)


# --- regressions and sanity --------------------------------------------------------------------------------------


def test_the_oracle_catches_an_undeclared_exception(monkeypatch):
    """The loop fails (it does not swallow) when the decoder raises anything but BoltProtocolError."""

    def broken_feed(self, data):
        raise IndexError("boom")

    monkeypatch.setattr(bolt.BoltDecoder, "feed", broken_feed)
    with pytest.raises(AssertionError, match="IndexError"):
        fuzz_loop("bolt-sanity", 3, lambda rng: (b"\x01", [b"\x01"], 100, ()), check_case, time_cap=10, seed=1)
