"""The Hessian transcoder between the SOFA (3.x draft) and final (hessian-lite) grammars: hand-checked pairs
of encodings, the Bolt vectors both ways, values a dialect cannot carry, and hypothesis round trips
sofa -> final -> sofa that keep every value, type, class name, null and shared reference."""

from __future__ import annotations

import pathlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.wire import bolt
from interlink.wire.hessian2 import (
    FinalHessianReader,
    FinalHessianWriter,
    HessianError,
    HessianLong,
    HessianObject,
    HessianValueError,
    SofaHessianReader,
    SofaHessianWriter,
    TypedList,
    new_reader,
    new_writer,
    transcode,
)
from tests.wire.test_hessian_final import graphs, h, shape


VECTORS = pathlib.Path(__file__).resolve().parent.parent / "vectors" / "bolt"


def body(name: str) -> bytes:
    """The content (Hessian body) of a Bolt vector, found by the Bolt decoder."""
    return bolt.decode(bytes.fromhex("".join((VECTORS / f"{name}.hex").read_text().split()))).content


def read_stream(data: bytes, dialect: str) -> list[object]:
    reader = new_reader(dialect, data, faithful=True)
    values = []
    while not reader.at_end:
        values.append(reader.read_value())
    return values


def shapes(values: list[object]) -> list[object]:
    seen: dict[int, int] = {}
    return [shape(v, seen) for v in values]


SCALARS = h("4e 54 46 90 80 bf c7ef d40800 4980000000")  # the same in both dialects

# (sofa bytes, final bytes) of the same Java values, as each dialect's Java writer writes them.
PAIRS = [
    ("null, booleans, ints", SCALARS, SCALARS),
    ("longs", h("e0 d8 f810 3c0800 4c0000000080000000"), h("e0 d8 f810 3c0800 4c0000000080000000")),
    ("long in 32 bits", h("77 00040000"), h("59 00040000")),
    ("double 0.0, 1.0, int8, int16", h("67 68 69ff 6a0080"), h("5b 5c 5dff 5e0080")),
    ("double 0.5", h("6b 3f000000"), h("5f 000001f4")),  # float32 in sofa, mills in final
    ("double 0.1", h("44 3fb999999999999a"), h("5f 00000064")),  # no float32, but whole mills
    ("double 3.14159", h("44 400921f9f01b866e"), h("44 400921f9f01b866e")),
    ("date, whole minute", h("64 000000d04b920ba0"), h("4b 00e3838f")),
    ("date, ms", h("64 000000d04b9284b8"), h("4a 000000d04b9284b8")),
    ("short string", h("05'hello'"), h("05'hello'")),
    ("string of 32", h("53 0020") + b"s" * 32, h("30 20") + b"s" * 32),
    ("string of 1024", h("53 0400") + b"s" * 1024, h("53 0400") + b"s" * 1024),
    ("chunked string", h("73 8000") + b"c" * 0x8000 + h("01'c'"), h("52 8000") + b"c" * 0x8000 + h("01'c'")),
    ("binary", h("23 616263 42 0010") + b"b" * 16, h("23 616263 34 10") + b"b" * 16),
    ("typed list", h("56 74 0004'[int' 6e 02 90 91 7a"), h("72 04'[int' 90 91")),
    ("untyped list", h("56 6e 02 90 91 7a"), h("7a 90 91")),
    ("two lists of one type", h("56 74 0004'[int' 6e 01 90 7a 76 90 91 91"), h("71 04'[int' 90 71 90 91")),
    ("typed map", h("4d 74 0011'java.util.TreeMap' 01'a' 91 7a"), h("4d 11'java.util.TreeMap' 01'a' 91 5a")),
    ("untyped map", h("4d 01'a' 91 7a"), h("48 01'a' 91 5a")),
    ("object", h("4f 93'Foo' 91 01'a' 6f 90 91"), h("43 03'Foo' 91 01'a' 60 91")),
    ("shared map", h("56 6e 02 4d 7a 4a 01 7a"), h("7a 48 5a 51 91")),
    ("object that refers to itself", h("4f 93'Foo' 91 04'self' 6f 90 4a 00"), h("43 03'Foo' 91 04'self' 60 51 90")),
]


@pytest.mark.parametrize(("what", "sofa", "final"), PAIRS, ids=[p[0] for p in PAIRS])
def test_hand_checked_pairs(what, sofa, final):
    assert transcode(sofa, "sofa", "final") == final
    assert transcode(final, "final", "sofa") == sofa
    assert transcode(sofa, "sofa", "sofa") == sofa  # both are Java's canonical forms
    assert transcode(final, "final", "final") == final
    assert shapes(read_stream(sofa, "sofa")) == shapes(read_stream(final, "final"))


def test_int_and_long_stay_apart():
    final = transcode(h("95 e5 77 00040000 49 00040000"), "sofa", "final")
    assert final == h("95 e5 59 00040000 49 00040000")
    values = read_stream(final, "final")
    assert [type(v) for v in values] == [int, HessianLong, HessianLong, int]


VECTOR_BODIES = sorted(p.stem for p in VECTORS.glob("*.hex") if body(p.stem))


@pytest.mark.parametrize("name", VECTOR_BODIES)
def test_vector_bodies_both_ways(name):
    """Every Hessian body of tests/vectors/bolt: decode -> encode is byte-exact, also via the final grammar."""
    sofa = body(name)
    final = transcode(sofa, "sofa", "final")
    assert transcode(final, "final", "sofa") == sofa
    assert shapes(read_stream(final, "final")) == shapes(read_stream(sofa, "sofa"))
    assert transcode(sofa, "sofa", "sofa") == sofa


