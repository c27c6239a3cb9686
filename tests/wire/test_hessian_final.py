"""Final-grammar Hessian 2.0 (Dubbo hessian-lite, "hessian4"): the spec's examples, every encoding form,
the writer against hessian-lite's Hessian2Output byte for byte, faithful round trips with shared
references and cycles, and fuzzing (only HessianError may escape the reader).

Also home of the value-graph helpers (`shape`, `graphs`) that test_hessian_transcode.py imports.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.wire.hessian2 import (
    FinalHessianReader,
    FinalHessianWriter,
    HessianDate,
    HessianError,
    HessianLong,
    HessianObject,
    HessianValueError,
    TypedList,
    TypedMap,
)


def read_all(data: bytes, *, faithful: bool = False) -> list[object]:
    reader = FinalHessianReader(data, faithful=faithful)
    values = []
    while not reader.at_end:
        values.append(reader.read_value())
    return values


def written(*values: object, faithful: bool = False) -> bytes:
    writer = FinalHessianWriter(faithful=faithful)
    for value in values:
        writer.write_value(value)
    return writer.getvalue()


def h(text: str) -> bytes:
    """Hex with spaces and 'quoted' ASCII runs: h("43 'abc' 90") == b"Cabc\\x90"."""
    out = bytearray()
    for i, part in enumerate(text.split("'")):
        out += part.encode() if i % 2 else bytes.fromhex(part)
    return bytes(out)


# --- value graphs: comparison with types, exact doubles and sharing -----------------------------------------


def shape(value: object, seen: dict[int, int] | None = None) -> object:
    """A comparable description of a value graph: Python types (int vs HessianLong, list vs TypedList),
    type and class names, field order, the exact bits of doubles, and sharing: a list, map or object met a
    second time is ("ref", n), n its number in preorder (the order in which Hessian numbers them)."""
    if seen is None:
        seen = {}
    if isinstance(value, list | dict | HessianObject):
        if id(value) in seen:
            return ("ref", seen[id(value)])
        seen[id(value)] = len(seen)
        if isinstance(value, list):
            return ("list", getattr(value, "type_name", "") or None, tuple(shape(v, seen) for v in value))
        if isinstance(value, dict):
            items = tuple((shape(k, seen), shape(v, seen)) for k, v in value.items())
            return ("map", getattr(value, "type_name", "") or None, items)
        return ("object", value.class_name, tuple((k, shape(v, seen)) for k, v in value.fields.items()))
    if isinstance(value, float):
        return ("double", struct.pack(">d", value))
    return (type(value).__name__, value)


INT_BOUNDARIES = [
    -(2**31), -262145, -262144, -2049, -2048, -17, -16, -9, -8, -1, 0, 1, 15, 16, 47, 48, 2047, 2048,
    262143, 262144, 2**31 - 1,
]  # fmt: skip
LONG_BOUNDARIES = [HessianLong(v) for v in [-(2**63), -(2**31) - 1, 2**31, 2**63 - 1, *INT_BOUNDARIES]]

# Everything a Java value can be, exactly: lone surrogates (legal in a Java String), -0.0, NaN payloads.
FAITHFUL_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(INT_BOUNDARIES),
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from(LONG_BOUNDARIES),
    st.integers(-(2**63), 2**63 - 1).map(HessianLong),
    st.floats(),  # NaN, -0.0, infinities included
    st.floats(width=32),
    st.sampled_from([0.5, 12.25, 0.001, 2147483.647, -0.0, math.nan, 1e300]),
    st.text(max_size=40),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=40),  # surrogates included
    st.text(alphabet=st.characters(min_codepoint=0x10000), max_size=20),
    st.binary(max_size=40),
    st.builds(HessianDate, st.integers(-(2**63), 2**63 - 1)),
    st.builds(HessianDate, st.integers(-(2**31), 2**31 - 1).map(lambda m: m * 60000)),
)
TYPE_NAMES = st.sampled_from(
    ["[int", "[java.lang.String", "[string", "java.util.LinkedList", "java.util.TreeMap", "類型", "t" * 40]
)
CLASS_NAMES = st.sampled_from(["com.example.Foo", "com.example.Bar", "Klaß", "com.example." + "X" * 40])
KEYS = st.one_of(st.text(max_size=6), st.integers(-5, 300))


@st.composite
def graphs(draw: st.DrawFn, scalars: st.SearchStrategy = FAITHFUL_SCALARS, max_containers: int = 10) -> object:
    """A value with lists, typed lists, maps, typed maps and objects, where a container may appear again
    anywhere after it was started: shared references, and cycles when it is one of its own ancestors."""
    pool: list[object] = []

    def node(depth: int) -> object:
        kinds = ["leaf", "leaf", "leaf", "shared", "list", "typed list", "map", "typed map", "object"]
        kind = draw(st.sampled_from(kinds)) if depth < 4 and len(pool) < max_containers else "leaf"
        if kind == "shared" and not pool:
            kind = "leaf"
        if kind == "leaf":
            return draw(scalars)
        if kind == "shared":
            return draw(st.sampled_from(pool))
        count = draw(st.integers(0, 9))
        if kind in ("list", "typed list"):
            items: list[object] = TypedList((), draw(TYPE_NAMES)) if kind == "typed list" else []
            pool.append(items)
            items.extend(node(depth + 1) for _ in range(count))
            return items
        if kind in ("map", "typed map"):
            mapping: dict[object, object] = TypedMap((), draw(TYPE_NAMES)) if kind == "typed map" else {}
            pool.append(mapping)
            for _ in range(count):
                mapping[draw(KEYS)] = node(depth + 1)
            return mapping
        obj = HessianObject(draw(CLASS_NAMES), {})
        pool.append(obj)
        for _ in range(count % 5):
            obj.fields[draw(st.text(min_size=1, max_size=5))] = node(depth + 1)
        return obj

    return node(0)


# --- the spec's examples (hessian.caucho.com/doc/hessian-serialization.html, section 4) ------------------------

SPEC_INTS = {
    "90": 0, "80": -16, "bf": 47, "c800": 0, "c000": -2048, "c700": -256, "cfff": 2047, "d40000": 0,
    "d00000": -262144, "d7ffff": 262143, "4900000000": 0, "490000012c": 300,
}  # fmt: skip
SPEC_LONGS = {
    "e0": 0, "d8": -8, "ef": 15, "f800": 0, "f000": -2048, "f700": -256, "ffff": 2047, "3c0000": 0,
    "380000": -262144, "3fffff": 262143, "5900000000": 0, "590000012c": 300, "4c000000000000012c": 300,
}  # fmt: skip
SPEC_DOUBLES = {
    "5b": 0.0, "5c": 1.0, "5d00": 0.0, "5d80": -128.0, "5d7f": 127.0, "5e0000": 0.0, "5e8000": -32768.0,
    "5e7fff": 32767.0, "5f00000000": 0.0, "444028800000000000": 12.25,
}  # fmt: skip


@pytest.mark.parametrize(("hexed", "value"), sorted(SPEC_INTS.items()))
def test_spec_ints(hexed, value):
    (read,) = read_all(bytes.fromhex(hexed), faithful=True)
    assert type(read) is int and read == value


@pytest.mark.parametrize(("hexed", "value"), sorted(SPEC_LONGS.items()))
def test_spec_longs(hexed, value):
    (read,) = read_all(bytes.fromhex(hexed), faithful=True)
    assert type(read) is HessianLong and read == value
    (plain,) = read_all(bytes.fromhex(hexed))
    assert type(plain) is int  # a plain reader does not tell longs from ints


@pytest.mark.parametrize(("hexed", "value"), sorted(SPEC_DOUBLES.items()))
def test_spec_doubles(hexed, value):
    (read,) = read_all(bytes.fromhex(hexed))
    assert type(read) is float and read == value


def test_spec_scalars():
    assert read_all(b"NTF") == [None, True, False]
    assert read_all(h("00 05'hello' 01c383 53 0005'hello'")) == ["", "hello", "\u00c3", "hello"]
    assert read_all(h("20 23010203")) == [b"", b"\x01\x02\x03"]
    # 09:51:31 May 8, 1998 UTC, and 09:51:00 in the compact (minutes) form
    assert read_all(h("4a 000000d04b9284b8 4b 00e3838f")) == [HessianDate(894621091000), HessianDate(894621060000)]
    assert HessianDate(894621091000).to_datetime().isoformat() == "1998-05-08T09:51:31+00:00"


def test_spec_lists():
    data = h(
        "56 04'[int' 92 90 91"  # 'V' fixed-length typed list: type "[int" (type #0), length 2
        "72 90 90 91"  # typed list of 2 in the compact form, type ref #0
        "73 90 92 93 94"  # typed list of 3, type ref #0
        "57 90 91 5a"  # 'W' variable-length untyped list
        "7a 90 91"  # untyped list of 2 (0x78 + 2)
        "58 93 01'a' 01'b' 01'c'"  # 'X' untyped list, int length 3
        "55 90 95 96 5a"  # 'U' variable-length typed list, type ref #0
    )
    values = read_all(data)
    assert values == [[0, 1], [0, 1], [2, 3, 4], [0, 1], [0, 1], ["a", "b", "c"], [5, 6]]
    assert [getattr(v, "type_name", None) for v in values] == ["[int", "[int", "[int", None, None, None, "[int"]


def test_spec_maps():
    untyped = h("48 91 03'fee' a0 03'fie' c900 03'foe' 5a")
    assert read_all(untyped) == [{1: "fee", 16: "fie", 256: "foe"}]
    assert written({1: "fee", 16: "fie", 256: "foe"}) == untyped  # Java's HashMap: 'H'
    typed = h(
        "4d 13'com.caucho.test.Car' 05'color' 0a'aquamarine' 05'model' 06'Beetle' 07'mileage' 4900010000 5a"
    )
    (car,) = read_all(typed)
    assert isinstance(car, TypedMap) and car.type_name == "com.caucho.test.Car"
    assert car == {"color": "aquamarine", "model": "Beetle", "mileage": 65536}
    # Java writes 65536 in the shortest form (3 bytes), not 'I' as the example does.
    assert written(car) == typed.replace(h("4900010000"), h("d50000"))


def test_spec_objects_and_refs():
    cars = h(
        "43 0b'example.Car' 92 05'color' 05'model'"  # class definition #0
        "4f 90 03'red' 08'corvette'"  # object of definition #0, long form
        "60 05'green' 05'civic'"  # object of definition #0, short form
    )
    red, green = read_all(cars)
    assert red == HessianObject("example.Car", {"color": "red", "model": "corvette"})
    assert green == HessianObject("example.Car", {"color": "green", "model": "civic"})
    # Java writes the short form for the first instance too.
    assert written(red, green) == cars.replace(b"\x4f\x90", b"\x60")
    linked = h("43 0a'LinkedList' 92 04'head' 04'tail' 60 91 51 90")  # list.tail = list
    (node,) = read_all(linked)
    assert node.fields["head"] == 1 and node.fields["tail"] is node
    assert written(node) == linked


# --- every form the reader accepts -------------------------------------------------------------------------


def test_string_forms():
    assert read_all(h("30 20") + b"a" * 32) == ["a" * 32]
    assert read_all(h("33 ff") + b"a" * 1023) == ["a" * 1023]
    assert read_all(h("52 0002'ab' 01'c'")) == ["abc"]  # 'R' non-final chunk, short final chunk
    assert read_all(h("52 0001'a' 52 0001'b' 53 0001'c'")) == ["abc"]
    assert read_all(h("52 0001'a' 30 01'b'")) == ["ab"]  # medium final chunk
    assert read_all(h("02 eda0bd edb880")) == ["\U0001f600"]  # CESU-8, as Java writes it
    assert read_all(h("02 f09f9880")) == ["\U0001f600"]  # 4-byte UTF-8 (hessian-lite refuses it; we read it)
    assert read_all(h("52 0001 eda0bd 01 edb880")) == ["\U0001f600"]  # pair split by a chunk boundary
    assert read_all(h("03 61 eda0bd 62")) == ["a\ufffdb"]  # lone surrogate: U+FFFD when not faithful
    assert read_all(h("03 61 eda0bd 62"), faithful=True) == ["a\ud83db"]  # kept when faithful


def test_binary_forms():
    assert read_all(h("34 10") + b"x" * 16) == [b"x" * 16]
    assert read_all(h("37 ff") + b"x" * 1023) == [b"x" * 1023]
    assert read_all(h("42 0003 616263")) == [b"abc"]
    assert read_all(h("41 0002 6162 21 63")) == [b"abc"]
    assert read_all(h("41 0001 61 41 0001 62 42 0001 63")) == [b"abc"]
    assert read_all(h("41 0001 61 34 02 6263")) == [b"abc"]


def test_type_references_are_shared_by_lists_and_maps():
    data = h("4d 04'[int' 5a" "71 90 91" "4d 90 5a")  # map type #0, list of type ref #0, map of type ref #0
    values = read_all(data)
    assert [v.type_name for v in values] == ["[int", "[int", "[int"]  # type: ignore[attr-defined]


def test_class_definitions_before_any_value_and_many_of_them():
    data = bytearray()
    for i in range(20):
        data += h("43") + bytes([len(f"C{i:02d}")]) + f"C{i:02d}".encode() + h("91 01'v'")
    data += h("6f 90") + h("4f a0 91") + h("4f a3 92")  # #15 short form, #16 and #19 long form
    assert read_all(bytes(data)) == [
        HessianObject("C15", {"v": 0}), HessianObject("C16", {"v": 1}), HessianObject("C19", {"v": 2})
    ]  # fmt: skip


# --- the writer: hessian-lite's Hessian2Output byte for byte --------------------------------------------------

JAVA_INTS = {"80": -16, "bf": 47, "c7ef": -17, "c830": 48, "c000": -2048, "cfff": 2047, "d3f7ff": -2049,
             "d40800": 2048, "d00000": -262144, "d7ffff": 262143, "49fffbffff": -262145, "4900040000": 262144,
             "4980000000": -(2**31), "497fffffff": 2**31 - 1}  # fmt: skip
JAVA_LONGS = {"d8": -8, "ef": 15, "f7f7": -9, "f810": 16, "f000": -2048, "ffff": 2047, "3bf7ff": -2049,
              "3c0800": 2048, "380000": -262144, "3fffff": 262143, "59fffbffff": -262145, "5900040000": 262144,
              "5980000000": -(2**31), "597fffffff": 2**31 - 1, "4cffffffff7fffffff": -(2**31) - 1,
              "4c0000000080000000": 2**31, "4c7fffffffffffffff": 2**63 - 1, "4c8000000000000000": -(2**63)}  # fmt: skip
# writeDouble: integral values in byte/short range compact, then "mills" (value * 1000 as an int32 when
# 0.001 * mills == value), else 'D'. Java's (int) casts saturate: 2147483.647 is mills 0x7fffffff.
JAVA_DOUBLES = {
    "5b": 0.0, "5c": 1.0, "5dff": -1.0, "5d7f": 127.0, "5d80": -128.0, "5e0080": 128.0, "5e7fff": 32767.0,
    "5e8000": -32768.0, "5f01f40000": 32768.0, "5f000001f4": 0.5, "5ffffffe0c": -0.5, "5f00002fda": 12.25,
    "5f00000064": 0.1, "5f00000001": 0.001, "5f7fffffff": 2147483.647, "443f1a36e2eb1c432d": 0.0001,
    "44400921f9f01b866e": 3.14159, "444202a05f20000000": 1e10, "447ff0000000000000": math.inf,
    "44fff0000000000000": -math.inf,
}  # fmt: skip


@pytest.mark.parametrize(("hexed", "value"), sorted(JAVA_INTS.items()))
def test_writer_ints(hexed, value):
    assert written(value).hex() == hexed
    assert read_all(bytes.fromhex(hexed)) == [value]


@pytest.mark.parametrize(("hexed", "value"), sorted(JAVA_LONGS.items()))
def test_writer_longs(hexed, value):
    writer = FinalHessianWriter()
    writer.write_long(value)
    assert writer.getvalue().hex() == hexed
    assert written(HessianLong(value)).hex() == hexed
    assert read_all(bytes.fromhex(hexed), faithful=True) == [HessianLong(value)]


@pytest.mark.parametrize(("hexed", "value"), sorted(JAVA_DOUBLES.items()))
def test_writer_doubles(hexed, value):
    assert written(value).hex() == hexed
    (read,) = read_all(bytes.fromhex(hexed))
    assert read == value


def test_writer_doubles_edge_cases():
    assert written(-0.0).hex() == "5b"  # (int) -0.0 == -0.0 in Java
    assert written(math.nan).hex() == "447ff8000000000000"  # Double.doubleToLongBits: the canonical NaN
    odd_nan = struct.unpack(">d", bytes.fromhex("7ff0000000000001"))[0]
    assert written(odd_nan).hex() == "447ff8000000000000"
    # faithful: -0.0 and NaN payloads survive ('D' + their bits)
    assert written(-0.0, odd_nan, faithful=True).hex() == "448000000000000000" "447ff0000000000001"
    negative_zero, nan = read_all(written(-0.0, odd_nan, faithful=True))
    assert math.copysign(1, negative_zero) == -1 and struct.pack(">d", nan).hex() == "7ff0000000000001"


def test_writer_dates():
    assert written(HessianDate(894621060000)).hex() == "4b00e3838f"  # a whole minute: 'K' minutes
    assert written(HessianDate(894621091000)).hex() == "4a000000d04b9284b8"
    assert written(HessianDate(-60000)).hex() == "4bffffffff"
    assert written(HessianDate((2**31) * 60000)).hex() == "4a" + struct.pack(">q", 2**31 * 60000).hex()
    with pytest.raises(HessianValueError):
        written(HessianDate(2**63))


def test_writer_strings():
    assert written("") == b"\x00"
    assert written("a" * 31) == b"\x1f" + b"a" * 31
    assert written("a" * 32) == h("30 20") + b"a" * 32
    assert written("a" * 1023) == h("33 ff") + b"a" * 1023
    assert written("a" * 1024) == h("53 0400") + b"a" * 1024
    assert written("a" * 0x8000) == h("53 8000") + b"a" * 0x8000
    assert written("a" * 0x8001) == h("52 8000") + b"a" * 0x8000 + b"\x01a"  # 'R' chunks of 32768 units
    boundary = "a" * 32767 + "\U0001f600" + "b" * 10  # a chunk may not end in a high surrogate
    assert written(boundary) == h("52 7fff") + b"a" * 32767 + h("0c eda0bd edb880") + b"b" * 10
    assert written("h\u00e9llo\u4e2d\u6587\U0001f600").hex() == "0968c3a96c6c6fe4b8ade69687eda0bdedb880"
    assert written("\ud800x", faithful=True) == h("02 eda080 78")  # a lone surrogate, as Java writes it


def test_writer_binary_chunks_where_javas_buffer_cuts_them():
    """hessian-lite's writeBytes fills its 8 KiB buffer with an 'A' chunk while the rest does not fit;
    the cut depends on what the stream holds before the binary."""
    assert written(b"") == b"\x20"
    assert written(b"x" * 15) == b"\x2f" + b"x" * 15
    assert written(b"x" * 16) == h("34 10") + b"x" * 16
    assert written(b"x" * 1023) == h("37 ff") + b"x" * 1023
    assert written(b"x" * 1024) == h("42 0400") + b"x" * 1024
    assert written(b"x" * 8189) == h("42 1ffd") + b"x" * 8189  # exactly fills the buffer (3-byte header)
    assert written(b"x" * 8190) == h("41 1ffd") + b"x" * 8189 + b"\x21x"
    assert written(b"y" * 20000) == (
        h("41 1ffd") + b"y" * 8189 + h("41 1ffd") + b"y" * 8189 + h("42 0e26") + b"y" * 3622
    )
    # after 8154 bytes (list header, 'S' header, 8150 chars), 35 bytes fit: 'A' 35, then 65 in a new buffer
    assert written(["a" * 8150, b"z" * 100]) == (
        h("7a 53 1fd6") + b"a" * 8150 + h("41 0023") + b"z" * 35 + h("34 41") + b"z" * 65
    )
    # after 8174 bytes fewer than 16 fit: Java flushes, writes all 100 bytes as a non-final chunk, and an
    # empty final chunk
    assert written(["a" * 8170, b"z" * 100]) == h("7a 53 1fea") + b"a" * 8170 + h("41 0064") + b"z" * 100 + b"\x20"
    # printString flushes before the unit at buffer offset 8176: 8200 chars leave 28 bytes in the buffer
    assert written(["a" * 8200, b"z" * 8170]) == (
        h("7a 53 2008") + b"a" * 8200 + h("41 1fe1") + b"z" * 8161 + h("29") + b"z" * 9
    )
    # the same with 3-byte characters: the flush comes before the unit that would start at 8176
    text = "\u4e2d" * 2725  # 8175 bytes after the 4 bytes of headers: the last unit starts at 8176
    data = written([text, b"z" * 8189])
    assert data == h("7a 53 0aa5") + text.encode() + h("41 1ffa") + b"z" * 8186 + h("23") + b"z" * 3


def test_copy_continues_with_the_same_state_and_buffer_level():
    writer = FinalHessianWriter()
    writer.write_value(["a" * 8170, HessianObject("Foo", {"a": 1})])
    twin = writer.copy()
    for w in (writer, twin):
        w.write_value(b"z" * 100)
        w.write_value(HessianObject("Foo", {"a": 2}))
    assert twin.getvalue() == writer.getvalue()
    # the class definition flushed Java's buffer (writeObjectBegin: fewer than 32 bytes left): room again
    assert writer.getvalue().endswith(h("34 64") + b"z" * 100 + h("60 92"))


def test_writer_lists_maps_and_types():
    assert written([]) == b"\x78"
    assert written([1] * 7) == b"\x7f" + b"\x91" * 7
    assert written([1] * 8) == h("58 98") + b"\x91" * 8
    assert written(TypedList([0, 1], "[int"), TypedList([2, 3, 4], "[int")) == h("72 04'[int' 90 91 73 90 92 93 94")
    assert written(TypedList(range(8), "[int")) == h("56 04'[int' 98 90 91 92 93 94 95 96 97")
    assert written({}) == h("48 5a")
    assert written(TypedMap({"k": 1}, "java.util.TreeMap"), TypedMap({}, "java.util.TreeMap")) == h(
        "4d 11'java.util.TreeMap' 01'k' 91 5a 4d 90 5a"
    )
    assert written(TypedList([], "x" * 40)) == h("70 30 28") + b"x" * 40  # the type is a string (medium form)
    assert written(TypedList([], "")) == b"\x78"  # an empty type is no type
    assert written((1, 2)) == h("7a 91 92")


def test_writer_objects_references_and_cycles():
    shared = {"k": "v"}
    foo1 = HessianObject("Foo", {"a": 1, "m": shared})
    foo2 = HessianObject("Foo", {"a": 2, "m": shared})
    data = written([foo1, foo2, foo1])
    assert data == h(
        "7b"  # list of 3 (ref #0)
        "43 03'Foo' 92 01'a' 01'm' 60 91 48 01'k' 01'v' 5a"  # foo1 (#1), its map (#2)
        "60 92 51 92"  # foo2 (#3): the same map again
        "51 91"  # foo1 again
    )
    (items,) = read_all(data)
    assert items[2] is items[0] and items[1].fields["m"] is items[0].fields["m"]
    cyclic: list[object] = [1]
    cyclic.append(cyclic)
    assert written(cyclic) == h("7a 91 51 90")
    (read,) = read_all(written(cyclic))
    assert read[1] is read
    many = [HessianObject(f"C{i}", {}) for i in range(17)]
    assert written(many).endswith(h("43 03'C16' 90 4f a0"))  # definition #16: 'O' int
    other = HessianObject("Foo", {"other": 1})  # same class name, other fields: a second definition
    assert written(foo1, other).endswith(h("43 03'Foo' 91 05'other' 61 91"))


def test_writer_rejects_what_hessian_cannot_carry():
    with pytest.raises(HessianValueError):
        FinalHessianWriter().write_int(2**31)
    with pytest.raises(ValueError):
        written(HessianLong(2**63))
    with pytest.raises(TypeError):
        written({1, 2})


# --- limits and malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x79" * 70, "nested deeper"),  # untyped lists of 1
        (b"H" * 70, "nested deeper"),
        (h("43 01'A' 91 01'a'") + b"\x60" * 70, "nested deeper"),
        (h("72 91"), "type reference"),
        (h("58 497fffffff"), "list length"),
        (h("58 4980000000"), "list length"),
        (h("43 01'A' 497fffffff"), "field count"),
        (h("43 91"), "expected a string"),
        (h("43 01'A' 92 01'a' 01'a' 60 91 92"), None),  # a repeated field name: fine unless faithful
        (b"\x60", "class definition"),
        (h("4f 91"), "class definition"),
        (h("51 90"), "back-reference"),
        (h("51 4c"), "expected an int"),
        (h("57 91"), "truncated"),
        (h("48 01'a'"), "truncated"),
        (h("48 01'a' 5a"), "unknown"),  # a key without its value
        (h("48 78 91 5a"), "not supported"),  # a list as a map key
        (h("55"), "truncated"),
        (h("52 0001'a' 4e"), "string chunk"),
        (h("41 0001'a' 4e"), "binary chunk"),
        (h("31"), "truncated"),
        (h("34 00"), None),  # an empty binary in the medium form is fine
        (h("35"), "truncated"),
        (h("01 ff"), "UTF-8"),
        (h("01 f09f9880"), "straddles"),
        (b"\x40", "unknown"),
        (b"Z", "unknown"),
        (b"z", "list length"),  # sofa's end marker: an untyped list of 2 here
        (b"o", "class definition"),  # sofa's instance: an object of definition #15 here
        (b"d", "class definition"),  # sofa's date: an object of definition #4 here
        (b"C", "truncated"),
        (b"\x4a\x00", "truncated"),
        (b"\x4b\x00", "truncated"),
        (b"\x5f\x00", "truncated"),
        (b"", "truncated"),
    ],
)
def test_malformed_input_raises_hessian_error(data, message):
    reader = FinalHessianReader(data)
    if message is None:
        reader.read_value()
        return
    with pytest.raises(HessianError, match=message) as info:
        for _ in range(10):
            reader.read_value()
    assert type(info.value) is HessianError


def test_faithful_reader_refuses_what_python_values_cannot_hold():
    with pytest.raises(HessianError, match="repeats a field name"):
        read_all(h("43 01'A' 92 01'a' 01'a' 60 91 92"), faithful=True)
    (plain,) = read_all(h("43 01'A' 92 01'a' 01'a' 60 91 92"))
    assert plain.fields == {"a": 2}
    for keys in ("91 e1", "91 5c", "54 91", "e1 5c"):  # int 1, long 1, double 1.0, true: one dict key
        data = h(f"48 {keys[:2]} 4e {keys[3:]} 4e 5a")
        with pytest.raises(HessianError, match="equals an earlier key"):
            read_all(data, faithful=True)
        assert len(read_all(data)[0]) == 1  # plain: the last one wins


def test_nesting_up_to_the_limit_is_fine():
    value: list = []
    for _ in range(63):
        value = [value]
    assert read_all(written(value)) == [value]
    with pytest.raises(HessianError, match="nested deeper"):
        read_all(written([value]))


def read_exhaustively(data: bytes, faithful: bool = False) -> None:
    try:
        read_all(data, faithful=faithful)
    except HessianError as exc:
        assert type(exc) is HessianError


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes(data, faithful):
    read_exhaustively(data, faithful)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(b"CHMOQRSUVWXZ`aApqx\x90\x91\x92\x01\x02\x30\x34\x4a\x4b\x59\x5f")), max_size=60))
def test_random_structural_bytes(codes):
    read_exhaustively(bytes(codes))


@settings(max_examples=200, deadline=None)
@given(graphs(), st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 10**6))
def test_mutated_and_truncated_streams(value, at, replacement, cut):
    data = bytearray(written(value, value, faithful=True))  # the second copy is (mostly) back-references
    for faithful in (False, True):
        read_exhaustively(bytes(data[: cut % (len(data) + 1)]), faithful)
    data[at % len(data)] = replacement
    read_exhaustively(bytes(data), True)


# --- round trips -----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(graphs(), min_size=1, max_size=3))
def test_round_trip_faithful(stream):
    """Faithful writer -> faithful reader keeps every value exactly, with its sharing and cycles; writing
    what was read gives the same bytes again."""
    data = written(*stream, faithful=True)
    read = read_all(data, faithful=True)
    assert shape_each(read) == shape_each(stream)
    assert written(*read, faithful=True) == data


def shape_each(values: list[object]) -> list[object]:
    """Shapes of the top-level values of one stream: their sharing is numbered across the whole stream."""
    seen: dict[int, int] = {}
    return [shape(v, seen) for v in values]


@settings(max_examples=150, deadline=None)
@given(graphs(scalars=st.one_of(st.integers(-(2**31), 2**31 - 1), st.text(max_size=8), st.floats(allow_nan=False))))
def test_round_trip_plain(value):
    """The plain (not faithful) reader and writer agree too, up to Java's -0.0 -> 0.0."""
    data = written(value)
    (read,) = read_all(data)
    assert written(read) == data


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 70000), st.integers(0, 9000), st.sampled_from([b"", b"\x00\xff", bytes(range(256))]))
def test_round_trip_binary_of_all_sizes(size, prefix, pattern):
    blob = (pattern * (size // max(1, len(pattern)) + 1))[:size] if pattern else bytes(size)
    data = written(["p" * prefix, blob, blob[: size // 2]])
    assert read_all(data) == [["p" * prefix, blob, blob[: size // 2]]]


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
    data = written(text, ["after"], b"b" * 9000)
    assert read_all(data) == [text, ["after"], b"b" * 9000]
