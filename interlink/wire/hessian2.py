"""Hessian in the SOFA/Caucho 3.x *draft* dialect (Bolt codec 1 bodies), sans-I/O.

SOFARPC 5 (sofa-hessian 3.x) and sofa-rpc-node (sofa-hessian-node v3, hessian.js-1 `EncoderV2`) write the
Hessian 2.0 draft grammar of Caucho Hessian 3.1, not the final Hessian 2.0 spec: class definitions are
`'O' int(len) chars int(n) names`, instances `'o' int(def)`, lists/maps end with `'z'`, strings chunk with
`'s'`, back-references are `0x4a`/`0x4b`/`'R'`. See ../shared/PROTOCOLS.md 1.10.1 (left column) for the
table; byte values here follow `Hessian2Input`/`Hessian2Output` of sofastack/sofa-hessian branch 3.x.

- `SofaHessianReader` decodes one value at a time (`read_value()`), keeps the stream state a Hessian 3.x
  reader keeps (class definitions, type names, back-reference table) and exposes `offset`, so a caller can
  stop after the value it needs (the `SofaRequest` head before the call arguments). Malformed or truncated
  input raises `HessianError` and nothing else.
- `SofaHessianWriter` writes the values a gateway needs to build responses, byte for byte as the Java
  writer does (strings as CESU-8 in chunks of at most 32768 UTF-16 units, one class definition per class
  name per stream, back-references for a list/map/object written twice).

Python values: None, bool, int (Hessian int and long), float (double), str, bytes (binary), list (an
untyped list), `TypedList` (a list subclass that keeps the list's type name, e.g. "[java.lang.String"),
dict (an untyped map), `TypedMap` (a dict subclass with the map's type name), `HessianObject` (class
instance), `HessianDate` (java.util.Date). Reading and writing back the values of a stream reproduces its
bytes for everything the writer supports (see tests/wire/test_hessian2.py).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = [
    "MAX_DEPTH",
    "HessianDate",
    "HessianError",
    "HessianObject",
    "SofaHessianReader",
    "SofaHessianWriter",
    "TypedList",
    "TypedMap",
]

MAX_DEPTH = 64  # nested lists/maps/objects a reader accepts

_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_CHUNK = 0x8000  # max UTF-16 units (or bytes) per non-final chunk written by Java and node

_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_BMP = re.compile("[\U00010000-\U0010ffff]")


class HessianError(Exception):
    """A Hessian stream that is malformed, truncated or beyond our limits."""


@dataclass(slots=True)
class HessianObject:
    """An instance of a class: its Java class name and its fields in the stream's declared order."""

    class_name: str
    fields: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HessianDate:
    """A java.util.Date: milliseconds since the epoch (UTC). Any long is valid, hence no datetime here."""

    millis: int

    def to_datetime(self) -> datetime:
        """The date as an aware UTC datetime; OverflowError outside years 1..9999."""
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self.millis)


class TypedList(list):  # type: ignore[type-arg]
    """A list with its Hessian type name ("[java.lang.String", "[int", "java.util.LinkedList", ...).
    Compares equal to a plain list with the same items."""

    __slots__ = ("type_name",)

    def __init__(self, items: Iterable[object] = (), type_name: str = "") -> None:
        super().__init__(items)
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"TypedList({list.__repr__(self)}, type_name={self.type_name!r})"


class TypedMap(dict):  # type: ignore[type-arg]
    """A map with its Hessian type name ("java.util.TreeMap", ...). Compares equal to a plain dict."""

    __slots__ = ("type_name",)

    def __init__(self, items: Mapping[object, object] | Iterable[tuple[object, object]] = (), type_name: str = ""):
        super().__init__(items)
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"TypedMap({dict.__repr__(self)}, type_name={self.type_name!r})"


# --- reader ------------------------------------------------------------------------------------------


def _tag_name(tag: int) -> str:
    return f"0x{tag:02x}" + (f" {chr(tag)!r}" if 0x20 < tag < 0x7F else "")


