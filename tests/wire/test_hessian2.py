"""SOFA Hessian (3.x draft dialect): golden Bolt bodies, every encoding form, writer bytes vs Java/node,
round trips, and fuzzing (only HessianError may escape the reader)."""

from __future__ import annotations

import math
import pathlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.wire.hessian2 import (
    HessianDate,
    HessianError,
    HessianLong,
    HessianObject,
    SofaHessianReader,
    SofaHessianWriter,
    TypedList,
    TypedMap,
)
from tests.wire.test_hessian_final import graphs, shape

VECTORS = pathlib.Path(__file__).resolve().parent.parent / "vectors" / "bolt"
REQUEST = "com.alipay.sofa.rpc.core.request.SofaRequest"
RESPONSE = "com.alipay.sofa.rpc.core.response.SofaResponse"
SERVICE = "com.example.EchoService:1.0"


def frame(name: str) -> bytes:
    return bytes.fromhex("".join((VECTORS / f"{name}.hex").read_text().split()))


def body(name: str) -> bytes:
    """The content (Hessian body) of a Bolt V1 or V2 request/response vector."""
    data = frame(name)
    if data[0] == 1:  # V1: lengths at 14/16/18 (request) or 12/14/16 (response)
        at, start = (14, 22) if data[1] in (1, 2) else (12, 20)
    else:  # V2: one more byte (ver1) before type, one more (switch) before timeout/status
        at, start = (16, 24) if data[2] in (1, 2) else (14, 22)
    class_len, header_len, content_len = struct.unpack_from(">HHI", data, at)
    offset = start + class_len + header_len
    return data[offset : offset + content_len]


def read_all(data: bytes) -> list[object]:
    reader = SofaHessianReader(data)
    values = []
    while not reader.at_end:
        values.append(reader.read_value())
    return values


def written(*values: object) -> bytes:
    writer = SofaHessianWriter()
    for value in values:
        writer.write_value(value)
    return writer.getvalue()


def request(method: str, sigs: list[str], props: dict | None = None, service: str = SERVICE) -> HessianObject:
    return HessianObject(
        REQUEST,
        {
            "methodName": method,
            "methodArgSigs": TypedList(sigs, "[java.lang.String"),
            "targetServiceUniqueName": service,
            "targetAppName": "echo-server",
            "requestProps": props if props is not None else {"service": service},
        },
    )


def response(app_response: object) -> HessianObject:
    return HessianObject(
        RESPONSE, {"isError": False, "errorMsg": None, "appResponse": app_response, "responseProps": None}
    )


TRACE_PROPS = {
    "service": SERVICE,
    "rpc_trace_context": {
        "sofaCallerApp": "echo-client",
        "sofaRpcId": "0",
        "sofaTraceId": "0a0fe8ab1700000000001000112233",
    },
}

# Every vector with a body, and the values of that body (SofaRequest + arguments, or SofaResponse).
BODIES = {
    "bolt_v1_req_echo": [request("echo", ["java.lang.String"]), "hello-0"],
    "bolt_v1_req_add": [request("add", ["int", "int"]), 0, 1],
    "bolt_v1_req_fail": [request("fail", ["java.lang.String"]), "boom"],
    "bolt_v1_req_unknown_service": [
        request("echo", ["java.lang.String"], service="com.example.Missing:1.0"),
        "x",
    ],
    "bolt_v1_req_echo_traceprops": [request("echo", ["java.lang.String"], TRACE_PROPS), "props"],
    "bolt_v1_oneway_echo": [request("echo", ["java.lang.String"]), "fire-and-forget"],
    "bolt_v2_crc_req_echo": [request("echo", ["java.lang.String"]), "hi"],
    "bolt_v1_resp_echo": [response("hello-0")],
    "bolt_v1_resp_add": [response(1)],
    "bolt_v1_resp_echo_traceprops": [response("props")],
    "bolt_v1_oneway_echo_resp_nodepeer_only": [response("fire-and-forget")],
    "bolt_v2_crc_resp_echo": [response("hi")],
}


def test_every_vector_with_a_body_is_listed():
    with_body = {p.stem for p in VECTORS.glob("*.hex") if body(p.stem)}
    assert with_body == set(BODIES)


