"""SOFA Bolt codec: golden vectors (checked against their .txt annotations), splits at every offset,
property round trips, header-map oracles, and fuzzing that only BoltProtocolError ever escapes."""

from __future__ import annotations

import ast
import dataclasses
import random
import re
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interlink.wire import bolt

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "bolt"


def _load(path: Path) -> bytes:
    return bytes.fromhex("".join(path.read_text().split()))


VECTORS: dict[str, bytes] = {path.stem: _load(path) for path in sorted(VECTOR_DIR.glob("*.hex"))}
NAMES = sorted(VECTORS)
CRC_VECTORS = {"bolt_v2_crc_req_echo": 0x1AC2D2F2, "bolt_v2_crc_resp_echo": 0x57F8ED28}
SERVICE = "com.example.EchoService:1.0"

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ------------------------------------------------------------------------------------------------


def _feed_checked(decoder: bolt.BoltDecoder, data: bytes) -> list[bolt.BoltFrame] | None:
    """Frames, or None when the decoder refused the bytes; any other exception fails the test."""
    try:
        return decoder.feed(data)
    except bolt.BoltProtocolError as exc:
        assert type(exc) is bolt.BoltProtocolError
        return None


def _expect_error(data: bytes, match: str | None = None, **kwargs: int) -> bolt.BoltProtocolError:
    decoder = bolt.BoltDecoder(**kwargs)
    with pytest.raises(bolt.BoltProtocolError, match=match) as info:
        decoder.feed(data)
    assert type(info.value) is bolt.BoltProtocolError
    return info.value


def _assert_framed(frames: list[bolt.BoltFrame], fed: bytes) -> None:
    """Frames a decoder returns must be complete frames that are a prefix of what it was fed."""
    joined = b"".join(frame.raw or b"" for frame in frames)
    assert fed.startswith(joined)
    for frame in frames:
        assert frame.raw is not None
        assert bolt.encode(frame) == frame.raw


_LINE = re.compile(r"^\s*(?P<offset>\d+) \+(?P<length>\d+)\s+(?P<rest>\S.*)$")
_REST = re.compile(r"^(?P<name>[^:]+): (?P<value>.*?)(?:\s{3}\[(?P<bytes>[^\]]*)\])?$")


def _annotation(name: str) -> dict[str, tuple[int, int, str, str | None]]:
    """Top-level fields of a vector's .txt: name -> (offset, length, value text, first bytes shown)."""
    matches = [m for m in map(_LINE.match, (VECTOR_DIR / f"{name}.txt").read_text().splitlines()) if m]
    top = min(m.start("rest") for m in matches)
    fields = {}
    for m in matches:
        if m.start("rest") != top:
            continue
        rest = _REST.match(m.group("rest"))
        assert rest, m.group(0)
        offset, length = int(m.group("offset")), int(m.group("length"))
        fields[rest.group("name")] = (offset, length, rest.group("value"), rest.group("bytes"))
    return fields


def _encode_entries(entries: list[tuple[bytes | None, bytes | None]]) -> bytes:
    """A header map as any peer could write it, -1 (null) lengths and duplicate keys included."""
    out = b""
    for key, value in entries:
        for part in (key, value):
            out += struct.pack(">i", -1) if part is None else struct.pack(">i", len(part)) + part
    return out


def _raw_entries(data: bytes) -> list[tuple[bytes | None, bytes]]:
    """(key, exact entry bytes) per entry, independently of the module under test."""
    out, pos = [], 0
    while pos < len(data):
        start = pos
        (key_len,) = struct.unpack_from(">i", data, pos)
        pos += 4
        key = data[pos : pos + key_len] if key_len >= 0 else None
        pos += max(key_len, 0)
        (value_len,) = struct.unpack_from(">i", data, pos)
        pos += 4 + max(value_len, 0)
        out.append((key, data[start:pos]))
    return out


# --- golden vectors -----------------------------------------------------------------------------------------


def test_the_vectors_are_there():
    for name in ("bolt_v1_req_echo", "bolt_v1_resp_echo", "bolt_v1_heartbeat", "bolt_v1_heartbeat_ack",
                 "bolt_v2_crc_req_echo", "bolt_v2_crc_resp_echo", "bolt_v1_oneway_echo"):
        assert name in VECTORS