class SofaHessianReader:
    """Reads values of one Hessian 3.x draft stream from `data`, starting at `offset`.

    After each `read_value()`, `offset` is the position just after that value. `class_defs`, `types` and
    `refs` are the stream state (shared by all values of one stream, as in a SOFARPC request body). After a
    `HessianError` the reader's state is unspecified: do not read further values from it.
    """

    __slots__ = ("data", "offset", "class_defs", "types", "refs", "max_depth")

    def __init__(self, data: bytes | bytearray | memoryview, offset: int = 0, *, max_depth: int = MAX_DEPTH):
        self.data = bytes(data)
        if not 0 <= offset <= len(self.data):
            raise HessianError(f"offset {offset} is outside the {len(self.data)} bytes of data")
        self.offset = offset
        self.class_defs: list[tuple[str, tuple[str, ...]]] = []
        self.types: list[str] = []
        self.refs: list[object] = []
        self.max_depth = max_depth

    @property
    def at_end(self) -> bool:
        return self.offset >= len(self.data)

    def read_value(self) -> object:
        """The next value of the stream (class definitions before it are consumed and remembered)."""
        try:
            return self._value(0)
        except (IndexError, struct.error, UnicodeError, OverflowError, RecursionError) as exc:  # safety net
            raise HessianError(f"malformed Hessian data near offset {self.offset}: {exc}") from None

    def read_object_start(self) -> tuple[HessianObject, tuple[str, ...]]:
        """Reads up to the start of an object instance's field values (class definitions and `'o' ref`).

        Returns the instance, already registered for back-references and with no fields yet, and the field
        names in stream order; the caller reads the field values with `read_value()` and may stop early.
        """
        try:
            while True:
                tag = self._byte("an object")
                if tag == 0x4F:  # 'O'
                    self._class_definition()
                    continue
                if tag != 0x6F:  # 'o'
                    raise HessianError(f"expected an object instance ('o'), found {_tag_name(tag)}")
                name, fields = self._class_def_at(self._int())
                instance = HessianObject(name, {})
                self.refs.append(instance)
                return instance, fields
        except (IndexError, struct.error, UnicodeError, OverflowError, RecursionError) as exc:
            raise HessianError(f"malformed Hessian data near offset {self.offset}: {exc}") from None

    # --- primitives (all bounds-checked) ---

    def _truncated(self, what: str) -> HessianError:
        return HessianError(f"truncated Hessian data: {what} at offset {self.offset} runs past the end")

    def _byte(self, what: str) -> int:
        pos = self.offset
        if pos >= len(self.data):
            raise self._truncated(what)
        self.offset = pos + 1
        return self.data[pos]

    def _take(self, n: int, what: str) -> bytes:
        pos = self.offset
        end = pos + n
        if end > len(self.data):
            raise self._truncated(what)
        self.offset = end
        return self.data[pos:end]

    def _unpack(self, st: struct.Struct, what: str) -> int | float:
        pos = self.offset
        end = pos + st.size
        if end > len(self.data):
            raise self._truncated(what)
        self.offset = end
        return st.unpack_from(self.data, pos)[0]

    def _int(self) -> int:
        """A structural int (definition lengths, references): the Hessian int encodings only."""
        tag = self._byte("an int")
        if 0x80 <= tag <= 0xBF:
            return tag - 0x90
        if 0xC0 <= tag <= 0xCF:
            return ((tag - 0xC8) << 8) + self._byte("an int")
        if 0xD0 <= tag <= 0xD7:
            return ((tag - 0xD4) << 16) + self._unpack(_U16, "an int")  # type: ignore[operator]
        if tag == 0x49:  # 'I'
            return self._unpack(_I32, "an int")  # type: ignore[return-value]
        raise HessianError(f"expected an int at offset {self.offset - 1}, found {_tag_name(tag)}")

    def _count(self, n: int, what: str) -> int:
        """A count of items that each take at least one byte: bounded by the bytes left."""
        if n < 0 or n > len(self.data) - self.offset:
            raise HessianError(f"{what} {n} at offset {self.offset} is negative or exceeds the data left")
        return n

    # --- strings ---

    def _utf8_end(self, units: int) -> int:
        """End offset of `units` UTF-16 code units of (CESU-8 or UTF-8) characters starting at `offset`."""
        data, pos = self.data, self.offset
        end = pos + units
        if end > len(data):
            raise self._truncated("a string")
        if data[pos:end].isascii():
            return end
        size = len(data)
        i = pos
        while units > 0:
            if i >= size:
                raise self._truncated("a string")
            b = data[i]
            if b < 0x80:
                i += 1
            elif b < 0xC0:
                raise HessianError(f"bad UTF-8 in a string at offset {i}")
            elif b < 0xE0:
                i += 2
            elif b < 0xF0:
                i += 3  # BMP character, or one half of a surrogate pair as Java writes it (CESU-8)
            elif b < 0xF5:  # 4-byte UTF-8: one non-BMP character = two UTF-16 units
                if units < 2:
                    raise HessianError(f"a 4-byte UTF-8 character at offset {i} straddles the string's length")
                i += 4
                units -= 1
            else:
                raise HessianError(f"bad UTF-8 in a string at offset {i}")
            units -= 1
        if i > size:
            raise self._truncated("a string")
        return i

    def _string_body(self, units: int, final: bool) -> str:
        """The characters of a string whose first chunk header (length `units`, final or not) was read."""
        if final:  # fast path: one ASCII chunk
            pos = self.offset
            end = pos + units
            raw = self.data[pos:end]
            if end <= len(self.data) and raw.isascii():
                self.offset = end
                return raw.decode("ascii")
        parts = []
        while True:
            end = self._utf8_end(units)
            parts.append(self.data[self.offset : end])
            self.offset = end
            if final:
                break
            tag = self._byte("a string chunk")
            if tag in (0x73, 0x78):  # 's', 'x' (Java's reader accepts xml chunks as string chunks)
                final = False
                units = self._unpack(_U16, "a string chunk")  # type: ignore[assignment]
            elif tag in (0x53, 0x58):  # 'S', 'X'
                final = True
                units = self._unpack(_U16, "a string chunk")  # type: ignore[assignment]
            elif tag <= 0x1F:
                final = True
                units = tag
            else:
                raise HessianError(f"expected a string chunk at offset {self.offset - 1}, found {_tag_name(tag)}")
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        if raw.isascii():
            return raw.decode("ascii")
        try:
            text = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise HessianError(f"bad UTF-8 in a string: {exc.reason}") from None
        if _SURROGATE.search(text):
            # Java and node write a non-BMP character as two 3-byte surrogates: join the pairs into the real
            # character; a lone surrogate (legal in a Java String, not in UTF-8) becomes U+FFFD.
            text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return text

    def _string(self, what: str) -> str:
        """A value that must be a string (class definition field names)."""
        tag = self._byte(what)
        if tag <= 0x1F:
            return self._string_body(tag, True)
        if tag in (0x53, 0x73):
            return self._string_body(self._unpack(_U16, what), tag == 0x53)  # type: ignore[arg-type]
        raise HessianError(f"expected a string for {what} at offset {self.offset - 1}, found {_tag_name(tag)}")

    # --- structure ---

    def _class_definition(self) -> None:
        """After 'O': int(name length in UTF-16 units), the name's characters, int(n), n field names."""
        units = self._int()
        if units < 0:
            raise HessianError(f"negative class name length {units}")
        name = self._string_body(units, True)
        count = self._count(self._int(), "field count")
        fields = tuple(self._string("a field name") for _ in range(count))
        self.class_defs.append((name, fields))

    def _class_def_at(self, index: int) -> tuple[str, tuple[str, ...]]:
        if not 0 <= index < len(self.class_defs):
            raise HessianError(f"object refers to class definition #{index}; {len(self.class_defs)} defined")
        return self.class_defs[index]

    def _type_ref(self, index: int) -> str:
        if not 0 <= index < len(self.types):
            raise HessianError(f"type reference #{index}; {len(self.types)} types defined")
        return self.types[index]

    def _type(self) -> str | None:
        """The optional type after 'V' or 'M': 't' uint16 + chars (new type), 0x75 or 'T' int (type ref)."""
        data, pos = self.data, self.offset
        if pos >= len(data):
            return None
        tag = data[pos]
        if tag == 0x74:  # 't'
            self.offset = pos + 1
            name = self._string_body(self._unpack(_U16, "a type"), True)  # type: ignore[arg-type]
            self.types.append(name)
            return name
        if tag in (0x75, 0x54):  # TYPE_REF, 'T'
            self.offset = pos + 1
            return self._type_ref(self._int())
        return None

    def _at_end_marker(self) -> bool:
        data, pos = self.data, self.offset
        if pos >= len(data):
            raise self._truncated("a list or map without its end marker 'z'")
        if data[pos] == 0x7A:  # 'z'
            self.offset = pos + 1
            return True
        return False

    def _deeper(self, depth: int) -> int:
        if depth >= self.max_depth:
            raise HessianError(f"values nested deeper than {self.max_depth} levels")
        return depth + 1

    def _value(self, depth: int) -> object:
        tag = self._byte("a value")
        while tag == 0x4F:  # 'O': class definition, then the value that follows it
            self._class_definition()
            tag = self._byte("a value after a class definition")
        return _HANDLERS[tag](self, tag, depth)

    # --- handlers, one per leading byte ---

    def _h_short_string(self, tag: int, depth: int) -> object:
        return self._string_body(tag, True)

    def _h_string(self, tag: int, depth: int) -> object:
        return self._string_body(self._unpack(_U16, "a string"), tag == 0x53)  # type: ignore[arg-type]

    def _binary_body(self, length: int, final: bool) -> bytes:
        parts = []
        while True:
            parts.append(self._take(length, "binary data"))
            if final:
                break
            tag = self._byte("a binary chunk")
            if tag in (0x62, 0x42):  # 'b', 'B'
                final = tag == 0x42
                length = self._unpack(_U16, "a binary chunk")  # type: ignore[assignment]
            elif 0x20 <= tag <= 0x2F:
                final = True
                length = tag - 0x20
            else:
                raise HessianError(f"expected a binary chunk at offset {self.offset - 1}, found {_tag_name(tag)}")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _h_short_binary(self, tag: int, depth: int) -> object:
        return self._binary_body(tag - 0x20, True)

    def _h_binary(self, tag: int, depth: int) -> object:
        return self._binary_body(self._unpack(_U16, "binary data"), tag == 0x42)  # type: ignore[arg-type]

    def _h_null(self, tag: int, depth: int) -> object:
        return None

    def _h_true(self, tag: int, depth: int) -> object:
        return True

    def _h_false(self, tag: int, depth: int) -> object:
        return False

    def _h_int_direct(self, tag: int, depth: int) -> object:
        return tag - 0x90

    def _h_int_byte(self, tag: int, depth: int) -> object:
        return ((tag - 0xC8) << 8) + self._byte("an int")

    def _h_int_short(self, tag: int, depth: int) -> object:
        return ((tag - 0xD4) << 16) + self._unpack(_U16, "an int")  # type: ignore[operator]

    def _h_int(self, tag: int, depth: int) -> object:
        return self._unpack(_I32, "an int")

    def _h_long_direct(self, tag: int, depth: int) -> object:
        return tag - 0xE0

    def _h_long_byte(self, tag: int, depth: int) -> object:
        return ((tag - 0xF8) << 8) + self._byte("a long")

    def _h_long_short(self, tag: int, depth: int) -> object:
        return ((tag - 0x3C) << 16) + self._unpack(_U16, "a long")  # type: ignore[operator]

    def _h_long_int(self, tag: int, depth: int) -> object:
        return self._unpack(_I32, "a long")

    def _h_long(self, tag: int, depth: int) -> object:
        return self._unpack(_I64, "a long")

    def _h_double_zero(self, tag: int, depth: int) -> object:
        return 0.0

    def _h_double_one(self, tag: int, depth: int) -> object:
        return 1.0

    def _h_double_byte(self, tag: int, depth: int) -> object:
        b = self._byte("a double")
        return float(b - 256 if b > 127 else b)

    def _h_double_short(self, tag: int, depth: int) -> object:
        return float(self._unpack(_I16, "a double"))

    def _h_double_float(self, tag: int, depth: int) -> object:
        return self._unpack(_F32, "a double")

    def _h_double(self, tag: int, depth: int) -> object:
        return self._unpack(_F64, "a double")

    def _h_date(self, tag: int, depth: int) -> object:
        return HessianDate(self._unpack(_I64, "a date"))  # type: ignore[arg-type]

    def _h_list(self, tag: int, depth: int) -> object:
        """'V' [type] ['n' byte | 'l' int32] items 'z' (the declared length is not trusted)."""
        depth = self._deeper(depth)
        type_name = self._type()
        data, pos = self.data, self.offset
        if pos < len(data):
            if data[pos] == 0x6E:  # 'n'
                self.offset = pos + 1
                self._byte("a list length")
            elif data[pos] == 0x6C:  # 'l'
                self.offset = pos + 1
                self._unpack(_I32, "a list length")
        items: list[object] = TypedList((), type_name) if type_name else []
        self.refs.append(items)
        while not self._at_end_marker():
            items.append(self._value(depth))
        return items

    def _h_fixed_list(self, tag: int, depth: int) -> object:
        """'v' int(type ref) int(length) items, no end marker."""
        depth = self._deeper(depth)
        type_name = self._type_ref(self._int())
        count = self._count(self._int(), "list length")
        items: list[object] = TypedList((), type_name)
        self.refs.append(items)
        for _ in range(count):
            items.append(self._value(depth))
        return items

    def _h_map(self, tag: int, depth: int) -> object:
        """'M' [type] (key value)* 'z'."""
        depth = self._deeper(depth)
        type_name = self._type()
        result: dict[object, object] = TypedMap((), type_name) if type_name else {}
        self.refs.append(result)
        while not self._at_end_marker():
            key = self._value(depth)
            value = self._value(depth)
            try:
                result[key] = value
            except TypeError:
                raise HessianError(f"map key of type {type(key).__name__} is not supported") from None
        return result

    def _h_instance(self, tag: int, depth: int) -> object:
        """'o' int(class definition index), then one value per field of that definition."""
        depth = self._deeper(depth)
        name, fields = self._class_def_at(self._int())
        instance = HessianObject(name, {})
        self.refs.append(instance)
        values = instance.fields
        for field_name in fields:
            values[field_name] = self._value(depth)
        return instance

    def _ref(self, index: int) -> object:
        if not 0 <= index < len(self.refs):
            raise HessianError(f"back-reference #{index}; {len(self.refs)} values can be referred to")
        return self.refs[index]

    def _h_ref_byte(self, tag: int, depth: int) -> object:
        return self._ref(self._byte("a reference"))

    def _h_ref_short(self, tag: int, depth: int) -> object:
        return self._ref(self._unpack(_U16, "a reference"))  # type: ignore[arg-type]

    def _h_ref(self, tag: int, depth: int) -> object:
        return self._ref(self._unpack(_I32, "a reference"))  # type: ignore[arg-type]

    def _h_unsupported(self, tag: int, depth: int) -> object:
        raise HessianError(f"unsupported Hessian value {_tag_name(tag)} at offset {self.offset - 1}")

    def _h_unknown(self, tag: int, depth: int) -> object:
        raise HessianError(f"unknown Hessian code {_tag_name(tag)} at offset {self.offset - 1}")