def same(a: object, b: object) -> bool:
    """Equality that also compares types (True is not 1, 1 is not 1.0) and type names."""
    if type(a) is not type(b):
        return False
    if isinstance(a, TypedList | TypedMap) and a.type_name != b.type_name:  # type: ignore[union-attr]
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, HessianObject):
        return a.class_name == b.class_name and same(a.fields, b.fields)  # type: ignore[union-attr]
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))  # type: ignore[arg-type]
    return a == b


# --- golden vectors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BODIES))
def test_vector_bodies_decode(name):
    values = read_all(body(name))
    assert same(values, BODIES[name]), values


@pytest.mark.parametrize("name", sorted(BODIES))
def test_writer_reproduces_vector_bodies_byte_for_byte(name):
    """sofa-rpc-node wrote these; writing the same values (same field order, same types) gives the same
    bytes, requests (typed String[] list, maps) as well as responses."""
    assert written(*BODIES[name]) == body(name)


def test_offset_stops_after_each_value():
    data = body("bolt_v1_req_add")
    reader = SofaHessianReader(data)
    head = reader.read_value()
    assert isinstance(head, HessianObject) and head.fields["methodName"] == "add"
    assert data[reader.offset :] == bytes([0x90, 0x91])  # the two int arguments, untouched
    assert reader.read_value() == 0 and reader.offset == len(data) - 1
    assert reader.read_value() == 1 and reader.at_end
    with pytest.raises(HessianError, match="truncated"):
        reader.read_value()


def test_stream_state_is_tracked():
    reader = SofaHessianReader(body("bolt_v1_req_echo_traceprops"))
    head = reader.read_value()
    assert reader.class_defs == [
        (REQUEST, ("methodName", "methodArgSigs", "targetServiceUniqueName", "targetAppName", "requestProps"))
    ]
    assert reader.types == ["[java.lang.String"]
    props = head.fields["requestProps"]  # type: ignore[union-attr]
    # refs in stream order: the SofaRequest, its methodArgSigs list, requestProps, the nested trace map
    assert [type(r).__name__ for r in reader.refs] == ["HessianObject", "TypedList", "dict", "dict"]
    assert reader.refs[0] is head and reader.refs[2] is props and reader.refs[3] is props["rpc_trace_context"]


def test_reading_starts_at_an_offset():
    data = b"garbage" + body("bolt_v1_resp_echo")
    assert SofaHessianReader(data, 7).read_value() == response("hello-0")
    with pytest.raises(HessianError):
        SofaHessianReader(data, len(data) + 1)


# --- every encoding form ---------------------------------------------------------------------------------

# Golden bytes written by sofa-hessian-node 2.2.1 (hessian.js-1 EncoderV2, what sofa-rpc-node uses).
NODE_INTS = {
    "80": -16, "bf": 47, "c7ef": -17, "c830": 48, "c000": -2048, "cfff": 2047, "d3f7ff": -2049,
    "d40800": 2048, "d00000": -262144, "d7ffff": 262143, "49fffbffff": -262145, "4900040000": 262144,
    "4980000000": -(2**31), "497fffffff": 2**31 - 1,
}  # fmt: skip
NODE_LONGS = {
    "d8": -8, "ef": 15, "f7f7": -9, "f810": 16, "f000": -2048, "ffff": 2047, "3bf7ff": -2049, "3c0800": 2048,
    "380000": -262144, "3fffff": 262143, "77fffbffff": -262145, "7700040000": 262144,
    "7780000000": -(2**31), "777fffffff": 2**31 - 1, "4cffffffff7fffffff": -(2**31) - 1,
    "4c0000000080000000": 2**31, "4c7fffffffffffffff": 2**63 - 1, "4c8000000000000000": -(2**63),
}  # fmt: skip
# Doubles where node and Java write the same bytes.
DOUBLES = {
    "67": 0.0, "68": 1.0, "69ff": -1.0, "697f": 127.0, "6980": -128.0, "6a0080": 128.0, "6aff7f": -129.0,
    "6a7fff": 32767.0, "6a8000": -32768.0, "6b47000000": 32768.0, "44400921f9f01b866e": 3.14159,
}  # fmt: skip
# Java's writeDouble uses 0x6b for any value a float32 holds exactly; node only for integral values.
JAVA_ONLY_DOUBLES = {"6b3f000000": 0.5, "6b501502f9": 1e10, "6b7f800000": math.inf, "6bff800000": -math.inf}
NODE_ONLY_DOUBLES = {"443fe0000000000000": 0.5, "444202a05f20000000": 1e10, "447ff0000000000000": math.inf}


