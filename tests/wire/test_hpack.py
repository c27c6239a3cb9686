"""HPACK codec: RFC 7541 Appendix C vectors, and the `hpack` package as the oracle for everything else."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.wire.hpack import BLOCKS, ENCODED, FIELDS, HUFFMAN, HeaderBlockDecoder, HeaderBlockEncoder, decode_integer, encode_integer

# RFC 7541 C.4: three requests on one connection, Huffman-coded, sharing the dynamic table.
RFC_C4 = [
    ("828684418cf1e3c2e5f23a6ba0ab90f4ff",
     [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")]),
    ("828684be5886a8eb10649cbf",
     [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com"),
      (b"cache-control", b"no-cache")]),
    ("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
     [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"), (b":authority", b"www.example.com"),
      (b"custom-key", b"custom-value")]),
]


def test_rfc7541_c4_requests_with_huffman_and_dynamic_table():
    decoder = HeaderBlockDecoder()
    for block, headers in RFC_C4:
        assert decoder.decode(bytes.fromhex(block)) == headers
    assert decoder._table_size == 164  # RFC 7541 C.4.3: table size after the third request


# RFC 7541 C.6.1 (responses, table size 256, Huffman) to exercise eviction.
def test_rfc7541_c6_eviction():
    decoder = HeaderBlockDecoder()
    decoder.max_allowed_table_size = 256
    first = bytes.fromhex(
        "3fe101" "4882640258" "85aec3771a4b" "6196d07abe941054d444a8200595040b8166e082a62d1bff" "6e919d29ad171863c78f0b97c8e9ae82ae43d3"
    )
    headers = decoder.decode(first)
    assert headers == [
        (b":status", b"302"), (b"cache-control", b"private"), (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"),
        (b"location", b"https://www.example.com"),
    ]
    second = bytes.fromhex("4883640effc1c0bf")
    assert decoder.decode(second)[0] == (b":status", b"307")
    assert decoder._table_size == 222


@pytest.mark.parametrize(("value", "prefix", "wire"), [(10, 5, "0a"), (1337, 5, "1f9a0a"), (42, 8, "2a")])
def test_integer_vectors(value, prefix, wire):  # RFC 7541 C.1
    assert encode_integer(value, prefix) == bytes.fromhex(wire)
    assert decode_integer(bytes.fromhex(wire), 0, prefix) == (value, len(wire) // 2)


names = st.binary(min_size=1, max_size=20).map(lambda b: bytes(c % 26 + 97 for c in b))
values = st.binary(max_size=60).map(lambda b: bytes(c % 94 + 32 for c in b))
header_lists = st.lists(
    st.one_of(
        st.tuples(names, values),
        st.sampled_from([(b":method", b"POST"), (b":status", b"200"), (b"content-type", b"application/grpc"),
                         (b"te", b"trailers"), (b"grpc-status", b"0"), (b":path", b"/a/b")]),
    ),
    max_size=12,
)


@settings(max_examples=300)
@given(st.lists(st.tuples(header_lists, st.booleans()), min_size=1, max_size=6))
def test_decoder_matches_hpack_package_across_blocks(blocks):
    encoder = hpack.Encoder()
    ours, theirs = HeaderBlockDecoder(), hpack.Decoder()
    for headers, huffman in blocks:
        block = encoder.encode(headers, huffman=huffman)
        assert ours.decode(block) == [tuple(h) for h in theirs.decode(block, raw=True)]


@given(st.lists(header_lists, min_size=1, max_size=4))
def test_encoder_output_decodes_with_hpack_package(blocks):
    encoder, decoder = HeaderBlockEncoder(), hpack.Decoder()
    for headers in blocks:
        assert [tuple(h) for h in decoder.decode(encoder.encode(headers), raw=True)] == headers
        assert len(decoder.header_table.dynamic_entries) == 0  # nothing was ever indexed


def test_encoder_uses_static_table():
    encoder = HeaderBlockEncoder()
    assert encoder.encode([(b":method", b"POST")]) == b"\x83"
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    assert encoder.encode([(b"content-type", b"application/grpc")]) == b"\x0f\x10\x10application/grpc"


@pytest.mark.parametrize(
    ("block", "error"),
    [
        ("be", hpack.exceptions.InvalidTableIndex),  # dynamic index 62 in an empty table
        ("80", hpack.exceptions.InvalidTableIndex),  # index 0
        ("0f", hpack.exceptions.HPACKDecodingError),  # truncated integer
        ("4005", hpack.exceptions.HPACKDecodingError),  # string longer than the block
        ("3fe21f", hpack.exceptions.InvalidTableSizeError),  # size update to 4097, above the allowed 4096
        ("82" "20", hpack.exceptions.HPACKDecodingError),  # size update after a field
        ("1fffffffffffff01", hpack.exceptions.HPACKDecodingError),  # integer too long
    ],
)
def test_malformed_blocks_raise_hpack_errors(block, error):
    with pytest.raises(error):
        HeaderBlockDecoder().decode(bytes.fromhex(block))


def test_header_list_size_limit():
    decoder = HeaderBlockDecoder(max_header_list_size=100)
    block = HeaderBlockEncoder().encode([(b"x-big", b"v" * 80)])
    with pytest.raises(hpack.exceptions.OversizedHeaderListError):
        decoder.decode(block)


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_hpack_errors(data):
    try:
        HeaderBlockDecoder().decode(data)
    except hpack.exceptions.HPACKError:
        pass


def test_stateless_blocks_are_cached_and_stateful_ones_are_not():
    decoder = HeaderBlockDecoder()
    stateless = HeaderBlockEncoder().encode([(b":status", b"200"), (b"grpc-status", b"0")])
    assert decoder.decode(stateless) == decoder.decode(stateless) == [(b":status", b"200"), (b"grpc-status", b"0")]
    assert BLOCKS.get(stateless) is not None  # kept the second time it was seen
    # A block that inserts into the dynamic table, then one that refers to the entry: never cached,
    # since the second decodes differently after the table changes.
    inserting = hpack.Encoder().encode([(b"x-a", b"1")])
    assert decoder.decode(inserting) == [(b"x-a", b"1")]
    referring = bytes([0x80 | 62])
    assert decoder.decode(referring) == [(b"x-a", b"1")]
    decoder.decode(inserting)
    decoder.decode(referring)
    assert BLOCKS.get(inserting) is None and BLOCKS.get(referring) is None
    decoder.decode(hpack.Encoder().encode([(b"x-b", b"2")]))  # x-b is now index 62
    assert decoder.decode(referring) == [(b"x-b", b"2")]


def test_lowering_the_list_size_limit_applies_to_cached_blocks():
    decoder = HeaderBlockDecoder()
    block = HeaderBlockEncoder().encode([(b"x-big", b"v" * 80)])
    decoder.decode(block)
    decoder.decode(block)
    assert BLOCKS.get(block) is not None
    decoder.max_header_list_size = 100
    with pytest.raises(hpack.exceptions.OversizedHeaderListError):
        decoder.decode(block)


def test_caches_keep_neither_big_nor_one_off_values():
    """The issue's attack: thousands of distinct 48 KB Huffman-coded values must leave nothing behind."""
    caches = (BLOCKS, HUFFMAN, FIELDS, ENCODED)
    before = sum(cache.bytes for cache in caches)
    decoder, encoder = HeaderBlockDecoder(max_header_list_size=1 << 20), HeaderBlockEncoder()
    for index in range(50):
        value = f"{index:05d}".encode() * 9_600  # 48 KB
        block = hpack.Encoder().encode([(b"x-big", value)], huffman=True)
        assert decoder.decode(block) == [(b"x-big", value)]
        encoder.encode([(b"x-big", value)])
        encoder.encode([(b"x-big", value)])  # a second time: still too big to keep
    for index in range(200):  # small but each seen once: not kept either
        decoder.decode(HeaderBlockEncoder().encode([(b"x-once", f"{index}".encode())]))
    assert sum(cache.bytes for cache in caches) - before < 64 * 1024
    assert all(cache.bytes <= cache.max_bytes for cache in caches)