@pytest.mark.parametrize("name", NAMES)
def test_vector_decodes_as_annotated(name):
    data = VECTORS[name]
    (frame,) = bolt.BoltDecoder().feed(data)
    fields = _annotation(name)
    for label, (offset, length, _, shown) in fields.items():
        if shown:  # the bytes the annotation shows are the bytes at that offset
            expected = bytes.fromhex(shown.replace("…", ""))
            assert data[offset : offset + length].startswith(expected), label

    def number(label: str, base: int = 10) -> int:
        return int(fields[label][2].split()[0], base)

    assert frame.proto == number("proto")
    assert frame.type == number("type")
    assert frame.cmdcode == number("cmdcode")
    assert frame.ver2 == number("ver2 (command version)")
    assert frame.request_id == number("requestId")
    assert frame.codec == number("codec")
    if frame.proto == 2:
        assert frame.ver1 == number("ver1 (protocol version)")
        assert frame.switch == number("switch", 16)
    else:
        assert (frame.ver1, frame.switch) == (0, 0)
    if frame.is_response:
        assert frame.status == number("respStatus", 16)
        assert frame.timeout == -1
    else:
        assert frame.timeout == number("timeout (ms)")
    assert len(frame.class_name) == number("classLen")
    assert len(frame.header) == number("headerLen")
    assert len(frame.content) == number("contentLen")
    assert frame.class_name == ast.literal_eval(fields["className"][2]).encode()
    assert bolt.decode_header_map(frame.header) == ast.literal_eval(fields["header (SOFA map)"][2])
    assert fields["header (SOFA map)"][0] == len(data) - len(frame.content) - len(frame.header) - 4 * frame.has_crc
    assert frame.has_crc == ("crc32" in fields)
    if frame.has_crc:
        assert "(valid)" in fields["crc32"][2]
        assert int.from_bytes(data[-4:], "big") == number("crc32")


@pytest.mark.parametrize("name", NAMES)
def test_vector_reencodes_byte_identically(name):
    data = VECTORS[name]
    (frame,) = bolt.BoltDecoder().feed(data)
    assert frame.raw == data
    assert bolt.encode(frame) == data
    assert bolt.with_header(frame, frame.header) == data
    assert bolt.decode(data) == frame
    copy = dataclasses.replace(frame, raw=None)
    assert bolt.encode(copy) == data


def test_request_echo_fields():
    frame = bolt.decode(VECTORS["bolt_v1_req_echo"])
    assert (frame.proto, frame.type, frame.cmdcode) == (bolt.PROTO_V1, bolt.TYPE_REQUEST, bolt.CMD_RPC_REQUEST)
    assert frame.ver2 == 1
    assert (frame.request_id, frame.codec, frame.timeout) == (1, bolt.CODEC_HESSIAN2, 3000)
    assert frame.class_name == bolt.SOFA_REQUEST_CLASS and len(bolt.SOFA_REQUEST_CLASS) == 44
    assert frame.header == b"\x00\x00\x00\x07service\x00\x00\x00\x1b" + SERVICE.encode()
    assert bolt.header_get(frame.header, b"service") == SERVICE.encode()
    assert bolt.header_get(frame.header, b"sofa_head_method_name") is None
    assert len(frame.content) == 257 and frame.content.endswith(b"\x07hello-0")
    assert frame.is_request and not frame.is_response and not frame.is_oneway and not frame.is_heartbeat
    assert not frame.has_crc


def test_response_echo_fields():
    frame = bolt.decode(VECTORS["bolt_v1_resp_echo"])
    assert (frame.proto, frame.type, frame.cmdcode) == (1, bolt.TYPE_RESPONSE, bolt.CMD_RPC_RESPONSE)
    assert (frame.request_id, frame.codec) == (1, bolt.CODEC_HESSIAN2)
    assert frame.status == bolt.ResponseStatus.SUCCESS
    assert frame.class_name == bolt.SOFA_RESPONSE_CLASS and len(bolt.SOFA_RESPONSE_CLASS) == 46
    assert frame.header == b"" and bolt.decode_header_map(frame.header) == {}
    assert len(frame.content) == 105 and frame.content.endswith(b"\x07hello-0N")
    assert frame.is_response and not frame.is_request and not frame.is_heartbeat


def test_heartbeat_and_ack_fields():
    ping = bolt.decode(VECTORS["bolt_v1_heartbeat"])
    assert ping.is_heartbeat and ping.is_request and not ping.is_oneway
    assert (ping.request_id, ping.timeout, ping.codec) == (101, 3000, 1)
    assert ping.class_name == ping.header == ping.content == b""
    ack = bolt.decode(VECTORS["bolt_v1_heartbeat_ack"])
    assert ack.is_heartbeat and ack.is_response
    assert (ack.request_id, ack.status, ack.cmdcode) == (101, bolt.ResponseStatus.SUCCESS, bolt.CMD_HEARTBEAT)
    assert len(VECTORS["bolt_v1_heartbeat"]) == 22 and len(VECTORS["bolt_v1_heartbeat_ack"]) == 20


def test_oneway_fields():
    frame = bolt.decode(VECTORS["bolt_v1_oneway_echo"])
    assert frame.is_oneway and frame.is_request and not frame.is_response
    assert (frame.type, frame.cmdcode, frame.request_id) == (bolt.TYPE_ONEWAY, bolt.CMD_RPC_REQUEST, 103)
    assert frame.content.endswith(b"\x0ffire-and-forget")


def test_v2_crc_request_fields():
    frame = bolt.decode(VECTORS["bolt_v2_crc_req_echo"])
    assert (frame.proto, frame.ver1, frame.type, frame.cmdcode, frame.ver2) == (2, 2, 1, 1, 1)
    assert (frame.request_id, frame.codec, frame.switch, frame.timeout) == (102, 1, 1, 3000)
    assert frame.has_crc and bolt.crc_present(2, 2, 1)
    assert bolt.decode_header_map(frame.header) == {"service": SERVICE}
    assert len(frame.content) == 252