def test_the_echo_request_in_the_final_grammar():
    """bolt_v1_req_echo's body as hessian-lite writes the same values (hand-checked)."""
    assert transcode(body("bolt_v1_req_echo"), "sofa", "final") == h(
        "43 30 2c'com.alipay.sofa.rpc.core.request.SofaRequest' 95"  # 'C', the name is 44 chars: 0x30 form
        "0a'methodName' 0d'methodArgSigs' 17'targetServiceUniqueName' 0d'targetAppName' 0c'requestProps'"
        "60 04'echo'"  # instance of definition #0
        "71 11'[java.lang.String' 10'java.lang.String'"  # typed list of 1
        "1b'com.example.EchoService:1.0' 0b'echo-server'"
        "48 07'service' 1b'com.example.EchoService:1.0' 5a"  # untyped map: 'H'
        "07'hello-0'"  # the argument
    )


# --- what a dialect cannot carry ---------------------------------------------------------------------------


def test_values_a_dialect_cannot_carry_are_errors():
    # sofa: 'M' 'T' reads as a map typed by type reference, so an untyped map cannot start with key true
    with pytest.raises(HessianError, match="True"):
        transcode(h("48 54 4e 5a"), "final", "sofa")
    assert transcode(h("48 46 4e 54 4e 5a"), "final", "sofa") == h("4d 46 4e 54 4e 7a")  # true later is fine
    # sofa: a type name is 't' + uint16 length
    writer = FinalHessianWriter()
    writer.write_value(TypedList([], "t" * 70000))
    with pytest.raises(HessianValueError, match="does not fit"):
        transcode(writer.getvalue(), "final", "sofa")
    # Python cannot hold two keys that Java tells apart (int 1 and long 1): refused, not merged
    with pytest.raises(HessianError, match="equals an earlier key"):
        transcode(h("48 91 4e e1 4e 5a"), "final", "sofa")


def test_lone_surrogates_nan_payloads_and_negative_zero_survive():
    nan = bytes.fromhex("7ff0000000000001")
    sofa = h("03 61 eda0bd 62") + b"\x44" + nan + h("44 8000000000000000")
    final = transcode(sofa, "sofa", "final")
    assert final == sofa  # all three are spelled the same in the final grammar
    text, payload, zero = read_stream(final, "final")
    assert text == "a\ud83db" and struct.pack(">d", payload) == nan
    assert struct.pack(">d", zero) == bytes([0x80]) + bytes(7)


def test_unknown_dialect():
    with pytest.raises(ValueError, match="unknown Hessian dialect"):
        transcode(b"N", "sofa", "hessian4")
    with pytest.raises(ValueError):
        new_writer("json")


# --- round trips -----------------------------------------------------------------------------------------


def sofa_stream(values: list[object]) -> bytes:
    writer = SofaHessianWriter(faithful=True)
    for value in values:
        writer.write_value(value)
    return writer.getvalue()


def final_stream(values: list[object]) -> bytes:
    writer = FinalHessianWriter(faithful=True)
    for value in values:
        writer.write_value(value)
    return writer.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.lists(graphs(), min_size=1, max_size=3))
def test_sofa_final_sofa(values):
    """Values, int vs long, doubles to the bit, strings with lone surrogates, type and class names, nulls,
    shared references and cycles all survive sofa -> final -> sofa, and the bytes come back identical."""
    sofa = sofa_stream(values)
    final = transcode(sofa, "sofa", "final")
    assert final == final_stream(values)
    assert shapes(read_stream(final, "final")) == shapes(values)
    back = transcode(final, "final", "sofa")
    assert back == sofa
    assert shapes(read_stream(back, "sofa")) == shapes(values)


@settings(max_examples=150, deadline=None)
@given(st.lists(graphs(), min_size=1, max_size=3))
def test_final_sofa_final(values):
    final = final_stream(values)
    assert transcode(transcode(final, "final", "sofa"), "sofa", "final") == final


def test_sharing_across_top_level_values_is_kept():
    shared = HessianObject("com.example.Shared", {"v": [1, 2]})
    sofa = sofa_stream([shared, [shared, shared.fields["v"]]])
    first, second = read_stream(transcode(sofa, "sofa", "final"), "final")
    assert second[0] is first and second[1] is first.fields["v"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([("sofa", "final"), ("final", "sofa")]))
def test_random_bytes_only_raise_hessian_error(data, direction):
    try:
        transcode(data, *direction)
    except HessianError as exc:
        assert isinstance(exc, HessianError)


@settings(max_examples=150, deadline=None)
@given(graphs(), st.integers(0, 10**6), st.integers(0, 255))
def test_mutated_streams_only_raise_hessian_error(value, at, replacement):
    for dialect, other, data in (("sofa", "final", sofa_stream([value])), ("final", "sofa", final_stream([value]))):
        mutated = bytearray(data)
        mutated[at % len(mutated)] = replacement
        for candidate in (bytes(mutated), data[: at % (len(data) + 1)]):
            try:
                transcode(candidate, dialect, other)
            except HessianError:
                pass


def test_readers_agree_with_new_reader():
    assert isinstance(new_reader("sofa", b"N"), SofaHessianReader)
    assert isinstance(new_reader("final", b"N"), FinalHessianReader)