def _build_handlers() -> list:
    r = SofaHessianReader
    table = [r._h_unknown] * 256
    for tag in range(0x00, 0x20):
        table[tag] = r._h_short_string
    for tag in range(0x20, 0x30):
        table[tag] = r._h_short_binary
    for tag in range(0x38, 0x40):
        table[tag] = r._h_long_short
    for tag in range(0x80, 0xC0):
        table[tag] = r._h_int_direct
    for tag in range(0xC0, 0xD0):
        table[tag] = r._h_int_byte
    for tag in range(0xD0, 0xD8):
        table[tag] = r._h_int_short
    for tag in range(0xD8, 0xF0):
        table[tag] = r._h_long_direct
    for tag in range(0xF0, 0x100):
        table[tag] = r._h_long_byte
    named = {
        b"S": r._h_string, b"s": r._h_string,
        b"B": r._h_binary, b"b": r._h_binary,
        b"N": r._h_null, b"T": r._h_true, b"F": r._h_false,
        b"I": r._h_int, b"L": r._h_long, b"\x77": r._h_long_int,
        b"D": r._h_double, b"\x67": r._h_double_zero, b"\x68": r._h_double_one,
        b"\x69": r._h_double_byte, b"\x6a": r._h_double_short, b"\x6b": r._h_double_float,
        b"d": r._h_date,
        b"V": r._h_list, b"v": r._h_fixed_list, b"M": r._h_map, b"o": r._h_instance,
        b"R": r._h_ref, b"\x4a": r._h_ref_byte, b"\x4b": r._h_ref_short,
        # xml, remote: Java's 3.x reader has no use for them either (UnsupportedOperationException, proxies)
        b"x": r._h_unsupported, b"X": r._h_unsupported, b"r": r._h_unsupported,
    }  # fmt: skip
    for code, handler in named.items():
        table[code[0]] = handler
    return table