def test_response_status_values():
    assert [(s.name, s.value) for s in bolt.ResponseStatus] == [
        ("SUCCESS", 0), ("ERROR", 1), ("SERVER_EXCEPTION", 2), ("UNKNOWN", 3), ("SERVER_THREADPOOL_BUSY", 4),
        ("ERROR_COMM", 5), ("NO_PROCESSOR", 6), ("TIMEOUT", 7), ("CLIENT_SEND_ERROR", 8), ("CODEC_EXCEPTION", 9),
        ("CONNECTION_CLOSED", 0x10), ("SERVER_SERIAL_EXCEPTION", 0x11), ("SERVER_DESERIAL_EXCEPTION", 0x12),
    ]
    assert (bolt.Codec.HESSIAN2, bolt.Codec.PROTOBUF) == (1, 11)
    assert (bolt.Proto.V1, bolt.Proto.V2) == (1, 2)


# --- CRC -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CRC_VECTORS))
def test_crc_vectors_carry_a_verified_crc(name):
    data = VECTORS[name]
    assert int.from_bytes(data[-4:], "big") == CRC_VECTORS[name] == zlib.crc32(data[:-4])
    frame = bolt.decode(data)
    assert frame.has_crc and frame.content == data[len(data) - 4 - len(frame.content) : -4]
    header_size = 24 if frame.is_request else 22
    for offset in range(header_size, len(data)):  # any change after the fixed header: CRC mismatch
        corrupted = bytearray(data)
        corrupted[offset] ^= 0x5A
        _expect_error(bytes(corrupted), "CRC")


@pytest.mark.parametrize("name", sorted(CRC_VECTORS))
@pytest.mark.parametrize("new_id", [0, 1, 0x12345678, 0x7FFFFFFF, -1, -(2**31)])
def test_patch_request_id_recomputes_the_crc(name, new_id):
    data = VECTORS[name]
    original = bolt.decode(data)
    patched = bolt.patch_request_id(data, new_id)
    assert len(patched) == len(data) and patched[:6] == data[:6] and patched[10:-4] == data[10:-4]
    frame = bolt.decode(patched)  # verifies the CRC
    assert frame == dataclasses.replace(original, request_id=new_id)
    assert bolt.encode(frame) == patched
    assert data == VECTORS[name]  # the input is not modified


@pytest.mark.parametrize("name", NAMES)
def test_patch_request_id_on_every_vector(name):
    data = VECTORS[name]
    frame = bolt.decode(bolt.patch_request_id(data, 4242))
    assert frame == dataclasses.replace(bolt.decode(data), request_id=4242)


@pytest.mark.parametrize(
    "name", ["bolt_v1_req_echo", "bolt_v2_crc_req_echo", "bolt_v1_heartbeat", "bolt_v1_oneway_echo"]
)
def test_patch_timeout(name):
    data = VECTORS[name]
    for timeout in (0, -1, 1234, 2**31 - 1):
        frame = bolt.decode(bolt.patch_timeout(data, timeout))
        assert frame == dataclasses.replace(bolt.decode(data), timeout=timeout)


def test_patch_helpers_refuse_what_they_cannot_patch():
    with pytest.raises(ValueError):
        bolt.patch_timeout(VECTORS["bolt_v1_resp_echo"], 10)
    for bad_id in (2**31, -(2**31) - 1):
        with pytest.raises(ValueError):
            bolt.patch_request_id(VECTORS["bolt_v1_req_echo"], bad_id)
    for not_a_frame in (b"", b"\x01", VECTORS["bolt_v1_req_echo"][:-1], VECTORS["bolt_v1_req_echo"] + b"\x00",
                        b"\x07" + VECTORS["bolt_v1_req_echo"][1:]):
        with pytest.raises(bolt.BoltProtocolError):
            bolt.patch_request_id(not_a_frame, 1)


@pytest.mark.parametrize("name", NAMES)
def test_with_request_id_is_patch_request_id_of_a_decoded_frame(name):
    """A relayed frame under another id: the same bytes as patching its raw bytes (CRC recomputed), without
    reading the layout again; a frame without raw bytes (built, or edited) is encoded from its fields."""
    data = VECTORS[name]
    frame = bolt.decode(data)
    assert bolt.with_request_id(frame, 4242) == bolt.patch_request_id(data, 4242)
    built = dataclasses.replace(frame, raw=None)
    assert bolt.with_request_id(built, 4242) == bolt.patch_request_id(data, 4242)
    assert frame.request_id == bolt.decode(data).request_id  # the frame is left alone


@pytest.mark.parametrize("name", NAMES)
def test_encode_under_another_request_id(name):
    frame = bolt.decode(VECTORS[name])
    assert bolt.encode(frame, 77) == bolt.patch_request_id(VECTORS[name], 77)
    assert bolt.encode(frame) == VECTORS[name] and frame == bolt.decode(VECTORS[name])


def test_with_header_rewrites_header_length_and_crc():
    for name in ("bolt_v1_req_echo", "bolt_v2_crc_req_echo", "bolt_v2_crc_resp_echo"):
        frame = bolt.decode(VECTORS[name])
        header = bolt.header_set(frame.header, {b"app": b"order-app", b"service": b"com.example.Other:2.0"})
        rewritten = bolt.decode(bolt.with_header(frame, header))
        assert rewritten == dataclasses.replace(frame, header=header)
        assert bolt.decode(VECTORS[name]) == frame  # the frame object is left alone