@pytest.mark.parametrize(("hexed", "value"), sorted(NODE_INTS.items()))
def test_int_forms(hexed, value):
    data = bytes.fromhex(hexed)
    assert read_all(data) == [value]
    writer = SofaHessianWriter()
    writer.write_int(value)
    assert writer.getvalue() == data


@pytest.mark.parametrize(("hexed", "value"), sorted(NODE_LONGS.items()))
def test_long_forms(hexed, value):
    data = bytes.fromhex(hexed)
    assert read_all(data) == [value]
    writer = SofaHessianWriter()
    writer.write_long(value)
    assert writer.getvalue() == data


@pytest.mark.parametrize(
    ("hexed", "value"), sorted({**DOUBLES, **JAVA_ONLY_DOUBLES, **NODE_ONLY_DOUBLES}.items())
)
def test_double_forms_read(hexed, value):
    (read,) = read_all(bytes.fromhex(hexed))
    assert type(read) is float and read == value


@pytest.mark.parametrize(("hexed", "value"), sorted({**DOUBLES, **JAVA_ONLY_DOUBLES}.items()))
def test_double_forms_written_as_java_does(hexed, value):
    writer = SofaHessianWriter()
    writer.write_double(value)
    assert writer.getvalue().hex() == hexed


def test_double_edge_cases_written_as_java_does():
    def w(value: float) -> str:
        writer = SofaHessianWriter()
        writer.write_double(value)
        return writer.getvalue().hex()

    assert w(-0.0) == "67"  # (int) -0.0 == -0.0 in Java: written as 0.0
    assert w(math.nan) == "447ff8000000000000"  # Double.doubleToLongBits: the canonical NaN
    for value in (2147483647.0, 1e300, 0.1, -1e-300):  # not float32 values (1e300: beyond its range)
        assert w(value) == "44" + struct.pack(">d", value).hex()
    assert w(16777216.0) == "6b4b800000"  # integral beyond short, a float32 value
    assert w(-2.5) == "6bc0200000"
    (nan,) = read_all(bytes.fromhex("6b7fc00000"))
    assert math.isnan(nan)


def test_null_bool_date():
    assert read_all(b"NTF") == [None, True, False]
    assert read_all(bytes.fromhex("64") + struct.pack(">q", 1700000000123)) == [HessianDate(1700000000123)]
    assert HessianDate(0).to_datetime().isoformat() == "1970-01-01T00:00:00+00:00"
    assert written(None, True, False, HessianDate(-1)) == b"NTFd" + struct.pack(">q", -1)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"\x00", ""),
        (b"\x05hello", "hello"),
        (b"S\x00\x05hello", "hello"),
        (b"s\x00\x02heS\x00\x03llo", "hello"),
        (b"s\x00\x02he\x03llo", "hello"),  # final chunk in the short form (Java's reader accepts it)
        (b"s\x00\x01hs\x00\x01e\x03llo", "hello"),
        (b"\x03h\xc3\xa9\xe4\xb8\xad", "hé中"),
        (b"\x02\xed\xa0\xbd\xed\xb8\x80", "\U0001f600"),  # Java/node: CESU-8, two 3-byte surrogates
        (b"\x02\xf0\x9f\x98\x80", "\U0001f600"),  # standard UTF-8: 4 bytes count as 2 UTF-16 units
        (b"s\x00\x01\xed\xa0\xbd\x01\xed\xb8\x80", "\U0001f600"),  # pair split by a chunk boundary
        (b"\x03a\xed\xa0\xbdb", "a\ufffdb"),  # lone surrogate (legal in Java): U+FFFD
        (b"\x01\xed\xb8\x80", "\ufffd"),
    ],
)
def test_string_forms(data, text):
    assert read_all(data) == [text]


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\xf0\x9f\x98\x80",  # a 4-byte character does not fit 1 unit
        b"\x01\xff",
        b"\x01\x80",
        b"\x01\xc3",  # truncated
        b"\x02\xc3\x28",  # bad continuation byte
        b"s\x00\x01aN",  # a chunk continued by something else
        b"S\x00\x05hell",
        b"S\x00",
    ],
)
def test_bad_strings(data):
    with pytest.raises(HessianError):
        read_all(data)


