"""HPACK (RFC 7541) for a relay: a stateless, caching encoder and a decoder that caches Huffman strings.

Why not the `hpack` package on the hot path: measured on a two-gateway gRPC relay, its encoder and decoder
took about 60% of each gateway's CPU, most of it Huffman coding of the same strings call after call, plus a
debug log call per field. Here:

- `HeaderBlockEncoder` never adds to the dynamic table (so it needs no state shared with the peer's
  decoder), never Huffman-codes (a few more bytes on loopback/LAN links, far less CPU), and caches the
  encoding of each (name, value) field and of each repeated header list (one lookup for a relayed
  response head or trailers).
- `HeaderBlockDecoder` is a complete RFC 7541 decoder (dynamic table, size updates, limits) whose Huffman
  decoding is cached per encoded string: callers send the same header values over and over.

The caches are shared by every connection of the process and bounded (interlink.wire.cache): small items
only, kept the second time they are seen, a fixed number of entries and bytes. A caller sending thousands
of distinct 48 KB header values makes the gateway keep none of them (measured before: +518 MiB for good).

They keep the `hpack` package's method names (so the tests compare them with it) and raise its exceptions,
which `interlink.wire.h2conn` turns into COMPRESSION_ERROR (ENHANCE_YOUR_CALM for an oversized list).
"""

from __future__ import annotations

from collections import deque

from hpack.exceptions import HPACKDecodingError, InvalidTableIndex, InvalidTableSizeError, OversizedHeaderListError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable
from mypy_extensions import mypyc_attr

from interlink.wire.cache import BoundedCache
from interlink.wire.tracecontext import PER_CALL_FIELDS, TRACEPARENT, per_call_tail

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
STATIC_COUNT = len(STATIC_TABLE)  # 61
ENTRY_OVERHEAD = 32  # RFC 7541 4.1
DEFAULT_TABLE_SIZE = 4096
_MAX_INTEGER_BYTES = 5  # enough for 2**28; anything longer is an attack or garbage

# Process-wide caches (pure functions of their keys, so any connection may use any entry).
FIELDS: BoundedCache[tuple[bytes, bytes], bytes] = BoundedCache(max_entries=4096, max_bytes=1 << 20, max_item=512)
HUFFMAN: BoundedCache[bytes, bytes] = BoundedCache(max_entries=4096, max_bytes=512 << 10, max_item=256)
# A header list (a tuple of its fields, none of them per call) -> its block as HeaderBlockEncoder writes it: the
# response heads and trailers a gateway relays repeat, and so do requests without a per-call grpc-timeout.
ENCODED: BoundedCache[tuple[tuple[bytes, bytes], ...], bytes] = BoundedCache(
    max_entries=1024, max_bytes=1 << 20, max_item=2048
)
# A stateless block -> (its header list, the list's RFC 7541 size, for each decoder's own limit).
# A block's "inserts" flag: it holds literals with incremental indexing that changed nothing because the table
# was of size 0 (what nginx and others send once told SETTINGS_HEADER_TABLE_SIZE 0): the cached result stands
# for a decoder whose table is of size 0, and only for one.
BLOCKS: BoundedCache[bytes, tuple[tuple[tuple[bytes, bytes], ...], int, bool]] = BoundedCache(
    max_entries=4096, max_bytes=4 << 20, max_item=2048
)

# Fields that differ in every request (PER_CALL_FIELDS) are never offered to FIELDS; those that end a header
# list are encoded after the remembered rest of it (ENCODED). A gateway sends its traceparent last, written as
# below (a literal without indexing, 55-byte value); a decoder whose table is of size 0 looks up the block
# without it, which repeats (HeaderBlockDecoder.decode).
_TRACEPARENT_FIELD = b"\x00" + bytes([len(TRACEPARENT)]) + TRACEPARENT + b"\x37"
_TRACEPARENT_TAIL = len(_TRACEPARENT_FIELD) + 55
_TRACEPARENT_SIZE = len(TRACEPARENT) + 55 + ENTRY_OVERHEAD

_STATIC_FIELD_INDEX = {field: index for index, field in enumerate(STATIC_TABLE, start=1)}
_STATIC_NAME_INDEX: dict[bytes, int] = {}
for _index, (_name, _) in enumerate(STATIC_TABLE, start=1):
    _STATIC_NAME_INDEX.setdefault(_name, _index)