# --- builders ------------------------------------------------------------------------------------------------


def test_heartbeat_builders_match_the_vectors():
    assert bolt.encode(bolt.heartbeat(101, timeout=3000)) == VECTORS["bolt_v1_heartbeat"]
    ack = bolt.heartbeat_ack(bolt.decode(VECTORS["bolt_v1_heartbeat"]))
    assert bolt.encode(ack) == VECTORS["bolt_v1_heartbeat_ack"]
    java = bolt.encode(bolt.heartbeat(7))
    assert java == bytes.fromhex("0101000001 00000007 01 ffffffff 0000 0000 00000000".replace(" ", ""))


def test_v2_heartbeats_keep_version_switch_and_crc():
    ping = bolt.heartbeat(9, proto=2, ver1=2, switch=1)
    wire = bolt.encode(ping)
    assert len(wire) == 24 + 4 and ping.has_crc
    assert bolt.decode(wire) == ping
    ack = bolt.heartbeat_ack(bolt.decode(wire))
    ack_wire = bolt.encode(ack)
    assert len(ack_wire) == 22 + 4  # verified against sofa-bolt-node: 26 bytes
    decoded = bolt.decode(ack_wire)
    assert (decoded.proto, decoded.ver1, decoded.switch, decoded.has_crc, decoded.request_id) == (2, 2, 1, True, 9)
    # Java's V2 with ver1 1 and switch 1: no trailer
    java_v2 = bolt.heartbeat(9, proto=2, ver1=1, switch=1)
    assert not java_v2.has_crc and len(bolt.encode(java_v2)) == 24
    assert len(bolt.encode(bolt.heartbeat_ack(java_v2))) == 22
    # V1 has neither ver1 nor switch
    assert bolt.heartbeat(1, proto=1, ver1=2, switch=1) == bolt.heartbeat(1)


@pytest.mark.parametrize(("request_name", "response_name"), [
    ("bolt_v1_req_echo", "bolt_v1_resp_echo"),
    ("bolt_v2_crc_req_echo", "bolt_v2_crc_resp_echo"),
    ("bolt_v1_oneway_echo", "bolt_v1_oneway_echo_resp_nodepeer_only"),
])
def test_response_for_reproduces_the_captured_responses(request_name, response_name):
    request = bolt.decode(VECTORS[request_name])
    captured = bolt.decode(VECTORS[response_name])
    response = bolt.response_for(request, bolt.ResponseStatus.SUCCESS, class_name=bolt.SOFA_RESPONSE_CLASS,
                                 content=captured.content)
    assert bolt.encode(response) == VECTORS[response_name]


def test_response_for_status_and_codec():
    request = bolt.decode(VECTORS["bolt_v2_crc_req_echo"])
    response = bolt.decode(bolt.encode(bolt.response_for(request, 0x10, codec=bolt.CODEC_PROTOBUF)))
    assert response.status == bolt.ResponseStatus.CONNECTION_CLOSED
    assert (response.codec, response.request_id, response.has_crc) == (bolt.CODEC_PROTOBUF, 102, True)
    assert response.cmdcode == bolt.CMD_RPC_RESPONSE
    with pytest.raises(ValueError):
        bolt.response_for(request, 0x0A)
    ping = bolt.decode(VECTORS["bolt_v1_heartbeat"])
    assert bolt.response_for(ping, bolt.ResponseStatus.SUCCESS) == bolt.heartbeat_ack(ping)


def test_encode_refuses_frames_it_cannot_write():
    good = bolt.decode(VECTORS["bolt_v1_req_echo"])
    crc = bolt.decode(VECTORS["bolt_v2_crc_req_echo"])
    bad = [
        dataclasses.replace(good, has_crc=True),
        dataclasses.replace(crc, has_crc=False),
        dataclasses.replace(crc, switch=0),  # has_crc left True
        dataclasses.replace(crc, ver1=3),
        dataclasses.replace(crc, switch=0x81),
        dataclasses.replace(good, proto=3),
        dataclasses.replace(good, cmdcode=bolt.CMD_RPC_RESPONSE),
        dataclasses.replace(good, type=bolt.TYPE_ONEWAY, cmdcode=bolt.CMD_HEARTBEAT),
        dataclasses.replace(good, request_id=2**31),
        dataclasses.replace(good, timeout=-(2**31) - 1),
        dataclasses.replace(good, codec=256),
        dataclasses.replace(good, class_name=b"x" * 0x8000),
        dataclasses.replace(good, header=b"x" * 0x8000),
        dataclasses.replace(bolt.decode(VECTORS["bolt_v1_resp_echo"]), status=0x0A),
    ]
    for frame in bad:
        with pytest.raises(ValueError):
            bolt.encode(frame)


# --- streaming -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_split_at_every_offset(name):
    data = VECTORS[name]
    expected = bolt.decode(data)
    for cut in range(1, len(data)):
        decoder = bolt.BoltDecoder()
        assert decoder.feed(data[:cut]) == []
        assert decoder.pending
        (frame,) = decoder.feed(data[cut:])
        assert frame == expected and frame.raw == data
        assert not decoder.pending