def test_binary_forms():
    assert read_all(b"\x20") == [b""]
    assert read_all(b"\x23abc") == [b"abc"]
    assert read_all(b"B\x00\x03abc") == [b"abc"]
    assert read_all(b"b\x00\x02abB\x00\x01c") == [b"abc"]
    assert read_all(b"b\x00\x02ab\x21c") == [b"abc"]
    with pytest.raises(HessianError):
        read_all(b"b\x00\x02abN")
    assert written(b"") == b"\x20"
    assert written(b"x" * 15) == b"\x2f" + b"x" * 15
    assert written(b"x" * 16) == b"B\x00\x10" + b"x" * 16
    assert written(b"x" * 0x8000) == b"B\x80\x00" + b"x" * 0x8000
    assert written(b"x" * 0x8001) == b"b\x80\x00" + b"x" * 0x8000 + b"\x21x"
    assert read_all(written(b"y" * 70000)) == [b"y" * 70000]


def test_lists_maps_types_and_references():
    data = (
        b"Vt\x00\x04[int\x6e\x02\x91\x92z"  # typed list, 'n' length
        b"v\x90\x91\x93"  # fixed list of type ref #0
        b"V\x6c\x00\x00\x00\x01\x05helloz"  # untyped list, 'l' length
        b"V\x94\x95z"  # untyped list without length
        b"Mt\x00\x11java.util.TreeMap\x01a\x91z"  # typed map
        b"M\x75\x91\x01b\x92z"  # map with type ref #1
        b"MT\x91\x01c\x93z"  # 'T' int is a type ref too after 'M'
        b"\x4a\x00\x4b\x00\x04R\x00\x00\x00\x01"  # back-references to values #0, #4, #1
    )
    values = read_all(data)
    assert values[:7] == [[1, 2], [3], ["hello"], [4, 5], {"a": 1}, {"b": 2}, {"c": 3}]
    assert [getattr(v, "type_name", None) for v in values[:7]] == [
        "[int", "[int", None, None, "java.util.TreeMap", "java.util.TreeMap", "java.util.TreeMap",
    ]  # fmt: skip
    assert values[7] is values[0] and values[8] is values[4] and values[9] is values[1]


def test_objects_class_definitions_and_cycles():
    data = (
        b"O\x93Foo\x92\x01a\x01b"  # class def #0 Foo(a, b)
        b"o\x90\x91N"  # Foo{a: 1, b: null}
        b"O\x93Bar\x91\x04self"  # class def #1 Bar(self)
        b"o\x91\x4a\x01"  # Bar{self: <itself>} (ref #1: Foo is #0)
        b"o\x90\x05helloo\x90\x90\x4a\x00"  # Foo{a: 'hello', b: Foo{a: 0, b: <the first Foo>}}
    )
    foo, bar, outer = read_all(data)
    assert foo == HessianObject("Foo", {"a": 1, "b": None})
    assert bar.fields["self"] is bar
    assert outer.fields["a"] == "hello" and outer.fields["b"].fields["b"] is foo


def test_writer_class_definition_once_per_class_and_back_references():
    shared = {"k": "v"}
    foo1 = HessianObject("Foo", {"a": 1, "m": shared})
    foo2 = HessianObject("Foo", {"a": 2, "m": shared})
    data = written([foo1, foo2, foo1])
    assert data == (
        b"V\x6e\x03"
        b"O\x93Foo\x92\x01a\x01m" b"o\x90\x91M\x01k\x01vz"
        b"o\x90\x92\x4a\x02"  # same map again: ref #2 (list #0, foo1 #1, map #2)
        b"\x4a\x01z"  # foo1 again
    )  # fmt: skip
    (items,) = read_all(data)
    assert items == [foo1, foo2, foo1] and items[2] is items[0] and items[1].fields["m"] is items[0].fields["m"]
    # The same class name with other fields (only from a non-Java writer): a second definition, so that
    # every object reads back with its own fields.
    other = HessianObject("Foo", {"other": 1})
    data = written(foo1, other, other)
    assert data.endswith(b"O\x93Foo\x91\x05other" b"o\x91\x91" b"\x4a\x02")
    assert read_all(data) == [foo1, other, other]


