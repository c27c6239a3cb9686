"""Fuzzing the Hessian readers, the transcoder and the SOFARPC body readers.

Targets: `SofaHessianReader` and `FinalHessianReader` (`read_value` to the end of the stream, plain and
faithful, any `max_depth` and start offset; `read_object_start`), `transcode` (all four dialect pairs),
`sofarpc.read_request_head`, `RequestHeadCache.read` and `sofarpc.read_response_summary`.
Declared: `HessianError` (of which `HessianValueError` is a subclass), nothing else.

Inputs: valid streams written by both writers from random value graphs (shared references, cycles, every
scalar form, long strings and binaries), SOFARPC request and response bodies and the Bolt vectors' bodies,
with bytes and lengths mutated; hand-made streams nested deeper than the limit, back-references to values
that do not exist or are still being read, class definitions and type references out of range; and random
bytes.

Oracles beyond the exception type: every `read_value` makes progress; a stream that `transcode` accepts
reads back in the target dialect as the same value graph (types, names, sharing, exact double bits), and
transcoding the output again within its dialect changes nothing; the head cache answers exactly what a
fresh read answers.
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.wire import bolt, sofarpc
from interlink.wire.hessian2 import (
    MAX_DEPTH,
    FinalHessianReader,
    FinalHessianWriter,
    HessianDate,
    HessianError,
    HessianLong,
    HessianObject,
    HessianValueError,
    SofaHessianReader,
    SofaHessianWriter,
    TypedList,
    TypedMap,
    transcode,
    write_values,
)

from .conftest import FULL_INPUTS, SIZES, Mutator, fuzz_loop, given_settings, guarded

DECLARED = HessianError
READERS = {"sofa": SofaHessianReader, "final": FinalHessianReader}
WRITERS = {"sofa": SofaHessianWriter, "final": FinalHessianWriter}
DEPTHS = (MAX_DEPTH,) * 6 + (0, 1, 3, 8, 200, 5000)

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "bolt"
BODIES = [
    frame.content
    for frame in (bolt.decode(bytes.fromhex("".join(p.read_text().split()))) for p in sorted(VECTOR_DIR.glob("*.hex")))
    if frame.content
]

TYPE_NAMES = ("[string", "[int", "java.util.ArrayList", "java.util.HashMap", "[java.lang.Object", "t" * 40, "\u4e2d")
CLASS_NAMES = ("com.example.Pojo", "java.math.BigDecimal", sofarpc.SOFA_REQUEST_CLASS, sofarpc.SOFA_RESPONSE_CLASS, "a")
FIELD_NAMES = ("a", "b", "value", "methodName", "requestProps", "f" * 33, "\u00e9t\u00e9")
INTS = (
    -(2**31), -262145, -262144, -2049, -2048, -17, -16, -9, -8, -1, 0, 1, 15, 16, 47, 48, 2047, 2048, 262143, 2**31 - 1,
)  # fmt: skip
LONGS = (-(2**63), -(2**31) - 1, 2**31, 2**63 - 1, *INTS)
DOUBLES = (0.0, -0.0, 1.0, -1.0, 0.5, 127.0, -128.0, 32767.0, 0.001, 2147483.647, 1e300, math.inf, -math.inf, math.nan,
           struct.unpack(">d", b"\x7f\xf0\x00\x00\x00\x00\x00\x01")[0], 3.4028234663852886e38)  # fmt: skip
STRINGS = ("", "a", "hello", "\u00e9", "\u4e2d\u6587", "\U0001f600", "\ud800", "x\udc00y", "s" * 31, "s" * 32,
           "m" * 1023, "m" * 1024, "\u4e2d" * 40)  # fmt: skip

# Hand-made streams that need care: nesting beyond the limit, missing and self references, bad definitions.
SOFA_TRICKY = [
    b"V" * 70 + b"z" * 70, b"Vt\x00\x01a" + b"V" * 66 + b"N" + b"z" * 67, b"M" * 70 + b"z" * 70,
    b"Vn\x01J\x00z", b"M\x90J\x00z", b"MJ\x00\x90z", b"J\x05", b"K\xff\xff", b"R\x7f\xff\xff\xff", b"R\xff\xff\xff\xff",
    b"O\x91a\x91\x01bo\x90J\x00", b"O\x91a\x91\x01bo\x91N", b"o\x90", b"O\x91a\x92\x01b\x01bo\x90NN",
    b"v\x90\x91N", b"Vu\x95z", b"VT\x90z", b"Mt\xff\xffz", b"S\xff\xff", b"s\x00\x01as\x00\x01b\x01c", b"s\x00\x01aX",
    b"b\x00\x01ab\x00\x01b\x21c", b"b\x00\x01aN", b"\x03\xed\xa0\x80\xed\xb0\x80\xed\xa0\x80", b"\x02\xf0\x9f\x98\x80",
    b"\x01\xf0\x9f\x98\x80", b"\x01\xc0", b"\x01\xff", b"Vl\x7f\xff\xff\xffz", b"Vn\xffN", b"Ox", b"O\x80",
    b"O\xd7\xff\xff",
    b"x", b"X", b"r", b"O\x91aI\x7f\xff\xff\xff", b"M\x90NT\x90z", b"MTz", b"O\x91a\x90" * 40 + b"o\xa7",
]  # fmt: skip
FINAL_TRICKY = [
    b"W" * 70 + b"Z" * 70, b"\x79" * 80 + b"N", b"H" * 70 + b"Z" * 70, b"\x79Q\x90", b"H\x90Q\x90Z", b"HQ\x90\x90Z",
    b"C\x01T\x91\x01a`Q\x90", b"C\x01T\x91\x01a" + b"`" * 80 + b"N", b"Q\x95", b"QI\x80\x00\x00\x00",
    b"QI\x7f\xff\xff\xff",
    b"`", b"o", b"O\x9f", b"OI\x7f\xff\xff\xff", b"C\x01T\x92\x01a\x01a`NN", b"V\x04type\x95\x90", b"\x70\x95",
    b"U\x90Z", b"M\xbfZ", b"XI\x7f\xff\xff\xff", b"X\x8f", b"R\x00\x01aR\x00\x01b\x01c",
    b"R\x00\x01a\x33\xff" + b"a" * 10,
    b"A\x00\x01aA\x00\x01b\x21c", b"A\x00\x01a\x37\xff", b"S\xff\xff", b"\x33\xff", b"\x37\xff", b"K\x7f\xff\xff\xff",
    b"J\x80\x00\x00\x00\x00\x00\x00\x00", b"_\x80\x00\x00\x00", b"C\x30\x10" + b"c" * 16 + b"\x90\x60",
    b"\x72\x04typeNN", b"\x72\x90NN", b"V\x90\x93NNN", b"U\x04typeQ\x90Z", b"HNNZ", b"H\x5b\x90\x5c\x90T\x90Z",
]  # fmt: skip
TOKENS = [
    b"O", b"o\x90", b"V", b"z", b"M", b"Mt\x00\x04java", b"J\x00", b"K\x00\x01", b"R\x00\x00\x00\x05", b"Q\x90",
    b"C\x04Test\x91\x01a", b"`", b"H", b"Z", b"W", b"X\x95", b"U\x04type", b"\x70", b"\x78", b"S\x80\x00", b"s\x00\x01",
    b"R\x00\x01", b"b\x00\x01", b"A\x00\x01", b"I", b"L", b"D", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"\x1f",
    b"\x33\xff", b"\x37\xff", b"t\xff\xff",
    b"u\x90", b"v\x90", b"n\x05", b"l\x7f\xff\xff\xff", b"\x49\x80\x00\x00\x00", b"\x90", b"\xd7\xff\xff", b"N", b"T",
]  # fmt: skip


# --- value graphs (random.Random) ---------------------------------------------------------------------------------


def random_scalar(rng: random.Random, hashable: bool = False) -> object:
    roll = rng.randrange(16 if not hashable else 12)
    if roll == 0:
        return None
    if roll == 1:
        return rng.random() < 0.5
    if roll == 2:
        return rng.choice(INTS)
    if roll == 3:
        return rng.randint(-(2**31), 2**31 - 1)
    if roll == 4:
        return HessianLong(rng.choice(LONGS) if rng.random() < 0.6 else rng.randint(-(2**63), 2**63 - 1))
    if roll == 5:
        return rng.choice(DOUBLES)
    if roll == 6:
        return rng.choice(
            (rng.uniform(-1e6, 1e6), struct.unpack(">f", rng.randbytes(4))[0], rng.randint(-999, 999) / 1000)
        )
    if roll in (7, 8):
        return rng.choice(STRINGS)
    if roll == 9:
        limits = (0x80, 0x800, 0x10000, 0x110000)  # 1- to 4-byte UTF-8, surrogates included
        return "".join(chr(rng.randrange(rng.choice(limits))) for _ in range(rng.randrange(12)))
    if roll == 10:
        return HessianDate(rng.choice((rng.randint(-(2**40), 2**40) * 60000, rng.randint(-(2**63), 2**63 - 1))))
    if roll == 11:
        return rng.choice(("k", "methodName", 0, 1.5))
    if roll == 12:
        return rng.randbytes(rng.choice((0, 1, 15, 16, 200, 1023, 1024)))
    if roll == 13:
        return "L" * rng.choice((1100, 4000, 32768, 32769))  # long strings: chunk boundaries
    if roll == 14:
        return b"B" * rng.choice((8189, 8200, 40000))  # long binaries: hessian-lite's buffer chunking
    return rng.choice(INTS)


def random_graph(rng: random.Random, pool: list[object] | None = None, depth: int = 0) -> object:
    """A value graph: containers may reappear later (shared references) or inside themselves (cycles)."""
    pool = [] if pool is None else pool
    if depth >= 5 or rng.random() < 0.45:
        if pool and rng.random() < 0.2:
            return rng.choice(pool)
        return random_scalar(rng)
    kind = rng.randrange(5)
    count = rng.choice((0, 1, 2, 3, 5, 9))
    if kind <= 1:
        items: list[object] = TypedList((), rng.choice(TYPE_NAMES)) if kind == 1 else []
        pool.append(items)
        items.extend(random_graph(rng, pool, depth + 1) for _ in range(count))
        return items
    if kind <= 3:
        mapping: dict[object, object] = TypedMap((), rng.choice(TYPE_NAMES)) if kind == 3 else {}
        pool.append(mapping)
        for _ in range(count):
            mapping[random_scalar(rng, hashable=True)] = random_graph(rng, pool, depth + 1)
        return mapping
    obj = HessianObject(rng.choice(CLASS_NAMES), {})
    pool.append(obj)
    for _ in range(count % 5):
        obj.fields[rng.choice(FIELD_NAMES)] = random_graph(rng, pool, depth + 1)
    return obj


def sofa_request(rng: random.Random) -> list[object]:
    """A SofaRequest head (sometimes with wrong field types) and its arguments."""
    fields: dict[str, object] = {
        "targetAppName": rng.choice(("app", None, 5)),
        "methodName": rng.choice(("echo", "", None, ["echo"])),
        "targetServiceUniqueName": rng.choice(("com.example.EchoService:1.0", None, b"x")),
        "requestProps": rng.choice(({"app": "caller", "trace": {"id": "1"}}, None, {}, ["x"], {"app": 5})),
        "methodArgSigs": rng.choice((TypedList(["java.lang.String"], "[string"), None, [], ["a", 1], "x")),
    }
    names = list(fields)
    rng.shuffle(names)
    class_name = rng.choice((sofarpc.SOFA_REQUEST_CLASS,) * 5 + ("x",))
    head = HessianObject(class_name, {n: fields[n] for n in names[: rng.randint(3, 5)]})
    return [head, *(random_graph(rng) for _ in range(rng.randrange(3)))]


def write(dialect: str, values: list[object], faithful: bool) -> bytes | None:
    writer = WRITERS[dialect](faithful=faithful)
    try:
        write_values(writer, values, dialect)
    except HessianValueError:
        return None  # a value this dialect cannot carry (e.g. a sofa map whose first key is True)
    return writer.getvalue()


def random_stream(rng: random.Random) -> tuple[str, bytes]:
    dialect = rng.choice(("sofa", "final"))
    roll = rng.random()
    if roll < 0.25:
        values = sofa_request(rng)
    elif roll < 0.3:
        try:
            value, is_error, message = random_graph(rng), rng.random() < 0.5, rng.choice(("e", None))
            body = sofarpc.sofa_response(value, is_error=is_error, error_msg=message)
            return "sofa", body
        except HessianValueError:
            return "sofa", b"N"
    else:
        values = [random_graph(rng) for _ in range(rng.choice((1, 1, 2, 3)))]
    data = write(dialect, values, rng.random() < 0.5)
    return dialect, data if data is not None else b"N"


# --- oracles -----------------------------------------------------------------------------------------------------


def read_stream(
    dialect: str, data: bytes, *, faithful: bool, max_depth: int = MAX_DEPTH, offset: int = 0
) -> list[object]:
    reader = READERS[dialect](data, offset, faithful=faithful, max_depth=max_depth)
    values = []
    while not reader.at_end:
        before = reader.offset
        values.append(reader.read_value())
        assert reader.offset > before, "read_value made no progress"
    return values


def shape(value: object, seen: dict[int, int]) -> object:
    """A comparable description of a value graph: Python types, type and class names, field order, exact
    double bits, and sharing (a container met again is ("ref", its preorder number))."""
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


def shapes(values: list[object]) -> list[object]:
    seen: dict[int, int] = {}
    return [shape(v, seen) for v in values]


def check_readers(data: bytes, max_depth: int, offset: int) -> None:
    for dialect in READERS:
        for faithful in (False, True):
            try:
                read_stream(dialect, data, faithful=faithful, max_depth=max_depth, offset=offset)
            except DECLARED:
                pass
    reader = SofaHessianReader(data, faithful=False, max_depth=max_depth)
    try:
        instance, names = reader.read_object_start()
    except DECLARED:
        return
    assert isinstance(instance, HessianObject) and instance.fields == {} and reader.refs[-1] is instance
    try:
        for _ in names:
            reader.read_value()
    except DECLARED:
        pass


def check_transcode(data: bytes, max_depth: int) -> None:
    for src in READERS:
        try:
            values: list[object] | None = read_stream(src, data, faithful=True, max_depth=max_depth)
        except DECLARED:
            values = None
        for dst in READERS:
            try:
                out = transcode(data, src, dst, max_depth=max_depth)
            except DECLARED:
                continue
            assert values is not None, f"transcode {src}->{dst} accepted a stream its reader refuses"
            back = read_stream(dst, out, faithful=True, max_depth=max(max_depth, MAX_DEPTH))
            assert shapes(back) == shapes(values), f"transcode {src}->{dst} changed the values"
            again = transcode(out, dst, dst, max_depth=max(max_depth, MAX_DEPTH))
            assert again == out, f"{dst} output is not canonical"


_FAILED = "refused"


def head_outcome(read, data: bytes) -> object:
    try:
        head = read(data)
    except DECLARED:
        return _FAILED
    assert isinstance(head, sofarpc.SofaRequestHead)
    assert isinstance(head.method_name, str) and all(isinstance(sig, str) for sig in head.arg_sigs)
    assert isinstance(head.request_props, dict)
    assert head.target_service is None or isinstance(head.target_service, str)
    assert head.target_app is None or isinstance(head.target_app, str)
    app = sofarpc.caller_app(head)
    assert app is None or (isinstance(app, str) and app)
    seen: dict[int, int] = {}
    return (head.method_name, head.arg_sigs, head.target_service, head.target_app, shape(head.request_props, seen))


def check_sofarpc(data: bytes, cache: sofarpc.RequestHeadCache) -> None:
    fresh = head_outcome(sofarpc.read_request_head, data)
    cached = head_outcome(cache.read, data)
    assert cached == fresh, "the head cache and a fresh read disagree"
    try:
        is_error, message = sofarpc.read_response_summary(data)
    except DECLARED:
        return
    assert isinstance(is_error, bool) and (message is None or isinstance(message, str))


def check_case(case: tuple[bytes, int, int], cache: sofarpc.RequestHeadCache) -> None:
    data, max_depth, offset = case
    check_readers(data, max_depth, offset)
    check_transcode(data, max_depth)
    check_sofarpc(data, cache)


# --- hypothesis --------------------------------------------------------------------------------------------------


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A valid stream (from a random value graph, a SOFARPC body or a hand-made tricky stream), then byte
    edits, insertions of structural tokens, length tweaks and truncation."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    source = draw(st.sampled_from(["graph", "graph", "body", "tricky"]))
    if source == "graph":
        data = random_stream(rng)[1]
    elif source == "body":
        data = draw(st.sampled_from(BODIES))
    else:
        data = draw(st.sampled_from(SOFA_TRICKY + FINAL_TRICKY))
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["set", "add", "insert", "delete"]))
        pos = draw(st.integers(0, len(out)))
        if action == "set" and pos < len(out):
            out[pos] = draw(st.integers(0, 255))
        elif action == "add" and pos < len(out):
            out[pos] = (out[pos] + draw(st.sampled_from([-2, -1, 1, 2, 0x10, -0x10]))) % 256
        elif action == "insert":
            out[pos:pos] = draw(st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=4)))
        elif action == "delete" and pos < len(out):
            del out[pos : pos + draw(st.integers(1, 4))]
    if draw(st.booleans()) and out:
        del out[draw(st.integers(0, len(out) - 1)) :]
    return bytes(out), draw(st.sampled_from(DEPTHS)), 0


@pytest.mark.parametrize("size", SIZES)
def test_mutated_streams(size):
    cache = sofarpc.RequestHeadCache(max_entries=32)

    @given_settings(size, quick=600, full=5000)
    @given(mutated_streams())
    def run(case):
        guarded(check_case, case, cache)

    run()


@pytest.mark.parametrize("size", SIZES)
def test_arbitrary_bytes(size):
    cache = sofarpc.RequestHeadCache(max_entries=32)

    @given_settings(size, quick=300, full=3000)
    @given(st.binary(max_size=300), st.sampled_from(DEPTHS), st.integers(-2, 310))
    def run(data, max_depth, offset):
        guarded(check_case, (data, max_depth, offset), cache)

    run()


@pytest.mark.parametrize("size", SIZES)
def test_deep_nesting(size):
    """Nesting around the depth limit, in every container form of both dialects, closed or not."""
    opens = {  # opening bytes -> closing bytes
        b"V": b"z", b"Vt\x00\x01a": b"z", b"M": b"z", b"Mt\x00\x01b": b"z", b"M\x90": b"z", b"Vn\x01": b"z",
        b"v\x90\x91": b"", b"W": b"Z", b"\x79": b"", b"X\x91": b"", b"U\x01c": b"Z", b"H": b"Z", b"H\x90": b"Z",
        b"\x71\x01d": b"", b"`": b"",
    }  # fmt: skip
    prefix = b"O\x91a\x91\x01f" + b"C\x01T\x91\x01f"  # class definitions for 'o'/0x60 objects of one field

    @given_settings(size, quick=150, full=2000)
    @given(
        st.lists(st.sampled_from(sorted(opens)), min_size=1, max_size=3),
        st.integers(0, 140),
        st.sampled_from(DEPTHS),
        st.booleans(),
        st.sampled_from([b"N", b"J\x00", b"Q\x90", b"Q\x91", b"\x90"]),
    )
    def run(pattern, depth, max_depth, close, leaf):
        chosen = [pattern[i % len(pattern)] for i in range(depth)]
        body = b"".join(b"o\x90" if o == b"`" and i % 2 else o for i, o in enumerate(chosen)) + leaf
        if close:
            body += b"".join(opens[o] for o in reversed(chosen))
        guarded(check_case, (prefix + body, max_depth, 0), sofarpc.RequestHeadCache())

    run()


# --- the counted mutation loop -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "inputs", "cap", "workers"), [
    pytest.param("quick", 2_000, 60, 1, id="quick"),
    pytest.param("full", FULL_INPUTS, 500, 2, id="full", marks=pytest.mark.slow),
])  # fmt: skip
def test_mutation_loop(size, inputs, cap, workers):
    seed_rng = random.Random(0)
    seeds = BODIES + SOFA_TRICKY + FINAL_TRICKY + [random_stream(seed_rng)[1] for _ in range(300)]
    mutator = Mutator(random.Random(), seeds, TOKENS)
    cache = sofarpc.RequestHeadCache(max_entries=64)

    def make(rng: random.Random) -> tuple[bytes, int, int]:
        mutator.rng = rng
        if rng.random() < 0.2:  # a fresh valid stream, maybe mutated
            data = random_stream(rng)[1]
            data = mutator.mutate(data) if rng.random() < 0.6 else data
        else:
            data = mutator.input()
        offset = 0 if rng.random() < 0.9 else rng.randint(-1, len(data) + 1)
        return data, rng.choice(DEPTHS), offset

    fuzz_loop("hessian", inputs, make, lambda case: check_case(case, cache), time_cap=cap, workers=workers)


def test_the_oracle_catches_an_undeclared_exception(monkeypatch):
    """The loop fails (it does not swallow) when a reader raises anything but HessianError."""

    def broken(self, tag, depth):
        raise KeyError("boom")  # not among the exceptions read_value turns into HessianError

    null = FinalHessianReader._TABLES[0][0x4E]
    tables = tuple([broken if h is null else h for h in table] for table in FinalHessianReader._TABLES)
    monkeypatch.setattr(FinalHessianReader, "_TABLES", tables)
    with pytest.raises(AssertionError, match="KeyError"):
        fuzz_loop(
            "hessian-sanity", 1, lambda rng: (b"N", MAX_DEPTH, 0),
            lambda case: check_case(case, sofarpc.RequestHeadCache()), time_cap=10, seed=1,
        )  # fmt: skip