@pytest.mark.parametrize("name", NAMES)
def test_one_byte_at_a_time(name):
    data = VECTORS[name]
    decoder = bolt.BoltDecoder()
    for i in range(len(data) - 1):
        assert decoder.feed(data[i : i + 1]) == []
    (frame,) = decoder.feed(data[-1:])
    assert frame.raw == data


def test_several_frames_in_one_read_and_leftovers():
    stream = b"".join(VECTORS[name] for name in NAMES)
    decoder = bolt.BoltDecoder()
    frames = decoder.feed(stream + VECTORS["bolt_v1_req_echo"][:30])
    assert [f.raw for f in frames] == [VECTORS[name] for name in NAMES]
    assert decoder.pending
    (last,) = decoder.feed(bytearray(VECTORS["bolt_v1_req_echo"][30:]) + VECTORS["bolt_v1_heartbeat"][:1])
    assert last.raw == VECTORS["bolt_v1_req_echo"]
    (ping,) = decoder.feed(memoryview(VECTORS["bolt_v1_heartbeat"])[1:])
    assert ping.raw == VECTORS["bolt_v1_heartbeat"]
    assert decoder.feed(b"") == [] and not decoder.pending


def test_large_frame_in_small_reads():
    content = bytes(range(256)) * 8192  # 2 MiB
    frame = bolt.BoltFrame(2, bolt.TYPE_REQUEST, bolt.CMD_RPC_REQUEST, 5, ver1=2, switch=1, timeout=100,
                           class_name=bolt.SOFA_REQUEST_CLASS, content=content, has_crc=True)
    wire = bolt.encode(frame) + VECTORS["bolt_v1_heartbeat"]
    decoder = bolt.BoltDecoder()
    frames = []
    for pos in range(0, len(wire), 16384):
        frames += decoder.feed(wire[pos : pos + 16384])
    assert frames == [frame, bolt.decode(VECTORS["bolt_v1_heartbeat"])]
    assert not decoder.pending


@QUICK
@given(st.permutations(NAMES), st.lists(st.integers(1, 700), min_size=1, max_size=60))
def test_all_vectors_concatenated_in_random_chunks(order, sizes):
    stream = b"".join(VECTORS[name] for name in order)
    decoder = bolt.BoltDecoder()
    frames: list[bolt.BoltFrame] = []
    pos = i = 0
    while pos < len(stream):
        size = sizes[i % len(sizes)]
        frames += decoder.feed(stream[pos : pos + size])
        pos += size
        i += 1
    assert [f.raw for f in frames] == [VECTORS[name] for name in order]
    assert [bolt.encode(f) for f in frames] == [VECTORS[name] for name in order]
    assert not decoder.pending


# --- property round trips ------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_INT32 = st.integers(-(2**31), 2**31 - 1)


@st.composite
def bolt_frames(draw: st.DrawFn) -> bolt.BoltFrame:
    proto = draw(st.sampled_from([1, 2]))
    kind, cmdcode = draw(st.sampled_from([
        (bolt.TYPE_REQUEST, bolt.CMD_RPC_REQUEST), (bolt.TYPE_ONEWAY, bolt.CMD_RPC_REQUEST),
        (bolt.TYPE_RESPONSE, bolt.CMD_RPC_RESPONSE), (bolt.TYPE_REQUEST, bolt.CMD_HEARTBEAT),
        (bolt.TYPE_RESPONSE, bolt.CMD_HEARTBEAT),
    ]))
    ver1, switch = (draw(st.sampled_from([1, 2])), draw(st.integers(0, 127))) if proto == 2 else (0, 0)
    response = kind == bolt.TYPE_RESPONSE
    header = bolt.encode_header_map(draw(st.dictionaries(_TEXT, _TEXT, max_size=4)))
    return bolt.BoltFrame(
        proto, kind, cmdcode, draw(_INT32),
        codec=draw(st.integers(0, 255)),
        ver1=ver1,
        ver2=draw(st.integers(0, 255)),
        switch=switch,
        timeout=-1 if response else draw(_INT32),
        status=draw(st.sampled_from(bolt.ResponseStatus)) if response else bolt.ResponseStatus.SUCCESS,
        class_name=draw(
            st.sampled_from([b"", bolt.SOFA_REQUEST_CLASS, bolt.SOFA_RESPONSE_CLASS]) | st.binary(max_size=40)
        ),
        header=header,
        content=draw(st.binary(max_size=600)),
        has_crc=bolt.crc_present(proto, ver1, switch),
    )


@FUZZ
@given(bolt_frames())
def test_random_frames_round_trip(frame):
    wire = bolt.encode(frame)
    decoded = bolt.decode(wire)
    assert decoded == frame
    assert decoded.raw == wire
    assert bolt.encode(decoded) == wire
    if frame.has_crc:
        assert int.from_bytes(wire[-4:], "big") == zlib.crc32(wire[:-4])
    assert bolt.decode(bolt.patch_request_id(wire, 77)) == dataclasses.replace(frame, request_id=77)