def test_writer_types_like_java():
    """Java's writeListBegin: a second list of a known type is 'v' ref length (no 'z'); writeType uses
    0x75 ref for a known type (maps)."""
    writer = SofaHessianWriter()
    writer.write_list(["a"], "[string")
    writer.write_list(["b", "c"], "[string")
    writer.write_map({"k": "v"}, "java.util.TreeMap")
    writer.write_map({}, "java.util.TreeMap")
    writer.write_list(list(range(300)), "[int")
    data = writer.getvalue()
    assert data.startswith(
        b"Vt\x00\x07[string\x6e\x01\x01az" b"v\x90\x92\x01b\x01c"
        b"Mt\x00\x11java.util.TreeMap\x01k\x01vz" b"M\x75\x91z" b"Vt\x00\x04[int\x6c\x00\x00\x01\x2c"
    )  # fmt: skip
    values = read_all(data)
    assert values == [["a"], ["b", "c"], {"k": "v"}, {}, list(range(300))]
    assert written(values[0], values[1], values[2], values[3], values[4]) == data


def test_writer_strings_chunk_like_java_and_node():
    # lengths are UTF-16 units; chunks of 32768 units, 32767 when a surrogate pair would be split.
    assert written("a" * 31)[:1] == b"\x1f"
    assert written("a" * 32)[:3] == b"S\x00\x20"
    assert written("a" * 0x8000)[:3] == b"S\x80\x00"
    assert written("a" * 0x8001) == b"s\x80\x00" + b"a" * 0x8000 + b"\x01a"
    boundary = "a" * 32767 + "\U0001f600" + "b" * 10
    assert written(boundary) == b"s\x7f\xff" + b"a" * 32767 + b"\x0c\xed\xa0\xbd\xed\xb8\x80" + b"b" * 10
    # node: 0968c3a96c6c6fe4b8ade69687eda0bdedb880
    assert written("h\u00e9llo\u4e2d\u6587\U0001f600").hex() == "0968c3a96c6c6fe4b8ade69687eda0bdedb880"
    many = "\u00e9" * 65537
    data = written(many)
    assert data[:3] == b"s\x80\x00" and data[3 + 0x10000 : 3 + 0x10000 + 3] == b"s\x80\x00"
    assert data[6 + 0x20000 :] == b"\x01\xc3\xa9"
    assert read_all(data) == [many]


def test_writer_rejects_what_hessian_cannot_carry():
    with pytest.raises(ValueError):
        SofaHessianWriter().write_int(2**31)
    with pytest.raises(ValueError):
        SofaHessianWriter().write_long(2**63)
    with pytest.raises(ValueError):
        written(2**64)
    with pytest.raises(TypeError):
        written({1, 2})
    with pytest.raises(ValueError, match="True"):
        written({True: "x"})  # 'M' 'T' would read as a type reference


# --- limits and malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"V" * 70, "nested deeper"),
        (b"M" * 70, "nested deeper"),
        (b"O\x91A\x91\x01a" + b"o\x90" * 70, "nested deeper"),
        (b"v\x90\x90", "type reference"),
        (b"Vt\x00\x01xz" + b"v\x90\x49\x7f\xff\xff\xff", "list length"),
        (b"O\x91A\x49\x7f\xff\xff\xff", "field count"),
        (b"O\x49\xff\xff\xff\xff", "negative"),
        (b"o\x90", "class definition"),
        (b"\x4a\x00", "back-reference"),
        (b"R\xff\xff\xff\xff", "back-reference"),
        (b"V\x91", "truncated"),
        (b"M\x01a", "truncated"),
        (b"M\x01az", "unknown"),  # a key without its value
        (b"MV\x91zNz", "not supported"),  # a list as a map key
        (b"O\x91A\x91N", "string"),
        (b"O", "truncated"),
        (b"x\x00\x00", "unsupported"),
        (b"\x40", "unknown"),
        (b"Z", "unknown"),
        (b"C", "unknown"),  # final-grammar class definitions are not this dialect
        (b"I\x00\x00", "truncated"),
        (b"L\x00", "truncated"),
        (b"D", "truncated"),
        (b"\x6b\x00", "truncated"),
        (b"d\x00", "truncated"),
        (b"\xd0\x00", "truncated"),
        (b"", "truncated"),
    ],
)
def test_malformed_input_raises_hessian_error(data, message):
    reader = SofaHessianReader(data)
    with pytest.raises(HessianError, match=message) as info:
        for _ in range(10):
            reader.read_value()
    assert type(info.value) is HessianError


def test_nesting_up_to_the_limit_is_fine():
    value: list = []
    for _ in range(63):
        value = [value]
    assert read_all(written(value)) == [value]
    with pytest.raises(HessianError, match="nested deeper"):
        read_all(written([value]))


