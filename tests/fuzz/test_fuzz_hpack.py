"""Fuzzing the HPACK decoder (interlink.wire.hpack.HeaderBlockDecoder).

Declared: the `hpack` package's exceptions (`hpack.exceptions.HPACKError` and its subclasses), nothing
else. Inputs are arbitrary blocks and structured ones (indexed fields, literals with and without indexing
and Huffman coding, table size updates, huge and overlong integers, corrupted Huffman strings), fed as
sequences of blocks through fresh decoders, with blocks repeated so that the block and Huffman caches
answer (per decoder or process-wide, whichever the module keeps), and through one long-lived decoder per
test that sees every input.

Oracle: the `hpack` package's own `Decoder`, fed the same sequence. Both must accept or both refuse each
block (up to the first refusal: an HPACK error ends the connection), with the same header list and table
size; the exception classes may differ. This checks the decoder's caches, not just its exceptions.
"""

from __future__ import annotations

import os
import random

import hpack
import pytest
from hpack.exceptions import HPACKError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given
from hypothesis import strategies as st

from interlink.wire.hpack import HeaderBlockDecoder

from .conftest import FULL_INPUTS, SIZES, Mutator, fuzz_loop, given_settings, guarded

DECLARED = HPACKError
HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
STATIC_COUNT = 61
LIST_LIMITS = (0, 40, 100, 300, 4096, 64 * 1024)
TABLE_LIMITS = (4096, 65536)  # SETTINGS_HEADER_TABLE_SIZE values for which both decoders behave the same
NAMES = (b":path", b":method", b"content-type", b"grpc-timeout", b"te", b"x-custom", b"", b"a" * 100)
VALUES = (b"POST", b"/pkg.Svc/Method", b"application/grpc", b"trailers", b"", b"v" * 300, bytes(range(256)))