@QUICK
@given(st.lists(bolt_frames(), min_size=1, max_size=6), st.lists(st.integers(1, 400), min_size=1, max_size=20))
def test_random_frame_streams_in_random_chunks(frames, sizes):
    stream = b"".join(bolt.encode(f) for f in frames)
    decoder = bolt.BoltDecoder()
    out: list[bolt.BoltFrame] = []
    pos = i = 0
    while pos < len(stream):
        out += decoder.feed(stream[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    assert out == frames


# --- header map ----------------------------------------------------------------------------------------------


def test_header_map_of_the_vectors():
    assert bolt.decode_header_map(bolt.decode(VECTORS["bolt_v1_req_echo"]).header) == {"service": SERVICE}
    assert bolt.decode_header_map(bolt.decode(VECTORS["bolt_v1_req_unknown_service"]).header) == {
        "service": "com.example.Missing:1.0"
    }
    assert bolt.encode_header_map({"service": SERVICE}) == bolt.decode(VECTORS["bolt_v1_req_echo"]).header
    assert bolt.decode_header_map(b"") == {}


def test_header_map_nulls_empties_and_duplicates():
    data = _encode_entries([
        (b"a", None), (None, b"b"), (None, None), (b"", b""), (b"k", b"1"), (b"e", b""), (b"k", b"2"), (b"k", None),
    ])
    assert bolt.decode_header_map(data) == {"": "", "k": "2", "e": ""}
    assert bolt.header_get(data, b"a") is None
    assert bolt.header_get(data, b"k") == b"2"
    assert bolt.header_get(data, b"e") == b""
    assert bolt.header_get(data, b"") == b""
    assert bolt.header_get(data, b"missing") is None
    assert bolt.encode_header_map({"a": None, "k": "v"}) == _encode_entries([(b"k", b"v")])
    pairs = [("k", "1"), (None, "x"), ("k", "2")]
    assert bolt.encode_header_map(pairs) == _encode_entries([(b"k", b"1"), (b"k", b"2")])
    assert bolt.encode_header_map({}) == b"" == bolt.encode_header_map([])
    # header_set keeps null entries and everything it was not asked to change, byte for byte
    updated = bolt.header_set(data, {b"k": b"new", b"z": b"added", b"e": None})
    assert updated == _encode_entries([
        (b"a", None), (None, b"b"), (None, None), (b"", b""), (b"k", b"new"), (b"z", b"added"),
    ])
    assert bolt.header_set(data, {}) is data


_KEYS = st.sampled_from([b"", b"k", b"e", b"a", b"x-interlink-app", b"x-interlink-site", b"x-interlinkz", b"service"])
_ENTRIES = st.lists(st.tuples(st.one_of(st.none(), _KEYS), st.one_of(st.none(), st.binary(max_size=6))), max_size=8)


@given(_ENTRIES, st.lists(_KEYS, min_size=1, max_size=4, unique=True))
def test_header_values_are_the_last_non_null_value_of_each_key(entries, keys):
    data = _encode_entries(entries)
    expected = [next((v for k, v in reversed(entries) if k == key and v is not None), None) for key in keys]
    assert bolt.header_values(data, bolt.HeaderKeys(tuple(keys))) == expected
    assert [bolt.header_get(data, key) for key in keys] == expected


@given(_ENTRIES, st.dictionaries(_KEYS, st.one_of(st.none(), st.binary(max_size=4)), max_size=3))
def test_header_set_drops_the_prefix_it_does_not_set(entries, updates):
    """drop_prefix: the same map as removing every other key under the prefix by name (the two-step way)."""
    data = _encode_entries(entries)
    prefix = b"x-interlink-"
    by_name = dict(updates)
    for key, value in entries:
        if key is not None and key.startswith(prefix) and key not in updates:
            by_name[key] = None
    stamped = bolt.header_set(data, updates, drop_prefix=prefix)
    assert stamped == bolt.header_set(data, by_name)
    for key, value in by_name.items():
        assert bolt.header_get(stamped, key) == (updates.get(key) if key in updates else None)


_PREFIXED = st.sampled_from([b"x-interlink-app", b"x-interlink-site", b"x-interlink-"])


@given(_ENTRIES, st.lists(_KEYS, max_size=4, unique=True),
       st.dictionaries(_PREFIXED, st.one_of(st.none(), st.binary(max_size=4)), max_size=3))
def test_header_scan_then_rewrite_is_header_set(entries, keys, updates):
    """The request path's one walk: read some keys and find the entries under the prefix (header_scan), then
    restamp from what the scan found (header_rewrite): the same map as header_set, the same values as
    header_values."""
    data = _encode_entries(entries)
    prefix = b"x-interlink-"
    values, spans = bolt.header_scan(data, bolt.HeaderKeys(tuple(keys), prefix))
    assert values == bolt.header_values(data, bolt.HeaderKeys(tuple(keys)))
    assert bolt.header_rewrite(data, spans, updates, prefix) == bolt.header_set(data, updates, drop_prefix=prefix)


def test_header_map_non_bmp_text():
    items = {"emoji-😀": "𝄞 music", "中文": "值", "": "empty key"}
    data = bolt.encode_header_map(items)
    assert bolt.decode_header_map(data) == items
    assert bolt.header_get(data, "emoji-😀".encode()) == "𝄞 music".encode()


@pytest.mark.parametrize("data", [
    b"\x00",
    b"\x00\x00\x00\x01k",
    b"\x00\x00\x00\x01k\x00\x00\x00",
    b"\x00\x00\x00\x01k\x00\x00\x00\x02v",
    b"\x00\x00\x00\x05k\x00\x00\x00\x00",
    b"\xff\xff\xff\xfe\x00\x00\x00\x00",
    b"\x00\x00\x00\x00\xff\xff\xff\xfe",
    b"\x7f\xff\xff\xff\x00\x00\x00\x00",
    b"\x00\x00\x00\x00\x7f\xff\xff\xff",
    _encode_entries([(b"k", b"v")]) + b"\x00\x00",
])
def test_malformed_header_maps(data):
    for call in (lambda: bolt.decode_header_map(data), lambda: bolt.header_get(data, b"k"),
                 lambda: bolt.header_set(data, {b"k": b"x"}), lambda: bolt.header_set(data, {})):
        with pytest.raises(bolt.BoltProtocolError) as info:
            call()
        assert type(info.value) is bolt.BoltProtocolError


def test_invalid_utf8_in_header_map():
    data = _encode_entries([(b"k", b"\xff\xfe")])
    with pytest.raises(bolt.BoltProtocolError) as info:
        bolt.decode_header_map(data)
    assert type(info.value) is bolt.BoltProtocolError
    assert bolt.header_get(data, b"k") == b"\xff\xfe"  # raw bytes: the fast scan does not validate UTF-8


@FUZZ
@given(st.dictionaries(_TEXT, _TEXT, max_size=8))
def test_header_map_round_trip(items):
    data = bolt.encode_header_map(items)
    assert bolt.decode_header_map(data) == items
    assert bolt.decode_header_map(bolt.encode_header_map(list(items.items()))) == items
    for key, value in items.items():
        assert bolt.header_get(data, key.encode()) == value.encode()


_KEYS = st.sampled_from(["service", "app", "sofa_head_method_name", "x", "", "é", "😀"]) | _TEXT
_MAYBE = st.none() | _TEXT.map(str.encode)
_ENTRIES = st.lists(st.tuples(st.none() | _KEYS.map(str.encode), _MAYBE), max_size=8)


@FUZZ
@given(_ENTRIES, st.lists(_KEYS, max_size=5))
def test_header_get_agrees_with_decode(entries, probes):
    data = _encode_entries(entries)
    decoded = bolt.decode_header_map(data)
    for key in probes + [k.decode() for k, _ in entries if k is not None]:
        value = decoded.get(key)
        assert bolt.header_get(data, key.encode()) == (None if value is None else value.encode())


@FUZZ
@given(_ENTRIES, st.dictionaries(_KEYS.map(str.encode), _MAYBE, max_size=4))
def test_header_set_agrees_with_decode_and_keeps_other_entries(entries, updates):
    data = _encode_entries(entries)
    result = bolt.header_set(data, updates)
    expected = bolt.decode_header_map(data)
    for key, value in updates.items():
        if value is None:
            expected.pop(key.decode(), None)
        else:
            expected[key.decode()] = value.decode()
    assert bolt.decode_header_map(result) == expected
    untouched = [chunk for key, chunk in _raw_entries(data) if key not in updates]
    assert [chunk for key, chunk in _raw_entries(result) if key not in updates] == untouched
    for key, value in updates.items():
        assert bolt.header_get(result, key) == value
        assert sum(1 for k, _ in _raw_entries(result) if k == key) == (value is not None)


# --- malformed input: only BoltProtocolError, never a frame from incomplete input ------------------------------


def _v1_request(**fields: int) -> bytes:
    values = dict(proto=1, type=1, cmdcode=1, ver2=1, request_id=1, codec=1, timeout=3000, class_len=0,
                  header_len=0, content_len=0)
    values.update(fields)
    return struct.pack(">BBHBiBihhi", *values.values())


def _v2_request(**fields: int) -> bytes:
    values = dict(proto=2, ver1=2, type=1, cmdcode=1, ver2=1, request_id=1, codec=1, switch=0, timeout=3000,
                  class_len=0, header_len=0, content_len=0)
    values.update(fields)
    return struct.pack(">BBBHBiBBihhi", *values.values())


def _v1_response(status: int, cmdcode: int = 2) -> bytes:
    return struct.pack(">BBHBiBHhhi", 1, 0, cmdcode, 1, 1, 1, status, 0, 0, 0)


def _v2_response(status: int) -> bytes:
    return struct.pack(">BBBHBiBBHhhi", 2, 1, 0, 2, 1, 1, 1, 0, status, 0, 0, 0)


@pytest.mark.parametrize("data", [
    b"\x00", b"\x03", b"\xff" * 30, b"\x16\x03\x01\x02\x00",  # unknown proto (the last: a TLS ClientHello)
    b"\x01\x03", b"\x01\xff", b"\x02\x01\x03", b"\x02\x02\x09",  # unknown type
    b"\x02\x00", b"\x02\x03", b"\x02\xff",  # bad ver1
    _v2_request(switch=128), _v2_request(switch=0xFF),
    _v1_request(cmdcode=2), _v1_request(cmdcode=3), _v1_request(cmdcode=0xFFFF),
    _v1_request(type=2, cmdcode=0), _v1_response(0, cmdcode=1), _v1_response(0, cmdcode=7),
    _v2_request(cmdcode=2),
    _v1_request(class_len=-1), _v1_request(header_len=-32768), _v1_request(content_len=-1),
    _v2_request(class_len=-5), _v2_request(header_len=-1), _v2_request(content_len=-(2**31)),
    _v1_request(content_len=2**31 - 1), _v2_request(content_len=16 * 1024 * 1024),  # over the 16 MiB default
    _v1_request(class_len=0x7FFF, header_len=0x7FFF, content_len=16 * 1024 * 1024 - 22 - 0xFFFE + 1),
    *[_v1_response(status) for status in (0x0A, 0x0B, 0x0F, 0x13, 0x100, 0xFFFF)],
    _v2_response(0x000C),
])
def test_malformed_fixed_headers_are_refused_before_the_body(data):
    _expect_error(data)


def test_frame_size_limit_counts_the_whole_frame():
    data = VECTORS["bolt_v2_crc_req_echo"]
    assert bolt.BoltDecoder(max_frame_size=len(data)).feed(data)[0].raw == data
    _expect_error(data[:24], "exceeds", max_frame_size=len(data) - 1)  # decided from the fixed header alone
    assert bolt.BoltDecoder(max_frame_size=22).feed(VECTORS["bolt_v1_heartbeat"])


def test_bad_crc_trailer():
    data = bytearray(VECTORS["bolt_v2_crc_resp_echo"])
    data[-1] ^= 1
    _expect_error(bytes(data), "CRC")


def test_decoder_is_unusable_after_an_error_and_reports_earlier_frames():
    decoder = bolt.BoltDecoder()
    good = VECTORS["bolt_v1_req_echo"]
    with pytest.raises(bolt.BoltProtocolError) as info:
        decoder.feed(good + VECTORS["bolt_v1_heartbeat"] + b"\x09garbage")
    assert [f.raw for f in info.value.frames] == [good, VECTORS["bolt_v1_heartbeat"]]
    assert not decoder.pending
    with pytest.raises(bolt.BoltProtocolError):
        decoder.feed(good)
    buffered = bolt.BoltDecoder()
    assert buffered.feed(good[:10]) == []
    with pytest.raises(bolt.BoltProtocolError) as info:
        buffered.feed(good[10:] + b"\x00")
    assert [f.raw for f in info.value.frames] == [good]


@pytest.mark.parametrize("name", NAMES)
def test_truncations_never_yield_a_frame_then_garbage_only_raises_protocol_errors(name):
    data = VECTORS[name]
    rng = random.Random(name)
    for cut in range(len(data)):
        decoder = bolt.BoltDecoder()
        assert decoder.feed(data[:cut]) == []
        assert decoder.pending == (cut > 0)
        garbage = rng.randbytes(rng.choice([1, 7, 64, 400]))
        frames = _feed_checked(decoder, garbage)
        if frames is not None:
            _assert_framed(frames, data[:cut] + garbage)


@FUZZ
@given(st.binary(max_size=1500), st.lists(st.integers(1, 300), min_size=1, max_size=10))
def test_random_bytes_only_raise_protocol_errors(data, sizes):
    for source in (data, b"\x01" + data, b"\x02\x02" + data, b"\x01\x00" + data):
        decoder = bolt.BoltDecoder(max_frame_size=4096)
        frames: list[bolt.BoltFrame] = []
        pos = i = 0
        while pos < len(source):
            got = _feed_checked(decoder, source[pos : pos + sizes[i % len(sizes)]])
            if got is None:
                break
            frames += got
            pos += sizes[i % len(sizes)]
            i += 1
        _assert_framed(frames, source)


@FUZZ
@given(st.sampled_from(NAMES), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 400))
def test_mutated_vectors_only_raise_protocol_errors(name, changes, cut):
    data = bytearray(VECTORS[name] + VECTORS["bolt_v1_heartbeat"])
    for offset, value in changes:
        data[offset % len(data)] = value
    mutated = bytes(data)
    decoder = bolt.BoltDecoder()
    frames = _feed_checked(decoder, mutated[:cut])
    if frames is not None:
        more = _feed_checked(decoder, mutated[cut:])
        _assert_framed(frames + (more or []), mutated)
        for frame in frames + (more or []):
            try:
                bolt.decode_header_map(frame.header)
            except bolt.BoltProtocolError as exc:
                assert type(exc) is bolt.BoltProtocolError


@FUZZ
@given(st.binary(max_size=300), st.binary(min_size=1, max_size=8))
def test_header_functions_on_random_bytes_only_raise_protocol_errors(data, key):
    for call in (lambda: bolt.decode_header_map(data), lambda: bolt.header_get(data, key),
                 lambda: bolt.header_set(data, {key: b"v"}), lambda: bolt.header_set(data, {key: None})):
        try:
            call()
        except bolt.BoltProtocolError as exc:
            assert type(exc) is bolt.BoltProtocolError