def read_exhaustively(data: bytes) -> None:
    """Read values until the end: only HessianError may escape."""
    try:
        read_all(data)
    except HessianError as exc:
        assert type(exc) is HessianError


@pytest.mark.parametrize("name", sorted(BODIES))
def test_truncations_and_byte_mutations_of_vectors(name):
    data = body(name)
    for cut in range(len(data)):
        read_exhaustively(data[:cut])
    for at in range(len(data)):
        for replacement in (0x00, 0x4A, 0x4F, 0x56, 0x6F, 0x76, 0x7A, 0x90, 0xBF, 0xED, 0xFF):
            read_exhaustively(data[:at] + bytes([replacement]) + data[at + 1 :])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    read_exhaustively(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(b"OoVvMzNTFRJKtu\x90\x91\x92\x01\x02Ssn\x4a\x4b")), max_size=60))
def test_random_structural_bytes(codes):
    read_exhaustively(bytes(codes))


# --- round trips -----------------------------------------------------------------------------------------

INT_BOUNDARIES = [
    -(2**63), -(2**31) - 1, -(2**31), -262145, -262144, -2049, -2048, -17, -16, -9, -8, -1, 0, 1, 15, 16,
    47, 48, 2047, 2048, 262143, 262144, 2**31 - 1, 2**31, 2**63 - 1,
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(INT_BOUNDARIES),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.floats(width=32, allow_nan=False),
    st.text(),  # all code points but lone surrogates, non-BMP included
    st.text(alphabet=st.characters(min_codepoint=0x10000), max_size=40),
    st.binary(max_size=40),
    st.builds(HessianDate, st.integers(-(2**63), 2**63 - 1)),
)


def objects(children: st.SearchStrategy) -> st.SearchStrategy:
    """Class names carry their field count so that one class name always has the same fields."""

    def build(values: list[object]) -> HessianObject:
        return HessianObject(f"com.example.C{len(values)}", {f"f{i}": v for i, v in enumerate(values)})

    return st.lists(children, max_size=4).map(build)


values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(st.text(max_size=8), max_size=5).map(lambda items: TypedList(items, "[java.lang.String")),
        st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
        objects(children),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=4))
def test_round_trip_writer_to_reader(stream):
    data = written(*stream)
    read = read_all(data)
    expected = [normalise(v) for v in stream]
    assert same(read, expected), (read, expected)
    assert written(*read) == data  # and back: the reader keeps all the writer needs


def normalise(value: object) -> object:
    """What the reader returns for a written value: -0.0 is written as 0.0 (as Java does), tuples become
    lists, binary is bytes."""
    if isinstance(value, float) and value == 0.0:
        return 0.0
    if isinstance(value, TypedList):
        return TypedList([normalise(v) for v in value], value.type_name)
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, HessianObject):
        return HessianObject(value.class_name, {k: normalise(v) for k, v in value.fields.items()})
    return value


@settings(max_examples=15, deadline=None)
@given(
    st.integers(32700, 70000),
    st.text(max_size=5),
    st.sampled_from(["a", "\u00e9", "\u4e2d", "\U0001f600"]),
    st.integers(0, 3),
)
def test_round_trip_long_strings(count, tail, char, shift):
    units_per_char = 2 if ord(char) > 0xFFFF else 1
    text = "x" * shift + char * (count // units_per_char) + tail
    data = written(text, ["after"])
    assert read_all(data) == [text, ["after"]]
    if len(text.encode("utf-16-le")) // 2 > 0x8000:
        assert data[0] == ord("s")


def test_round_trip_non_bmp_at_every_chunk_boundary_position():
    for pad in range(32764, 32771):
        text = "a" * pad + "\U0001f600\U0001f601" + "b" * 40000
        data = written(text)
        assert read_all(data) == [text]


@settings(max_examples=200, deadline=None)
@given(values, st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 10**6))
def test_mutated_and_truncated_streams(value, at, replacement, cut):
    data = bytearray(written(value, value))  # the second copy is all back-references
    if data:
        data[at % len(data)] = replacement
    read_exhaustively(bytes(data))
    read_exhaustively(bytes(data[: cut % (len(data) + 1)]))


# --- faithful mode: what the transcoder needs ------------------------------------------------------------


def read_faithfully(data: bytes) -> list[object]:
    reader = SofaHessianReader(data, faithful=True)
    values = []
    while not reader.at_end:
        values.append(reader.read_value())
    return values