def encode_integer(value: int, prefix_bits: int, first_byte_flags: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte_flags | value,))
    out = bytearray((first_byte_flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_integer(data: bytes, offset: int, prefix_bits: int) -> tuple[int, int]:
    """Return (value, next offset)."""
    limit = (1 << prefix_bits) - 1
    value = data[offset] & limit
    offset += 1
    if value < limit:
        return value, offset
    shift = 0
    for count in range(_MAX_INTEGER_BYTES):
        if offset >= len(data):
            raise HPACKDecodingError("header block ends inside an integer")
        byte = data[offset]
        offset += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset
    raise HPACKDecodingError("integer in header block is too long")


def _encode_string(value: bytes) -> bytes:
    return encode_integer(len(value), 7) + value


def _literal_name(name: bytes) -> bytes:
    """The start of a literal field without indexing (RFC 7541 6.2.2): the name's static index, or the name."""
    name_index = _STATIC_NAME_INDEX.get(name)
    if name_index is not None:
        return encode_integer(name_index, 4)
    return b"\x00" + _encode_string(name)


# The per-call fields' names, encoded once: what is left to encode per call is their values.
_PER_CALL_NAMES = {name: _literal_name(name) for name in PER_CALL_FIELDS}


class HeaderBlockEncoder:
    """Encodes header lists without Huffman and without dynamic-table insertions."""

    def encode(self, headers, huffman: bool = True) -> bytes:  # noqa: ARG002 - hpack's signature
        if not isinstance(headers, (list, tuple)):
            headers = list(headers)
        tail = None
        cut = per_call_tail(headers)
        if cut != len(headers):  # a gateway's trace context, last (see above)
            tail = b""
            for name, value in headers[cut:]:  # (usually the one traceparent: no comprehension frame per call)
                tail += _PER_CALL_NAMES[name] + _encode_string(value.encode() if isinstance(value, str) else value)
            headers = headers[:cut]
        key = tuple(headers)  # fields are (name, value) tuples: a repeated list is one lookup
        block = ENCODED.get(key)
        if block is None:
            block = self._encode_fields(headers)
            if not any(name in PER_CALL_FIELDS for name, _ in headers):
                ENCODED.put(key, block, 3 * len(block) + 64)  # (the key's fields are about the block's size)
        return block if tail is None else block + tail

    def _encode_fields(self, headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> bytes:
        known = FIELDS.get
        parts: list[bytes | None] = [known(field) for field in headers]  # fields are (name, value): the cache's keys
        if None in parts:
            for index, encoded in enumerate(parts):
                if encoded is None:
                    name, value = headers[index]
                    encoded = parts[index] = self._encode_field(name, value)
                    if name not in PER_CALL_FIELDS:
                        FIELDS.put((name, value), encoded, 2 * len(encoded))
        return b"".join(parts)  # type: ignore[arg-type]  # (no None left)

    @staticmethod
    def _encode_field(name: bytes, value: bytes) -> bytes:
        if isinstance(name, str):
            name = name.encode("utf-8")
        if isinstance(value, str):
            value = value.encode("utf-8")
        index = _STATIC_FIELD_INDEX.get((name, value))
        if index is not None:
            return encode_integer(index, 7, 0x80)
        return _literal_name(name) + _encode_string(value)


# Subclassed outside the compiled modules (the tests' and bench.inmemory's decoders that decode nothing).
@mypyc_attr(allow_interpreted_subclasses=True)
class HeaderBlockDecoder:
    """RFC 7541 decoder with a dynamic table; Huffman-coded strings are decoded once and cached, and so are
    whole *stateless* blocks — blocks that neither read nor change the dynamic table, whose decoding is
    therefore a pure function of their bytes. With the header table of size 0 that we advertise, and peers
    that honour it (our own encoder, nghttp2, grpc), every block after the first is stateless; repeated
    blocks (response headers, trailers, requests differing in no value) cost one dict lookup."""

    def __init__(self, max_header_list_size: int = 64 * 1024) -> None:
        self._max_header_list_size = max_header_list_size
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE  # our SETTINGS_HEADER_TABLE_SIZE (0 once acknowledged)
        self._table: deque[tuple[bytes, bytes]] = deque()  # newest first
        self._table_size = 0
        self._table_limit = DEFAULT_TABLE_SIZE  # current maximum, changed by size updates
        self._table_touches = 0  # reads and writes of the dynamic table, to tell stateless blocks
        self._empty_inserts = 0  # insertions into a table of size 0 (which keeps nothing)

    @property
    def header_table_size(self) -> int:
        return self._table_limit

    @property
    def max_header_list_size(self) -> int:
        return self._max_header_list_size

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._max_header_list_size = value

    def decode(self, data: bytes, raw: bool = True) -> list[tuple[bytes, bytes]]:  # noqa: ARG002
        data = bytes(data)
        cached = BLOCKS.get(data)
        if cached is not None and (not cached[2] or not self._table_limit):
            kept, list_size, _ = cached
            if list_size > self._max_header_list_size:
                raise OversizedHeaderListError(f"header list exceeds {self._max_header_list_size} bytes")
            return list(kept)
        cut = len(data) - _TRACEPARENT_TAIL
        if cut > 0 and not self._table_limit and data.startswith(_TRACEPARENT_FIELD, cut):
            # A gateway's request: the fields before its traceparent repeat. When they decode on their own they
            # end where a field ends, so the block is them plus that last field (else: decoded whole, below).
            try:
                headers, list_size = self._decode_cached(data[:cut])
            except HPACKDecodingError:
                pass
            else:
                list_size += _TRACEPARENT_SIZE
                if list_size > self._max_header_list_size:
                    raise OversizedHeaderListError(f"header list exceeds {self._max_header_list_size} bytes")
                headers.append((TRACEPARENT, data[cut + len(_TRACEPARENT_FIELD):]))
                return headers
        return self._decode_cached(data)[0]

    def _decode_cached(self, data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
        """Decode `data` (remembered when it is stateless); the header list and its size."""
        cached = BLOCKS.get(data)
        if cached is not None and (not cached[2] or not self._table_limit):
            kept, list_size, _ = cached
            if list_size > self._max_header_list_size:
                raise OversizedHeaderListError(f"header list exceeds {self._max_header_list_size} bytes")
            return list(kept), list_size
        touches, empty_inserts = self._table_touches, self._empty_inserts
        headers, list_size = self._decode(data)
        if self._table_touches == touches:
            inserts = self._empty_inserts != empty_inserts
            BLOCKS.put(data, (tuple(headers), list_size, inserts), 2 * len(data) + 64 * len(headers))
        return headers, list_size

    def _decode(self, data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
        headers: list[tuple[bytes, bytes]] = []
        list_size = 0
        offset, end = 0, len(data)
        while offset < end:
            byte = data[offset]
            if byte & 0x80:  # indexed field
                index, offset = decode_integer(data, offset, 7)
                field = self._lookup(index)
            elif byte & 0x40:  # literal with incremental indexing
                field, offset = self._literal(data, offset, 6)
                self._insert(field)
            elif byte & 0x20:  # dynamic table size update
                if headers:
                    raise HPACKDecodingError("dynamic table size update after a header field")
                size, offset = decode_integer(data, offset, 5)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError(
                        f"table size update to {size} exceeds the allowed {self.max_allowed_table_size}"
                    )
                self._table_limit = size
                self._table_touches += 1
                self._evict()
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                field, offset = self._literal(data, offset, 4)
            list_size += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if list_size > self._max_header_list_size:
                raise OversizedHeaderListError(f"header list exceeds {self._max_header_list_size} bytes")
            headers.append(field)
        return headers, list_size

    def _lookup(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= STATIC_COUNT:
            return STATIC_TABLE[index - 1]
        self._table_touches += 1
        position = index - STATIC_COUNT - 1
        if index == 0 or position >= len(self._table):
            raise InvalidTableIndex(f"header table index {index} does not exist")
        return self._table[position]

    def _literal(self, data: bytes, offset: int, prefix_bits: int) -> tuple[tuple[bytes, bytes], int]:
        index, offset = decode_integer(data, offset, prefix_bits)
        if index:
            name = self._lookup(index)[0]
        else:
            name, offset = self._string(data, offset)
        value, offset = self._string(data, offset)
        return (name, value), offset

    def _string(self, data: bytes, offset: int) -> tuple[bytes, int]:
        if offset >= len(data):
            raise HPACKDecodingError("header block ends before a string")
        huffman = data[offset] & 0x80
        length, offset = decode_integer(data, offset, 7)
        end = offset + length
        if end > len(data):
            raise HPACKDecodingError("header string runs past the end of the block")
        raw = data[offset:end]
        if not huffman:
            return raw, end
        decoded = HUFFMAN.get(raw)
        if decoded is None:
            decoded = decode_huffman(raw)
            HUFFMAN.put(raw, decoded, len(raw) + len(decoded))
        return decoded, end

    def _insert(self, field: tuple[bytes, bytes]) -> None:
        if not self._table_limit:  # a table of size 0 is empty and stays so: nothing changes
            self._empty_inserts += 1
            return
        self._table_touches += 1
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self._table_limit:  # RFC 7541 4.4: an oversized entry empties the table
            self._table.clear()
            self._table_size = 0
            return
        self._table.appendleft(field)
        self._table_size += size
        self._evict()

    def _evict(self) -> None:
        while self._table_size > self._table_limit:
            name, value = self._table.pop()
            self._table_size -= len(name) + len(value) + ENTRY_OVERHEAD