def test_blocks_that_index_into_a_table_of_size_0_are_cached_for_such_tables_only():
    """nginx (and others) keep sending literals *with* incremental indexing once told SETTINGS_HEADER_TABLE_SIZE
    0: nothing is kept, so the block is a pure function of its bytes for a decoder whose table is of size 0,
    and is cached; a decoder with a table must still insert (found by bench --profile: every nginx response
    head was decoded again, 5 insertions per call)."""
    from interlink.wire import hpack as ours

    block = b"\x40\x0ax-indexed1\x01v" + b"\x40\x0ax-indexed2\x01w"
    empty = HeaderBlockDecoder()
    assert empty.decode(b"\x20") == []  # the size update to 0 the encoder sends first
    ours.BLOCKS.clear()
    for _ in range(3):  # kept the second time it is seen, then a hit
        assert empty.decode(block) == [(b"x-indexed1", b"v"), (b"x-indexed2", b"w")]
    assert ours.BLOCKS.get(block) is not None and ours.BLOCKS.get(block)[2] is True
    with_table = HeaderBlockDecoder()
    assert with_table.decode(block) == [(b"x-indexed1", b"v"), (b"x-indexed2", b"w")]
    # the fields were inserted (62 is the newest dynamic entry), not skipped by the cache
    assert with_table.decode(b"\xbe\xbf") == [(b"x-indexed2", b"w"), (b"x-indexed1", b"v")]


def test_a_repeated_header_list_is_encoded_once_and_then_looked_up():
    encoder = HeaderBlockEncoder()
    trailers = [(b"grpc-status", b"0"), (b"grpc-message", b"fine"), (b"x-repeated-list", b"1")]
    ENCODED.clear()
    blocks = [encoder.encode(list(trailers)) for _ in range(3)]  # kept the second time it is seen
    assert ENCODED.get(tuple(trailers)) == blocks[0] == blocks[1] == blocks[2]
    assert hpack.Decoder().decode(blocks[2], raw=True) == trailers
    assert encoder.encode(tuple(trailers)) == blocks[0]  # a tuple is the same list