def test_faithful_reader_tells_longs_from_ints():
    data = bytes.fromhex("95" "e5" "77fffbffff" "4c0000000080000000" "49fffbffff")
    assert [type(v) for v in read_all(data)] == [int] * 5  # plain: a Java long reads as an int
    values = read_faithfully(data)
    assert values == [5, 5, -262145, 2**31, -262145]
    assert [type(v) for v in values] == [int, HessianLong, HessianLong, HessianLong, int]
    assert repr(values[1]) == "HessianLong(5)" and hash(values[1]) == hash(5)
    assert written(*values) == data  # a HessianLong is written as a long even when it fits 32 bits
    assert written(HessianLong(262144)).hex() == "7700040000"


def test_faithful_reader_keeps_lone_surrogates():
    data = b"\x03a\xed\xa0\xbdb"
    assert read_all(data) == ["a\ufffdb"]
    assert read_faithfully(data) == ["a\ud83db"]
    assert written("a\ud83db") == data  # and the writer gives the same bytes back


def test_faithful_reader_refuses_what_a_dict_cannot_hold():
    for entries in ("914ee14e", "914e684e", "914e544e"):  # int 1 and long 1 / double 1.0 / true
        data = bytes.fromhex(f"4d{entries}7a")
        assert len(read_all(data)[0]) == 1  # plain: the last one wins
        with pytest.raises(HessianError, match="equals an earlier key"):
            read_faithfully(data)
    repeated = b"O\x91A\x92\x01a\x01ao\x90\x91\x92"
    assert read_all(repeated)[0].fields == {"a": 2}
    with pytest.raises(HessianError, match="repeats a field name"):
        read_faithfully(repeated)


def test_faithful_writer_keeps_negative_zero_and_nan_payloads():
    odd_nan = struct.unpack(">d", bytes.fromhex("7ff0000000000001"))[0]
    writer = SofaHessianWriter(faithful=True)
    for value in (-0.0, odd_nan, 0.0, math.nan, 0.5):
        writer.write_double(value)
    assert writer.getvalue().hex() == "448000000000000000" "447ff0000000000001" "67" "447ff8000000000000" "6b3f000000"


@pytest.mark.parametrize("name", sorted(BODIES))
def test_faithful_decode_encode_is_byte_exact(name):
    writer = SofaHessianWriter(faithful=True)
    for value in read_faithfully(body(name)):
        writer.write_value(value)
    assert writer.getvalue() == body(name)


def test_write_raw_and_copy():
    writer = SofaHessianWriter()
    writer.write_value(request("echo", ["java.lang.String"]))
    head = writer.getvalue()
    twin = writer.copy()
    writer.write_raw(b"\x07hello-0")  # a scalar copied from another stream
    assert writer.getvalue() == body("bolt_v1_req_echo")
    # the copy continues from the head's state: the type "[java.lang.String" is type ref #0 there
    twin.write_value(TypedList(["x"], "[java.lang.String"))
    assert twin.getvalue() == head + b"v\x90\x91\x01x"
    assert writer.getvalue() == body("bolt_v1_req_echo")  # and the original is untouched


@settings(max_examples=300, deadline=None)
@given(st.lists(graphs(), min_size=1, max_size=3))
def test_round_trip_faithful_graphs(stream):
    """Faithful writer -> faithful reader: every value exact (int vs long, doubles to the bit, lone
    surrogates), type and class names, and the sharing of lists, maps and objects, cycles included."""
    writer = SofaHessianWriter(faithful=True)
    for value in stream:
        writer.write_value(value)
    data = writer.getvalue()
    read = read_faithfully(data)
    seen_read: dict[int, int] = {}
    seen_written: dict[int, int] = {}
    assert [shape(v, seen_read) for v in read] == [shape(v, seen_written) for v in stream]
    again = SofaHessianWriter(faithful=True)
    for value in read:
        again.write_value(value)
    assert again.getvalue() == data


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 70000), st.sampled_from([b"", b"\x00\xff", bytes(range(256))]))
def test_round_trip_binary_of_all_sizes(size, pattern):
    blob = (pattern * (size // max(1, len(pattern)) + 1))[:size] if pattern else bytes(size)
    data = written([blob, blob[: size // 2]], "after")
    assert read_all(data) == [[blob, blob[: size // 2]], "after"]
    if size > 0x8000:
        assert data[1:4] == b"n\x02b" and data[4:6] == b"\x80\x00"  # 'b' chunks of 32768 bytes