_HANDLERS = _build_handlers()


# --- writer ------------------------------------------------------------------------------------------


def _utf16_units(text: str) -> str:
    """`text` with each non-BMP character split into its two surrogates: one code point per UTF-16 unit."""
    if text.isascii() or not _NON_BMP.search(text):
        return text

    def split(match: re.Match[str]) -> str:
        v = ord(match.group()) - 0x10000
        return chr(0xD800 + (v >> 10)) + chr(0xDC00 + (v & 0x3FF))

    return _NON_BMP.sub(split, text)


def _cesu8(units: str) -> bytes:
    """UTF-16 units (from `_utf16_units`) as Java's `printString` writes them: 1-3 bytes per unit."""
    return units.encode("utf-8", "surrogatepass")


def _java_int_cast(value: float) -> int:
    """Java's `(int) value`: truncation towards zero, saturating, NaN -> 0."""
    if math.isnan(value):
        return 0
    if math.isinf(value):
        return _INT32_MAX if value > 0 else _INT32_MIN
    return max(_INT32_MIN, min(_INT32_MAX, int(value)))


class SofaHessianWriter:
    """Writes one Hessian 3.x draft stream; `getvalue()` returns the bytes written so far.

    Byte for byte what sofa-hessian 3.x `Hessian2Output` writes for the same Java values. `write_value()`
    maps Python values: int -> int if it fits 32 bits, else long; list/tuple -> untyped list, `TypedList`
    -> typed list; dict -> untyped map, `TypedMap` -> typed map; `HessianObject` -> object. A list, dict
    or `HessianObject` written twice (the same Python object) becomes a back-reference, as in Java.
    """

    __slots__ = ("_out", "_class_defs", "_types", "_refs")

    def __init__(self) -> None:
        self._out = bytearray()
        self._class_defs: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._types: dict[str, int] = {}
        self._refs: dict[int, tuple[int, object]] = {}  # id -> (ref index, the object, kept alive)

    def getvalue(self) -> bytes:
        return bytes(self._out)

    # --- scalars ---

    def write_null(self) -> None:
        self._out.append(0x4E)

    def write_bool(self, value: bool) -> None:
        self._out.append(0x54 if value else 0x46)

    def write_int(self, value: int) -> None:
        """A Java int (32 bits)."""
        out = self._out
        if -0x10 <= value <= 0x2F:
            out.append(value + 0x90)
        elif -0x800 <= value <= 0x7FF:
            out += bytes(((value >> 8) + 0xC8, value & 0xFF))
        elif -0x40000 <= value <= 0x3FFFF:
            out += bytes(((value >> 16) + 0xD4, (value >> 8) & 0xFF, value & 0xFF))
        elif _INT32_MIN <= value <= _INT32_MAX:
            out.append(0x49)
            out += _I32.pack(value)
        else:
            raise ValueError(f"{value} does not fit a Hessian int (32 bits)")

    def write_long(self, value: int) -> None:
        """A Java long (64 bits)."""
        out = self._out
        if -0x08 <= value <= 0x0F:
            out.append(value + 0xE0)
        elif -0x800 <= value <= 0x7FF:
            out += bytes(((value >> 8) + 0xF8, value & 0xFF))
        elif -0x40000 <= value <= 0x3FFFF:
            out += bytes(((value >> 16) + 0x3C, (value >> 8) & 0xFF, value & 0xFF))
        elif _INT32_MIN <= value <= _INT32_MAX:
            out.append(0x77)
            out += _I32.pack(value)
        elif _INT64_MIN <= value <= _INT64_MAX:
            out.append(0x4C)
            out += _I64.pack(value)
        else:
            raise ValueError(f"{value} does not fit a Hessian long (64 bits)")

    def write_double(self, value: float) -> None:
        """A Java double, in the shortest form Java's `writeDouble` picks (note: -0.0 is written as 0.0)."""
        out = self._out
        value = float(value)
        as_int = _java_int_cast(value)
        if as_int == value:
            if as_int == 0:
                out.append(0x67)
                return
            if as_int == 1:
                out.append(0x68)
                return
            if -0x80 <= as_int < 0x80:
                out += bytes((0x69, as_int & 0xFF))
                return
            if -0x8000 <= as_int < 0x8000:
                out.append(0x6A)
                out += _I16.pack(as_int)
                return
        if not math.isnan(value):
            try:
                as_float = _F32.pack(value)
            except OverflowError:
                as_float = None
            if as_float is not None and _F32.unpack(as_float)[0] == value:
                out.append(0x6B)
                out += as_float
                return
        out.append(0x44)
        out += b"\x7f\xf8\x00\x00\x00\x00\x00\x00" if math.isnan(value) else _F64.pack(value)

    def write_string(self, value: str | None) -> None:
        """A string: 's' chunks of 32768 UTF-16 units (32767 if that would split a surrogate pair), then
        a final chunk, short form (0x00-0x1f) up to 31 units, else 'S' uint16 length; CESU-8 bytes."""
        if value is None:
            self.write_null()
            return
        out = self._out
        units = _utf16_units(value)
        length = len(units)
        start = 0
        while length > _CHUNK:
            sublen = _CHUNK
            if 0xD800 <= ord(units[start + sublen - 1]) <= 0xDBFF:
                sublen -= 1
            out.append(0x73)
            out += _U16.pack(sublen)
            out += _cesu8(units[start : start + sublen])
            length -= sublen
            start += sublen
        if length <= 0x1F:
            out.append(length)
        else:
            out.append(0x53)
            out += _U16.pack(length)
        out += _cesu8(units[start:] if start else units)

    def write_bytes(self, value: bytes | bytearray | memoryview | None) -> None:
        """Binary data: 'b' chunks of 32768 bytes, then 0x20+len (< 16 bytes) or 'B' uint16 length."""
        if value is None:
            self.write_null()
            return
        data = bytes(value)
        out = self._out
        start, length = 0, len(data)
        while length > _CHUNK:
            out.append(0x62)
            out += _U16.pack(_CHUNK)
            out += data[start : start + _CHUNK]
            start += _CHUNK
            length -= _CHUNK
        if length < 0x10:
            out.append(0x20 + length)
        else:
            out.append(0x42)
            out += _U16.pack(length)
        out += data[start:]

    def write_date(self, value: HessianDate | int) -> None:
        """A java.util.Date: 'd' + int64 milliseconds since the epoch."""
        millis = value.millis if isinstance(value, HessianDate) else value
        self._out.append(0x64)
        self._out += _I64.pack(millis)

    # --- structures ---

    def _back_reference(self, value: object) -> bool:
        """Java's `addRef`: True (and a reference written) if this very object was written before."""
        seen = self._refs.get(id(value))
        if seen is not None:
            index = seen[0]
            out = self._out
            if index < 0x100:
                out += bytes((0x4A, index))
            elif index < 0x10000:
                out.append(0x4B)
                out += _U16.pack(index)
            else:
                out.append(0x52)
                out += _I32.pack(index)
            return True
        self._refs[id(value)] = (len(self._refs), value)
        return False

    def _type_name(self, type_name: str | None) -> None:
        """Java's `writeType`: nothing, 't' uint16 + chars the first time, 0x75 int(ref) afterwards."""
        if not type_name:
            return
        ref = self._types.get(type_name)
        if ref is not None:
            self._out.append(0x75)
            self.write_int(ref)
            return
        self._types[type_name] = len(self._types)
        units = _utf16_units(type_name)
        self._out.append(0x74)
        self._out += _U16.pack(len(units))
        self._out += _cesu8(units)

    def write_list(self, items: Sequence[object], type_name: str | None = None) -> None:
        """A list, e.g. `write_list(sigs, "[java.lang.String")` (Java's String[] says "[string").

        First list of a type: 'V' type 'n'/'l' length items 'z'; a later list of an already written type:
        'v' int(type ref) int(length) items, as Java's `writeListBegin` does.
        """
        if self._back_reference(items):
            return
        out = self._out
        length = len(items)
        ref = self._types.get(type_name) if type_name else None
        if ref is not None:
            out.append(0x76)
            self.write_int(ref)
            self.write_int(length)
            for item in items:
                self.write_value(item)
            return
        out.append(0x56)
        self._type_name(type_name)
        if length < 0x100:
            out += bytes((0x6E, length))
        else:
            out.append(0x6C)
            out += _I32.pack(length)
        for item in items:
            self.write_value(item)
        out.append(0x7A)

    def write_map(self, mapping: Mapping[object, object], type_name: str | None = None) -> None:
        """A map: 'M' [type] (key value)* 'z', in the mapping's iteration order (HashMap: no type)."""
        if self._back_reference(mapping):
            return
        if not type_name and mapping:
            first = next(iter(mapping))
            if first is True:  # 'M' 'T' reads as a type reference in every 3.x reader
                raise ValueError("an untyped map cannot start with the key True in Hessian 3.x")
        self._out.append(0x4D)
        self._type_name(type_name)
        for key, value in mapping.items():
            self.write_value(key)
            self.write_value(value)
        self._out.append(0x7A)

    def write_object(self, value: HessianObject) -> None:
        """An object: the class definition the first time its class is written ('O' int(len) chars
        int(n) field names), then 'o' int(definition index) and the field values in definition order."""
        if self._back_reference(value):
            return
        name = value.class_name
        names = tuple(value.fields)
        known = self._class_defs.get(name)
        out = self._out
        if known is None:
            index = len(self._class_defs)
            self._class_defs[name] = (index, names)
            units = _utf16_units(name)
            out.append(0x4F)
            self.write_int(len(units))
            out += _cesu8(units)
            self.write_int(len(names))
            for field_name in names:
                self.write_string(field_name)
        else:
            index, defined = known
            if defined != names:
                raise ValueError(f"class {name} was defined with fields {defined}, not {names}")
        out.append(0x6F)
        self.write_int(index)
        for field_value in value.fields.values():
            self.write_value(field_value)

    def write_value(self, value: object) -> None:
        if value is None:
            self.write_null()
        elif isinstance(value, bool):
            self.write_bool(value)
        elif isinstance(value, int):
            if _INT32_MIN <= value <= _INT32_MAX:
                self.write_int(value)
            else:
                self.write_long(value)
        elif isinstance(value, float):
            self.write_double(value)
        elif isinstance(value, str):
            self.write_string(value)
        elif isinstance(value, bytes | bytearray | memoryview):
            self.write_bytes(value)
        elif isinstance(value, HessianObject):
            self.write_object(value)
        elif isinstance(value, HessianDate):
            self.write_date(value)
        elif isinstance(value, TypedList):
            self.write_list(value, value.type_name)
        elif isinstance(value, list | tuple):
            self.write_list(value)
        elif isinstance(value, TypedMap):
            self.write_map(value, value.type_name)
        elif isinstance(value, Mapping):
            self.write_map(value)
        else:
            raise TypeError(f"cannot write a {type(value).__name__} as Hessian")