def test_a_list_with_a_per_call_field_is_looked_up_without_it_or_not_kept():
    encoder = HeaderBlockEncoder()
    ENCODED.clear()
    for _ in range(3):
        last = encoder.encode([*_REQUEST, _TRACE])  # the trace last: the rest is the key, the trace its tail
        middle = encoder.encode([_REQUEST[0], _TRACE, *_REQUEST[1:]])
    assert ENCODED.get(tuple(_REQUEST)) is not None and len(ENCODED) == 1
    assert hpack.Decoder().decode(last, raw=True) == [*_REQUEST, _TRACE]
    assert hpack.Decoder().decode(middle, raw=True) == [_REQUEST[0], _TRACE, *_REQUEST[1:]]


# --- a gateway's traceparent, last in its block ---------------------------------------------------------------

_TRACE = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
_REQUEST = [(b":method", b"POST"), (b":path", b"/svc/m"), (b"content-type", b"application/grpc"), (b"x-k", b"v")]


def _size_zero_decoder() -> HeaderBlockDecoder:
    decoder = HeaderBlockDecoder()
    decoder.max_allowed_table_size = 0
    decoder.decode(b"\x20")  # the size update a peer owes after our SETTINGS_HEADER_TABLE_SIZE 0
    return decoder


def test_the_traceparent_is_encoded_last_without_entering_the_field_cache():
    FIELDS.clear()
    ENCODED.clear()
    block = HeaderBlockEncoder().encode([*_REQUEST, _TRACE])
    assert block.endswith(b"\x00\x0btraceparent\x37" + _TRACE[1])
    assert _TRACE not in FIELDS._entries and len(FIELDS._seen) == len(_REQUEST)  # offered: all but the trace
    assert hpack.Decoder().decode(block, raw=True) == [*_REQUEST, _TRACE]


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=120)), max_size=6),
       st.binary(min_size=55, max_size=55))
def test_a_block_ending_in_a_traceparent_decodes_as_a_whole_block_does(fields, value):
    fields = [(name.lower().replace(b":", b"x"), item) for name, item in fields]
    block = HeaderBlockEncoder().encode([*fields, (b"traceparent", value)])
    whole = hpack.Decoder().decode(block, raw=True)
    for _ in range(2):  # the second time, the part before the traceparent comes from the cache
        assert _size_zero_decoder().decode(block) == whole


def test_bytes_that_only_look_like_a_trailing_traceparent_are_decoded_whole():
    tail = b"\x00\x0btraceparent\x37" + b"z" * 55
    # one literal field whose value holds what looks like a traceparent field at the end of the block
    block = b"\x00\x01k" + bytes([len(tail) + 3]) + b"abc" + tail
    assert _size_zero_decoder().decode(block) == [(b"k", b"abc" + tail)]


def test_a_decoder_with_a_dynamic_table_decodes_the_whole_block():
    decoder = HeaderBlockDecoder()  # table of 4096: the first field may be inserted and read back
    block = b"\x40\x01k\x01v" + b"\xbe" + b"\x00\x0btraceparent\x37" + b"0" * 55
    assert decoder.decode(block) == [(b"k", b"v"), (b"k", b"v"), (b"traceparent", b"0" * 55)]


def test_the_header_list_limit_counts_the_traceparent():
    decoder = _size_zero_decoder()
    block = HeaderBlockEncoder().encode([(b"a", b"b"), _TRACE])
    decoder.max_header_list_size = 34 + 98 - 1
    with pytest.raises(hpack.exceptions.OversizedHeaderListError):
        decoder.decode(block)


def test_several_per_call_fields_at_the_end_are_encoded_after_the_remembered_rest():
    encoder = HeaderBlockEncoder()
    ENCODED.clear()
    for index in range(3):
        trace = f"{index:032x}".encode()
        headers = [*_REQUEST, (b"tri-trace-traceid", trace), (b"sofa-traceid", trace), _TRACE]
        block = encoder.encode(headers)
        assert hpack.Decoder().decode(block, raw=True) == headers
    assert ENCODED.get(tuple(_REQUEST)) is not None and len(ENCODED) == 1
    assert (b"sofa-traceid", trace) not in FIELDS._entries


@given(st.lists(st.tuples(st.sampled_from([b"tri-trace-traceid", b"sofa-traceid", b"traceparent"]),
                          st.binary(max_size=300)), min_size=1, max_size=4))
def test_per_call_fields_of_any_length_at_the_end_decode_as_they_were(tail):
    """The per-call fields' names are encoded once (hpack._PER_CALL_NAMES), their values per call: long ones
    (a length of more than one byte) and a traceparent that is not 55 bytes long included."""
    headers = [*_REQUEST, *tail]
    assert hpack.Decoder().decode(HeaderBlockEncoder().encode(headers), raw=True) == headers