def encode_int(value: int, prefix_bits: int, flags: int = 0, padding: int = 0) -> bytes:
    """RFC 7541 5.1 integer; `padding` > 0 adds that many redundant zero continuation bytes (legal but
    overlong) to a value that does not fit the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    if padding:
        out += bytes((value | 0x80,)) + b"\x80" * (padding - 1) + b"\x00"
    else:
        out.append(value)
    return bytes(out)


def string(data: bytes, huffman: bool, corrupt: int = 0, padding: int = 0) -> bytes:
    """A string literal; `corrupt` flips that bit of the Huffman payload (0: none)."""
    payload = bytearray(HUFFMAN.encode(data) if huffman else data)
    if corrupt and payload:
        bit = corrupt % (8 * len(payload))
        payload[bit // 8] ^= 0x80 >> (bit % 8)
    return encode_int(len(payload), 7, 0x80 if huffman else 0, padding) + bytes(payload)


# One field representation: ("indexed", index) | ("size", size) | ("raw", bytes) |
# ("literal", kind, name_index, name, value, huffman_name, huffman_value, corrupt, padding)
LITERAL_KINDS = {"incremental": (0x40, 6), "without": (0x00, 4), "never": (0x10, 4)}


def build(ops: list[tuple]) -> bytes:
    out = bytearray()
    for op in ops:
        if op[0] == "indexed":
            out += encode_int(op[1], 7, 0x80, op[2])
        elif op[0] == "size":
            out += encode_int(op[1], 5, 0x20, op[2])
        elif op[0] == "raw":
            out += op[1]
        else:
            _, kind, name_index, name, value, huffman_name, huffman_value, corrupt, padding = op
            flags, prefix = LITERAL_KINDS[kind]
            out += encode_int(name_index, prefix, flags, padding)
            if not name_index:
                out += string(name, huffman_name, corrupt if corrupt % 2 else 0)
            out += string(value, huffman_value, corrupt if not corrupt % 2 else 0, padding)
    return bytes(out)


# --- oracles -----------------------------------------------------------------------------------------------------


def decode_or_error(decoder, block: bytes, **kwargs) -> list[tuple[bytes, bytes]] | HPACKError:
    try:
        return decoder.decode(block, **kwargs)
    except DECLARED as exc:
        return exc


def check_sequence(blocks: list[bytes], list_limit: int, table_limit: int, shared: HeaderBlockDecoder) -> None:
    ours = HeaderBlockDecoder(max_header_list_size=list_limit)
    ours.max_allowed_table_size = table_limit
    reference = hpack.Decoder(max_header_list_size=list_limit)
    reference.max_allowed_table_size = table_limit
    for block in blocks:
        decode_or_error(shared, block)  # the long-lived decoder: only the exception type is checked
        got = decode_or_error(ours, block)
        want = decode_or_error(reference, block, raw=True)
        if isinstance(got, Exception) or isinstance(want, Exception):
            assert isinstance(got, Exception), f"accepted a block that hpack refuses ({want!r}): {got!r}"
            assert isinstance(want, Exception), f"refused a block that hpack accepts ({got!r}): {want!r}"
            return  # an HPACK error ends the connection; the tables may differ from here on
        assert isinstance(got, list)
        assert got == [tuple(field) for field in want]
        assert all(type(name) is bytes and type(value) is bytes for name, value in got)
        assert sum(len(name) + len(value) + 32 for name, value in got) <= list_limit
        assert ours.header_table_size == reference.header_table_size
        assert ours._table_size <= ours.header_table_size


def check_case(case: tuple[list[bytes], int, int], shared: HeaderBlockDecoder) -> None:
    blocks, list_limit, table_limit = case
    check_sequence(blocks, list_limit, table_limit, shared)


def check_other_table_limits(blocks: list[bytes], table_limit: int) -> None:
    """Settings where the two decoders legitimately differ (an advertised table size below the current
    one): the exceptions are still the declared ones."""
    decoder = HeaderBlockDecoder()
    decoder.max_allowed_table_size = table_limit
    for block in blocks:
        decode_or_error(decoder, block)


# --- hypothesis: structured blocks --------------------------------------------------------------------------------

_INDEX = st.one_of(
    st.integers(0, STATIC_COUNT + 6), st.sampled_from([127, 128, 2**14, 2**21, 2**28, 2**35 - 1]), st.integers(0, 2**40)
)
_PAD = st.sampled_from([0] * 9 + [1, 3, 4, 5, 6])
_BYTES = st.one_of(st.sampled_from(NAMES + VALUES), st.binary(max_size=40))


@st.composite
def ops(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(["indexed", "indexed", "literal", "literal", "literal", "size", "raw"]))
    if kind == "indexed":
        return ("indexed", draw(_INDEX), draw(_PAD))
    if kind == "size":
        return ("size", draw(st.one_of(st.sampled_from([0, 1, 64, 4096, 4097, 65536, 65537]), _INDEX)), draw(_PAD))
    if kind == "raw":
        return ("raw", draw(st.binary(min_size=1, max_size=6)))
    return (
        "literal",
        draw(st.sampled_from(sorted(LITERAL_KINDS))),
        draw(st.one_of(st.just(0), st.just(0), _INDEX)),
        draw(_BYTES),
        draw(_BYTES),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.one_of(st.just(0), st.just(0), st.integers(1, 400))),
        draw(_PAD),
    )


@st.composite
def sequences(draw: st.DrawFn) -> tuple[list[bytes], int, int]:
    pool = draw(st.lists(st.lists(ops(), max_size=6).map(build), min_size=1, max_size=4))
    picks = draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=8))  # repeats hit the caches
    return [pool[i] for i in picks], draw(st.sampled_from(LIST_LIMITS)), draw(st.sampled_from(TABLE_LIMITS))


@pytest.mark.parametrize("size", SIZES)
def test_structured_blocks(size):
    shared = HeaderBlockDecoder()

    @given_settings(size, quick=700, full=6000)
    @given(sequences())
    def run(case):
        guarded(check_case, case, shared)

    run()


@pytest.mark.parametrize("size", SIZES)
def test_arbitrary_blocks(size):
    shared = HeaderBlockDecoder()

    @given_settings(size, quick=300, full=3000)
    @given(st.lists(st.binary(max_size=80), min_size=1, max_size=5), st.sampled_from(LIST_LIMITS))
    def run(blocks, list_limit):
        guarded(check_case, (blocks, list_limit, 4096), shared)

    run()


@pytest.mark.parametrize("size", SIZES)
def test_blocks_under_a_smaller_advertised_table(size):
    @given_settings(size, quick=150, full=2000)
    @given(st.lists(st.lists(ops(), max_size=6).map(build), min_size=1, max_size=4), st.sampled_from([0, 1, 100, 4095]))
    def run(blocks, table_limit):
        guarded(check_other_table_limits, blocks, table_limit)

    run()


# --- the counted mutation loop -----------------------------------------------------------------------------------


def random_op(rng: random.Random) -> tuple:
    def index() -> int:
        roll = rng.random()
        if roll < 0.7:
            return rng.randrange(STATIC_COUNT + 8)
        if roll < 0.9:
            return rng.choice((127, 128, 2**14, 2**21, 2**28, 2**35 - 1, 2**35))
        return rng.randrange(1 << rng.choice((8, 14, 21, 28, 35, 40)))

    def blob() -> bytes:
        return rng.choice(NAMES + VALUES) if rng.random() < 0.6 else rng.randbytes(rng.randrange(40))

    pad = rng.choice((0,) * 12 + (1, 4, 5, 6))
    kind = rng.random()
    if kind < 0.3:
        return ("indexed", index(), pad)
    if kind < 0.33:
        return ("size", rng.choice((0, 64, 4096, 4097, 65536, 65537, index())), pad)
    if kind < 0.42:
        return ("raw", rng.randbytes(rng.randint(1, 6)))
    corrupt = rng.randint(1, 400) if rng.random() < 0.15 else 0
    name_index = index() if rng.random() < 0.5 else 0
    huffman = (rng.random() < 0.5, rng.random() < 0.5)
    return ("literal", rng.choice(sorted(LITERAL_KINDS)), name_index, blob(), blob(), *huffman, corrupt, pad)


def random_block(rng: random.Random) -> bytes:
    fields = [random_op(rng) for _ in range(rng.choice((0, 1, 2, 3, 5, 8)))]
    if rng.random() < 0.2:  # size updates belong at the start of a block
        fields.insert(0, ("size", rng.choice((0, 32, 100, 4096, 65536)), 0))
    return build(fields)


@pytest.mark.parametrize(("size", "inputs", "cap"), [
    pytest.param("quick", 3_000, 60, id="quick"),
    pytest.param("full", 2 * FULL_INPUTS, 400, id="full", marks=pytest.mark.slow),
])  # fmt: skip
def test_mutation_loop(size, inputs, cap):
    seed_rng = random.Random(0)
    seeds = [random_block(seed_rng) for _ in range(200)]
    seeds += [bytes.fromhex(h) for h in ("828684418cf1e3c2e5f23a6ba0ab90f4ff", "828684be5886a8eb10649cbf", "3fe101")]
    mutator = Mutator(random.Random(), seeds, [b"\x80", b"\xff\xff\xff\xff\x0f", b"\x3f\xe1\x1f", b"\x40\x00\x00"])
    shared = HeaderBlockDecoder()

    def make(rng: random.Random) -> tuple[list[bytes], int, int]:
        mutator.rng = rng
        pool = []
        for _ in range(rng.randint(1, 3)):
            block = random_block(rng) if rng.random() < 0.5 else mutator.input()
            pool.append(mutator.mutate(block) if rng.random() < 0.3 else block)
        blocks = [rng.choice(pool) for _ in range(rng.randint(1, 6))]
        return blocks, rng.choice(LIST_LIMITS), rng.choice(TABLE_LIMITS)

    fuzz_loop("hpack", inputs, make, lambda case: check_case(case, shared), time_cap=cap)


# --- sanity ----------------------------------------------------------------------------------------------------


def test_builder_makes_what_both_decoders_read():
    block = build([
        ("size", 256, 0),
        ("indexed", 2, 0),
        ("literal", "incremental", 0, b"x-custom", b"value", True, False, 0, 0),
        ("literal", "without", 4, b"", b"/pkg.Svc/Method", False, True, 0, 3),
        ("indexed", STATIC_COUNT + 1, 2),
    ])  # fmt: skip
    expected = [(b":method", b"GET"), (b"x-custom", b"value"), (b":path", b"/pkg.Svc/Method"), (b"x-custom", b"value")]
    assert HeaderBlockDecoder().decode(block) == expected
    assert [tuple(h) for h in hpack.Decoder().decode(block, raw=True)] == expected


def test_the_oracle_catches_an_undeclared_exception():
    """The loop fails (it does not swallow) when the decoder raises anything but an HPACK error."""

    class Broken(HeaderBlockDecoder):
        def _decode(self, data):
            raise IndexError("boom")

    # A block never seen before (a fresh random name), so that no cache answers in place of the decoder.
    block = build([("literal", "without", 0, os.urandom(16), b"", False, False, 0, 0)])
    with pytest.raises(AssertionError, match="IndexError"):
        fuzz_loop(
            "hpack-sanity", 2, lambda rng: ([block], 4096, 4096),
            lambda case: check_case(case, Broken()), time_cap=10, seed=1,
        )  # fmt: skip
