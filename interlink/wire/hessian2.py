"""Hessian 2 in both of its grammars, sans-I/O: the SOFA/Caucho 3.x *draft* and the *final* Hessian 2.0.

Two grammars travel under the name "hessian2" (../shared/PROTOCOLS.md 1.10.1):

- **sofa** (draft): SOFARPC 5 (sofa-hessian 3.x) and sofa-rpc-node (sofa-hessian-node v3, hessian.js-1
  `EncoderV2`) write the Hessian 2.0 draft grammar of Caucho Hessian 3.1 in Bolt codec-1 bodies and in
  SOFA Triple generic calls (`serializeType "hessian2"`). Byte values follow `Hessian2Input` /
  `Hessian2Output` of sofastack/sofa-hessian branch 3.x.
- **final**: the Hessian 2.0 specification as Dubbo's hessian-lite (`serializeType "hessian4"`) and
  Caucho Hessian 4 / sofa-hessian 4.x write it. Byte values follow
  `com.alibaba.com.caucho.hessian.io.Hessian2Output` / `Hessian2Input` of apache/dubbo-hessian-lite.

Leading bytes of a value (both grammars agree on everything not listed in the last two columns):

    code        both                          sofa (draft) only            final only
    0x00-0x1f   string, 0-31 UTF-16 units
    0x20-0x2f   binary, 0-15 bytes
    0x30-0x33                                                              string, len (b-0x30)<<8 | b1
    0x34-0x37                                                              binary, len (b-0x34)<<8 | b1
    0x38-0x3f   long, ((b-0x3c)<<16) + u16
    'A' 0x41                                                               binary non-final chunk, u16
    'B' 0x42    binary final chunk, u16
    'C' 0x43                                                               class definition
    'D' 0x44    double, IEEE 64
    'F' 'T' 'N' false, true, null
    'H' 0x48                                                               untyped map ... 'Z'
    'I' 0x49    int, int32
    0x4a                                      ref, 1 byte                  date, int64 ms ('J')
    0x4b                                      ref, u16                     date, int32 minutes ('K')
    'L' 0x4c    long, int64
    'M' 0x4d    map                           [type] (k v)* 'z'            type (k v)* 'Z'
    'O' 0x4f                                  class definition             object, int(definition)
    'Q' 0x51                                                               ref, int
    'R' 0x52                                  ref, int32                   string non-final chunk, u16
    'S' 0x53    string final chunk, u16
    'U' 0x55                                                               typed list, type v* 'Z'
    'V' 0x56    list                          [type] [len] v* 'z'          typed list, type int(len) v*
    'W' 'X'                                                                untyped list: v* 'Z' / int(len) v*
    0x59                                                                   long as int32
    'Z' 0x5a                                                               end of list/map
    0x5b-0x5f                                                              double 0.0, 1.0, int8, int16, int32/1000 (*)
    0x60-0x6f                                                              object of definition 0-15
    0x62 'b'                                  binary non-final chunk, u16
    0x64 'd'                                  date, int64 ms
    0x67-0x6b                                 double 0.0, 1.0, int8, int16, float32
    0x6f 'o'                                  object, int(definition)
    0x70-0x77                                                              typed list of 0-7: type v*
    0x73 's'                                  string non-final chunk, u16
    0x76 'v'                                  typed list: int(type ref) int(len) v*
    0x77                                      long as int32
    0x78-0x7f                                                              untyped list of 0-7: v*
    0x7a 'z'                                  end of list/map
    0x80-0xbf   int, b-0x90
    0xc0-0xcf   int, ((b-0xc8)<<8) + b1
    0xd0-0xd7   int, ((b-0xd4)<<16) + u16
    0xd8-0xef   long, b-0xe0
    0xf0-0xff   long, ((b-0xf8)<<8) + b1

(*) The spec says 0x5f is a float32; Caucho Hessian 4, sofa-hessian 4.x and hessian-lite all write and read
an int32 count of thousandths ("mills") there, and so do we.

Type names (of typed lists and maps): sofa `'t' u16 chars` (new) or `0x75 int` (reference; its reader also
takes `'T' int`); final: a string (new) or an int (reference). Class definitions: sofa `'O' int(name length)
chars int(n) n*string`, final `'C' string int(n) n*string`. Strings are lengths in UTF-16 units followed by
(CESU-8) UTF-8: Java writes a non-BMP character as two 3-byte surrogates; hessian-lite's reader rejects
4-byte UTF-8, ours takes it as two units.

A stream's values share state: class definitions, type names, and a table of the lists, maps and objects
read so far (back-references point into it, so one object can appear twice, or contain itself).

Python values: None, bool, int (a Java int; `HessianLong` for a Java long when read `faithful`ly), float
(double), str, bytes (binary), list (an untyped list), `TypedList` (a list with its type name, e.g.
"[java.lang.String"), dict (an untyped map), `TypedMap`, `HessianObject` (class name + ordered fields),
`HessianDate` (java.util.Date). A back-reference reads as the very same Python object, and the writers
write a list, dict or `HessianObject` that they meet a second time as a back-reference.

Readers: `SofaHessianReader` and `FinalHessianReader` decode one value at a time (`read_value()`), keep the
stream state, and expose `offset` so that a caller can stop after the values it needs (the `SofaRequest`
head before the call arguments). Malformed or truncated input raises `HessianError` and nothing else;
nesting is limited to `max_depth`. With `faithful=True` a reader keeps what a transcoder needs and refuses
what Python values cannot hold exactly (see `_HessianReader`).

Writers: `SofaHessianWriter` and `FinalHessianWriter` write byte for byte what the Java writers of their
dialect write for the same Java values (shortest int/long/double forms, string chunks of 32768 UTF-16
units, one class definition per class, back-references). `transcode()` rewrites a stream from one dialect
into the other, keeping values, types, class names, shared references and nulls.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = [
    "DIALECTS",
    "MAX_DEPTH",
    "FinalHessianReader",
    "FinalHessianWriter",
    "HessianDate",
    "HessianError",
    "HessianLong",
    "HessianObject",
    "HessianValueError",
    "SofaHessianReader",
    "SofaHessianWriter",
    "TypedList",
    "TypedMap",
    "new_reader",
    "new_writer",
    "transcode",
    "write_values",
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
_CHUNK = 0x8000  # max UTF-16 units per non-final string chunk (both Java writers), bytes per sofa binary chunk

_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_BMP = re.compile("[\U00010000-\U0010ffff]")


class HessianError(Exception):
    """A Hessian stream that is malformed, truncated or beyond our limits, or a value a dialect cannot carry."""


class HessianValueError(HessianError, ValueError):
    """A value that a writer cannot represent in its dialect (an int beyond 64 bits, a sofa map whose first
    key is `True`, ...). A `ValueError` too, as the writers raised before the two were told apart."""


class HessianLong(int):
    """A Java long (Hessian long), as opposed to a plain int, which is a Java int.

    Faithful readers return longs as `HessianLong`; the writers write a `HessianLong` as a long even when it
    fits 32 bits (a plain int is written as an int if it fits 32 bits, else as a long). It is an int in
    every other respect: `HessianLong(5) == 5`, same hash, arithmetic gives plain ints.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"HessianLong({int.__repr__(self)})"


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
    Compares equal to a plain list with the same items. An empty type name means an untyped list."""

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


# --- readers -----------------------------------------------------------------------------------------

_Handler = Callable[["_HessianReader", int, int], object]


def _tag_name(tag: int) -> str:
    return f"0x{tag:02x}" + (f" {chr(tag)!r}" if 0x20 < tag < 0x7F else "")


class _HessianReader:
    """What both grammars share: bounds-checked primitives, strings, binary, scalars and the stream state.

    Each dialect has a table of 256 handlers, one per leading byte (`_value` dispatches on it), and two
    copies of it: plain and faithful. A faithful reader (`faithful=True`) differs in what it returns:

    - longs are `HessianLong` (plain: int, as for a Java int);
    - a lone surrogate in a string (legal in a Java String) stays a lone surrogate code point (plain: it
      becomes U+FFFD, so that the string can be encoded as UTF-8 later);
    - a map whose keys Python cannot tell apart (int 1, long 1, double 1.0 and true are one dict key) or a
      class definition that repeats a field name is a `HessianError` (plain: the last one wins).
    """

    __slots__ = ("data", "offset", "class_defs", "types", "refs", "max_depth", "faithful", "_handlers")

    _END = 0  # the byte that ends a variable-length list or a map
    _TABLES: tuple[list[_Handler], list[_Handler]]  # (plain, faithful), set per dialect below

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        offset: int = 0,
        *,
        max_depth: int = MAX_DEPTH,
        faithful: bool = False,
    ):
        self.data = bytes(data)
        if not 0 <= offset <= len(self.data):
            raise HessianError(f"offset {offset} is outside the {len(self.data)} bytes of data")
        self.offset = offset
        self.class_defs: list[tuple[str, tuple[str, ...]]] = []
        self.types: list[str] = []
        self.refs: list[object] = []
        self.max_depth = max_depth
        self.faithful = faithful
        self._handlers = self._TABLES[1 if faithful else 0]

    @property
    def at_end(self) -> bool:
        return self.offset >= len(self.data)

    def read_value(self) -> object:
        """The next value of the stream (class definitions before it are consumed and remembered)."""
        try:
            return self._value(0)
        except (IndexError, struct.error, UnicodeError, OverflowError, RecursionError) as exc:  # safety net
            raise HessianError(f"malformed Hessian data near offset {self.offset}: {exc}") from None

    def _value(self, depth: int) -> object:  # per dialect
        raise NotImplementedError

    # --- primitives (all bounds-checked) ---

    def _truncated(self, what: str) -> HessianError:
        return HessianError(f"truncated Hessian data: {what} at offset {self.offset} runs past the end")

    def _byte(self, what: str) -> int:
        pos = self.offset
        if pos >= len(self.data):
            raise self._truncated(what)
        self.offset = pos + 1
        return self.data[pos]

    def _peek(self, what: str) -> int:
        pos = self.offset
        if pos >= len(self.data):
            raise self._truncated(what)
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
        """A structural int (lengths, references): the Hessian int encodings only."""
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

    def _deeper(self, depth: int) -> int:
        if depth >= self.max_depth:
            raise HessianError(f"values nested deeper than {self.max_depth} levels")
        return depth + 1

    def _at_end_marker(self) -> bool:
        data, pos = self.data, self.offset
        if pos >= len(data):
            raise self._truncated(f"a list or map without its end marker {chr(self._END)!r}")
        if data[pos] == self._END:
            self.offset = pos + 1
            return True
        return False

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

    def _next_string_chunk(self) -> tuple[int, bool]:  # per dialect: (units, final) of the next chunk
        raise NotImplementedError

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
            units, final = self._next_string_chunk()
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        if raw.isascii():
            return raw.decode("ascii")
        try:
            text = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise HessianError(f"bad UTF-8 in a string: {exc.reason}") from None
        if _SURROGATE.search(text):
            # Java and node write a non-BMP character as two 3-byte surrogates: join the pairs into the real
            # character. A lone surrogate (legal in a Java String, not in UTF-8) stays one if faithful, else
            # becomes U+FFFD.
            text = text.encode("utf-16-le", "surrogatepass").decode(
                "utf-16-le", "surrogatepass" if self.faithful else "replace"
            )
        return text

    # --- binary ---

    def _next_binary_chunk(self) -> tuple[int, bool]:  # per dialect: (length, final) of the next chunk
        raise NotImplementedError

    def _binary_body(self, length: int, final: bool) -> bytes:
        parts = []
        while True:
            parts.append(self._take(length, "binary data"))
            if final:
                break
            length, final = self._next_binary_chunk()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # --- structure ---

    def _short_ascii(self) -> str | None:
        """A short ASCII string (0x00-0x1f form) at `offset`, read; None (and nothing read) if it is not one."""
        data, pos = self.data, self.offset
        if pos < len(data) and data[pos] <= 0x1F:
            end = pos + 1 + data[pos]
            raw = data[pos + 1 : end]
            if end <= len(data) and raw.isascii():
                self.offset = end
                return raw.decode("ascii")
        return None

    def _class_fields(self, name: str) -> None:
        """int(n) and n field names, after the class name of a definition."""
        count = self._count(self._int(), "field count")
        names = []
        for _ in range(count):
            field_name = self._short_ascii()
            names.append(field_name if field_name is not None else self._string("a field name"))
        fields = tuple(names)
        if self.faithful and len(set(fields)) != count:
            raise HessianError(f"class definition {name} repeats a field name: {fields}")
        self.class_defs.append((name, fields))

    def _string(self, what: str) -> str:  # per dialect: a value that must be a string
        raise NotImplementedError

    def _class_def_at(self, index: int) -> tuple[str, tuple[str, ...]]:
        if not 0 <= index < len(self.class_defs):
            raise HessianError(f"object refers to class definition #{index}; {len(self.class_defs)} defined")
        return self.class_defs[index]

    def _type_ref(self, index: int) -> str:
        if not 0 <= index < len(self.types):
            raise HessianError(f"type reference #{index}; {len(self.types)} types defined")
        return self.types[index]

    def _ref(self, index: int) -> object:
        if not 0 <= index < len(self.refs):
            raise HessianError(f"back-reference #{index}; {len(self.refs)} values can be referred to")
        return self.refs[index]

    def _list_items(self, type_name: str | None, count: int | None, depth: int) -> list[object]:
        """A list's items: `count` of them, or up to the end marker if None. Registered before its items are
        read, so that an item may refer to the list itself."""
        depth = self._deeper(depth)
        items: list[object] = TypedList((), type_name) if type_name else []
        self.refs.append(items)
        if count is None:
            while not self._at_end_marker():
                items.append(self._value(depth))
        else:
            for _ in range(self._count(count, "list length")):
                items.append(self._value(depth))
        return items

    def _map_entries(self, type_name: str | None, depth: int) -> dict[object, object]:
        """(key value)* up to the end marker."""
        depth = self._deeper(depth)
        result: dict[object, object] = TypedMap((), type_name) if type_name else {}
        self.refs.append(result)
        faithful = self.faithful
        while not self._at_end_marker():
            key = self._value(depth)
            value = self._value(depth)
            size = len(result)
            try:
                result[key] = value
            except TypeError:
                raise HessianError(f"map key of type {type(key).__name__} is not supported") from None
            if faithful and len(result) == size:
                raise HessianError(f"map key {key!r} at offset {self.offset} equals an earlier key as a Python value")
        return result

    def _instance(self, index: int, depth: int) -> HessianObject:
        """The field values of an object of class definition `index`."""
        depth = self._deeper(depth)
        name, fields = self._class_def_at(index)
        instance = HessianObject(name, {})
        self.refs.append(instance)
        values = instance.fields
        for field_name in fields:
            values[field_name] = self._value(depth)
        return instance

    # --- handlers shared by both dialects, one per leading byte ---

    def _h_short_string(self, tag: int, depth: int) -> object:
        pos = self.offset
        end = pos + tag
        raw = self.data[pos:end]
        if end <= len(self.data) and raw.isascii():  # the common case, inline
            self.offset = end
            return raw.decode("ascii")
        return self._string_body(tag, True)

    def _h_string(self, tag: int, depth: int) -> object:
        """'S' (final chunk) or the dialect's non-final chunk tag, then u16 length."""
        return self._string_body(self._unpack(_U16, "a string"), tag == 0x53)  # type: ignore[arg-type]

    def _h_short_binary(self, tag: int, depth: int) -> object:
        return self._binary_body(tag - 0x20, True)

    def _h_binary(self, tag: int, depth: int) -> object:
        """'B' (final chunk) or the dialect's non-final chunk tag, then u16 length."""
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

    def _h_double(self, tag: int, depth: int) -> object:
        return self._unpack(_F64, "a double")

    def _h_date(self, tag: int, depth: int) -> object:
        return HessianDate(self._unpack(_I64, "a date"))  # type: ignore[arg-type]

    def _h_unsupported(self, tag: int, depth: int) -> object:
        raise HessianError(f"unsupported Hessian value {_tag_name(tag)} at offset {self.offset - 1}")

    def _h_unknown(self, tag: int, depth: int) -> object:
        raise HessianError(f"unknown Hessian code {_tag_name(tag)} at offset {self.offset - 1}")


def _as_long(handler: _Handler) -> _Handler:
    """A long handler that returns `HessianLong` (for the faithful tables)."""

    def long_handler(reader: _HessianReader, tag: int, depth: int) -> object:
        return HessianLong(handler(reader, tag, depth))  # type: ignore[call-overload]

    return long_handler


def _build_tables(
    named: Mapping[int, _Handler], extra: Mapping[range, _Handler]
) -> tuple[list[_Handler], list[_Handler]]:
    """(plain, faithful) handler tables of a dialect: the shared handlers, then the dialect's `extra` ranges
    and `named` single codes. The faithful table returns every long as a `HessianLong`."""
    r = _HessianReader
    table: list[_Handler] = [r._h_unknown] * 256
    ranges: dict[range, _Handler] = {
        range(0x00, 0x20): r._h_short_string,
        range(0x20, 0x30): r._h_short_binary,
        range(0x38, 0x40): r._h_long_short,
        range(0x80, 0xC0): r._h_int_direct,
        range(0xC0, 0xD0): r._h_int_byte,
        range(0xD0, 0xD8): r._h_int_short,
        range(0xD8, 0xF0): r._h_long_direct,
        range(0xF0, 0x100): r._h_long_byte,
        **extra,
    }
    for codes, handler in ranges.items():
        for code in codes:
            table[code] = handler
    shared = {
        0x53: r._h_string, 0x42: r._h_binary, 0x4E: r._h_null, 0x54: r._h_true, 0x46: r._h_false,
        0x49: r._h_int, 0x4C: r._h_long, 0x44: r._h_double,
    }  # fmt: skip
    for code, handler in {**shared, **named}.items():
        table[code] = handler
    longs = {r._h_long_direct, r._h_long_byte, r._h_long_short, r._h_long_int, r._h_long}
    wrapped = {handler: _as_long(handler) for handler in longs}
    faithful = [wrapped.get(handler, handler) for handler in table]
    return table, faithful


class SofaHessianReader(_HessianReader):
    """Reads values of one Hessian 3.x draft stream (SOFA dialect) from `data`, starting at `offset`.

    After each `read_value()`, `offset` is the position just after that value. `class_defs`, `types` and
    `refs` are the stream state (shared by all values of one stream, as in a SOFARPC request body). After a
    `HessianError` the reader's state is unspecified: do not read further values from it.
    """

    __slots__ = ()

    _END = 0x7A  # 'z'

    def _value(self, depth: int) -> object:
        data, pos = self.data, self.offset
        if pos >= len(data):
            raise self._truncated("a value")
        tag = data[pos]
        self.offset = pos + 1
        while tag == 0x4F:  # 'O': class definition, then the value that follows it
            self._class_definition()
            tag = self._byte("a value after a class definition")
        return self._handlers[tag](self, tag, depth)

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

    def _next_string_chunk(self) -> tuple[int, bool]:
        tag = self._byte("a string chunk")
        if tag in (0x73, 0x78):  # 's', 'x' (Java's reader accepts xml chunks as string chunks)
            return self._unpack(_U16, "a string chunk"), False  # type: ignore[return-value]
        if tag in (0x53, 0x58):  # 'S', 'X'
            return self._unpack(_U16, "a string chunk"), True  # type: ignore[return-value]
        if tag <= 0x1F:
            return tag, True
        raise HessianError(f"expected a string chunk at offset {self.offset - 1}, found {_tag_name(tag)}")

    def _next_binary_chunk(self) -> tuple[int, bool]:
        tag = self._byte("a binary chunk")
        if tag in (0x62, 0x42):  # 'b', 'B'
            return self._unpack(_U16, "a binary chunk"), tag == 0x42  # type: ignore[return-value]
        if 0x20 <= tag <= 0x2F:
            return tag - 0x20, True
        raise HessianError(f"expected a binary chunk at offset {self.offset - 1}, found {_tag_name(tag)}")

    def _string(self, what: str) -> str:
        tag = self._byte(what)
        if tag <= 0x1F:
            return self._string_body(tag, True)
        if tag in (0x53, 0x73):
            return self._string_body(self._unpack(_U16, what), tag == 0x53)  # type: ignore[arg-type]
        raise HessianError(f"expected a string for {what} at offset {self.offset - 1}, found {_tag_name(tag)}")

    def _class_definition(self) -> None:
        """After 'O': int(name length in UTF-16 units), the name's characters, int(n), n field names."""
        units = self._int()
        if units < 0:
            raise HessianError(f"negative class name length {units}")
        self._class_fields(self._string_body(units, True))

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

    # --- handlers of the draft grammar ---

    def _h_double_float(self, tag: int, depth: int) -> object:
        return self._unpack(_F32, "a double")

    def _h_list(self, tag: int, depth: int) -> object:
        """'V' [type] ['n' byte | 'l' int32] items 'z' (the declared length is not trusted)."""
        type_name = self._type()
        data, pos = self.data, self.offset
        if pos < len(data):
            if data[pos] == 0x6E:  # 'n'
                self.offset = pos + 1
                self._byte("a list length")
            elif data[pos] == 0x6C:  # 'l'
                self.offset = pos + 1
                self._unpack(_I32, "a list length")
        return self._list_items(type_name, None, depth)

    def _h_fixed_list(self, tag: int, depth: int) -> object:
        """'v' int(type ref) int(length) items, no end marker."""
        type_name = self._type_ref(self._int())
        return self._list_items(type_name or None, self._int(), depth)

    def _h_map(self, tag: int, depth: int) -> object:
        """'M' [type] (key value)* 'z'."""
        return self._map_entries(self._type(), depth)

    def _h_instance(self, tag: int, depth: int) -> object:
        """'o' int(class definition index), then one value per field of that definition."""
        return self._instance(self._int(), depth)

    def _h_ref_byte(self, tag: int, depth: int) -> object:
        return self._ref(self._byte("a reference"))

    def _h_ref_short(self, tag: int, depth: int) -> object:
        return self._ref(self._unpack(_U16, "a reference"))  # type: ignore[arg-type]

    def _h_ref(self, tag: int, depth: int) -> object:
        return self._ref(self._unpack(_I32, "a reference"))  # type: ignore[arg-type]


_s = SofaHessianReader
SofaHessianReader._TABLES = _build_tables(
    {
        0x73: _s._h_string, 0x62: _s._h_binary, 0x77: _s._h_long_int,  # 's', 'b'
        0x67: _s._h_double_zero, 0x68: _s._h_double_one, 0x69: _s._h_double_byte, 0x6A: _s._h_double_short,
        0x6B: _s._h_double_float, 0x64: _s._h_date,  # 'd'
        0x56: _s._h_list, 0x76: _s._h_fixed_list, 0x4D: _s._h_map, 0x6F: _s._h_instance,  # 'V' 'v' 'M' 'o'
        0x52: _s._h_ref, 0x4A: _s._h_ref_byte, 0x4B: _s._h_ref_short,  # 'R'
        # xml, remote: Java's 3.x reader has no use for them either (UnsupportedOperationException, proxies)
        0x78: _s._h_unsupported, 0x58: _s._h_unsupported, 0x72: _s._h_unsupported,  # 'x' 'X' 'r'
    },
    {},
)  # fmt: skip


class FinalHessianReader(_HessianReader):
    """Reads values of one final-grammar Hessian 2.0 stream (Dubbo hessian-lite, "hessian4").

    Same interface and state as `SofaHessianReader` (`read_value()`, `offset`, `class_defs`, `types`,
    `refs`). Accepts every form hessian-lite's `Hessian2Input.readObject` accepts, except that lengths and
    references must be ints (Java also takes a long or double there; no writer sends one).
    """

    __slots__ = ()

    _END = 0x5A  # 'Z'

    def _value(self, depth: int) -> object:
        data, pos = self.data, self.offset
        if pos >= len(data):
            raise self._truncated("a value")
        tag = data[pos]
        self.offset = pos + 1
        while tag == 0x43:  # 'C': class definition, then the value that follows it
            self._class_fields(self._string("a class name"))
            tag = self._byte("a value after a class definition")
        return self._handlers[tag](self, tag, depth)

    def _next_string_chunk(self) -> tuple[int, bool]:
        tag = self._byte("a string chunk")
        if tag in (0x52, 0x53):  # 'R', 'S'
            return self._unpack(_U16, "a string chunk"), tag == 0x53  # type: ignore[return-value]
        if tag <= 0x1F:
            return tag, True
        if 0x30 <= tag <= 0x33:
            return ((tag - 0x30) << 8) + self._byte("a string chunk"), True
        raise HessianError(f"expected a string chunk at offset {self.offset - 1}, found {_tag_name(tag)}")

    def _next_binary_chunk(self) -> tuple[int, bool]:
        tag = self._byte("a binary chunk")
        if tag in (0x41, 0x42):  # 'A', 'B'
            return self._unpack(_U16, "a binary chunk"), tag == 0x42  # type: ignore[return-value]
        if 0x20 <= tag <= 0x2F:
            return tag - 0x20, True
        if 0x34 <= tag <= 0x37:
            return ((tag - 0x34) << 8) + self._byte("a binary chunk"), True
        raise HessianError(f"expected a binary chunk at offset {self.offset - 1}, found {_tag_name(tag)}")

    def _string(self, what: str) -> str:
        tag = self._byte(what)
        if tag <= 0x1F:
            return self._string_body(tag, True)
        if 0x30 <= tag <= 0x33:
            return self._string_body(((tag - 0x30) << 8) + self._byte(what), True)
        if tag in (0x52, 0x53):
            return self._string_body(self._unpack(_U16, what), tag == 0x53)  # type: ignore[arg-type]
        raise HessianError(f"expected a string for {what} at offset {self.offset - 1}, found {_tag_name(tag)}")

    def _type(self) -> str:
        """A list or map type: a string (a new type, remembered) or an int (a reference to one)."""
        tag = self._peek("a type")
        if tag <= 0x1F or 0x30 <= tag <= 0x33 or tag in (0x52, 0x53):
            name = self._string("a type")
            self.types.append(name)
            return name
        return self._type_ref(self._int())

    # --- handlers of the final grammar ---

    def _h_medium_string(self, tag: int, depth: int) -> object:
        return self._string_body(((tag - 0x30) << 8) + self._byte("a string"), True)

    def _h_medium_binary(self, tag: int, depth: int) -> object:
        return self._binary_body(((tag - 0x34) << 8) + self._byte("binary data"), True)

    def _h_double_mill(self, tag: int, depth: int) -> object:
        """0x5f int32: the double mills * 0.001 (the spec says float32; Hessian 4 and hessian-lite do this)."""
        return 0.001 * self._unpack(_I32, "a double")  # type: ignore[operator]

    def _h_date_minutes(self, tag: int, depth: int) -> object:
        return HessianDate(self._unpack(_I32, "a date") * 60000)  # type: ignore[operator]

    def _h_list_variable(self, tag: int, depth: int) -> object:
        """'U' type value* 'Z'."""
        return self._list_items(self._type(), None, depth)

    def _h_list_variable_untyped(self, tag: int, depth: int) -> object:
        """'W' value* 'Z'."""
        return self._list_items(None, None, depth)

    def _h_list_fixed(self, tag: int, depth: int) -> object:
        """'V' type int(length) value*."""
        type_name = self._type()
        return self._list_items(type_name, self._int(), depth)

    def _h_list_fixed_untyped(self, tag: int, depth: int) -> object:
        """'X' int(length) value*."""
        return self._list_items(None, self._int(), depth)

    def _h_list_direct(self, tag: int, depth: int) -> object:
        """0x70-0x77 type value*: a typed list of 0-7 items."""
        return self._list_items(self._type(), tag - 0x70, depth)

    def _h_list_direct_untyped(self, tag: int, depth: int) -> object:
        """0x78-0x7f value*: an untyped list of 0-7 items."""
        return self._list_items(None, tag - 0x78, depth)

    def _h_map_untyped(self, tag: int, depth: int) -> object:
        """'H' (key value)* 'Z'."""
        return self._map_entries(None, depth)

    def _h_map(self, tag: int, depth: int) -> object:
        """'M' type (key value)* 'Z'."""
        return self._map_entries(self._type(), depth)

    def _h_object(self, tag: int, depth: int) -> object:
        """'O' int(class definition index), then one value per field of that definition."""
        return self._instance(self._int(), depth)

    def _h_object_direct(self, tag: int, depth: int) -> object:
        """0x60-0x6f: an object of class definition 0-15."""
        return self._instance(tag - 0x60, depth)

    def _h_ref(self, tag: int, depth: int) -> object:
        """'Q' int."""
        return self._ref(self._int())


_f = FinalHessianReader
FinalHessianReader._TABLES = _build_tables(
    {
        0x52: _f._h_string, 0x41: _f._h_binary, 0x59: _f._h_long_int,  # 'R', 'A'
        0x5B: _f._h_double_zero, 0x5C: _f._h_double_one, 0x5D: _f._h_double_byte, 0x5E: _f._h_double_short,
        0x5F: _f._h_double_mill, 0x4A: _f._h_date, 0x4B: _f._h_date_minutes,
        0x55: _f._h_list_variable, 0x56: _f._h_list_fixed, 0x57: _f._h_list_variable_untyped,  # 'U' 'V' 'W'
        0x58: _f._h_list_fixed_untyped, 0x48: _f._h_map_untyped, 0x4D: _f._h_map,  # 'X' 'H' 'M'
        0x4F: _f._h_object, 0x51: _f._h_ref,  # 'O' 'Q'
    },
    {
        range(0x30, 0x34): _f._h_medium_string,
        range(0x34, 0x38): _f._h_medium_binary,
        range(0x60, 0x70): _f._h_object_direct,
        range(0x70, 0x78): _f._h_list_direct,
        range(0x78, 0x80): _f._h_list_direct_untyped,
    },
)  # fmt: skip
del _s, _f


# --- writers -----------------------------------------------------------------------------------------


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


def _string_chunks(value: str) -> tuple[list[str], str]:
    """A string as Java's `writeString` cuts it: non-final chunks of 32768 UTF-16 units (32767 where a chunk
    would end in a high surrogate), then the final chunk."""
    units = _utf16_units(value)
    if len(units) <= _CHUNK:
        return [], units
    chunks = []
    start, length = 0, len(units)
    while length > _CHUNK:
        sublen = _CHUNK
        if 0xD800 <= ord(units[start + sublen - 1]) <= 0xDBFF:
            sublen -= 1
        chunks.append(units[start : start + sublen])
        start += sublen
        length -= sublen
    return chunks, units[start:]


def _java_int_cast(value: float) -> int:
    """Java's `(int) value`: truncation towards zero, saturating, NaN -> 0."""
    if math.isnan(value):
        return 0
    if math.isinf(value):
        return _INT32_MAX if value > 0 else _INT32_MIN
    return max(_INT32_MIN, min(_INT32_MAX, int(value)))


def _exact_double(value: float) -> bytes | None:
    """'D' + the very bits of -0.0 or of a NaN, which Java's writeDouble would not keep (-0.0 == 0 there,
    and a NaN becomes the canonical NaN); None for any other value."""
    if value == 0.0 and math.copysign(1.0, value) < 0 or math.isnan(value):
        return b"\x44" + _F64.pack(value)
    return None


def _put_short_double(out: bytearray, value: float, zero: int, faithful: bool) -> bool:
    """The forms both dialects' `writeDouble` try first, with the dialect's codes zero, zero+1 (1.0), zero+2
    (int8), zero+3 (int16) for integral values; True if one was written. `faithful` first writes -0.0 and
    NaNs as 'D' + their bits (Java's `(int) value == value` makes -0.0 a 0.0)."""
    if faithful:
        exact = _exact_double(value)
        if exact is not None:
            out += exact
            return True
    as_int = _java_int_cast(value)
    if as_int != value:
        return False
    if as_int == 0 or as_int == 1:
        out.append(zero + as_int)
    elif -0x80 <= as_int < 0x80:
        out += bytes((zero + 2, as_int & 0xFF))
    elif -0x8000 <= as_int < 0x8000:
        out.append(zero + 3)
        out += _I16.pack(as_int)
    else:
        return False
    return True


def _put_int(out: bytearray, value: int) -> None:
    """A Java int in its shortest form (both dialects)."""
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
        raise HessianValueError(f"{value} does not fit a Hessian int (32 bits)")


def _put_long(out: bytearray, value: int, int32_tag: int) -> None:
    """A Java long in its shortest form; `int32_tag` is the dialect's "long as int32" code."""
    if -0x08 <= value <= 0x0F:
        out.append(value + 0xE0)
    elif -0x800 <= value <= 0x7FF:
        out += bytes(((value >> 8) + 0xF8, value & 0xFF))
    elif -0x40000 <= value <= 0x3FFFF:
        out += bytes(((value >> 16) + 0x3C, (value >> 8) & 0xFF, value & 0xFF))
    elif _INT32_MIN <= value <= _INT32_MAX:
        out.append(int32_tag)
        out += _I32.pack(value)
    elif _INT64_MIN <= value <= _INT64_MAX:
        out.append(0x4C)
        out += _I64.pack(value)
    else:
        raise HessianValueError(f"{value} does not fit a Hessian long (64 bits)")


def _date_millis(value: HessianDate | int) -> int:
    millis = value.millis if isinstance(value, HessianDate) else value
    if not _INT64_MIN <= millis <= _INT64_MAX:
        raise HessianValueError(f"date {millis} ms does not fit a Java long")
    return millis


class _HessianWriter:
    """What both writers share: the stream state and the mapping of Python values to write calls.

    `write_value()` maps Python values: int -> int if it fits 32 bits, else long (`HessianLong` -> always
    a long); list/tuple -> untyped list, `TypedList` -> typed list; dict -> untyped map, `TypedMap` ->
    typed map; `HessianObject` -> object (one class definition per class name and field list). A list,
    dict or `HessianObject` written twice (the same Python object) becomes a back-reference, as in Java;
    an object that contains itself is written once and referred to inside.

    `faithful=True` keeps -0.0 and NaN payloads (written as 'D' + their bits; Java writes -0.0 as 0.0 and
    every NaN as the canonical NaN). Values a dialect cannot carry raise `HessianValueError`; Python
    types that have no Hessian form raise `TypeError`.
    """

    __slots__ = ("_out", "_class_defs", "_types", "_refs", "faithful")

    def __init__(self, *, faithful: bool = False) -> None:
        self._out = bytearray()
        self._class_defs: dict[tuple[str, tuple[str, ...]], int] = {}
        self._types: dict[str, int] = {}
        self._refs: dict[int, tuple[int, object]] = {}  # id -> (ref index, the object, kept alive)
        self.faithful = faithful

    def getvalue(self) -> bytes:
        return bytes(self._out)

    def copy(self):  # noqa: ANN201 - returns the same writer class
        """A writer with the same bytes and stream state, to continue a common prefix more than once."""
        twin = type(self)(faithful=self.faithful)
        twin._out = bytearray(self._out)
        twin._class_defs = dict(self._class_defs)
        twin._types = dict(self._types)
        twin._refs = dict(self._refs)
        return twin

    def _new_ref(self, value: object) -> int | None:
        """Java's `addRef`: the index of this very object if it was written before, else None (and it is
        numbered now)."""
        seen = self._refs.get(id(value))
        if seen is not None:
            return seen[0]
        self._refs[id(value)] = (len(self._refs), value)
        return None

    # per dialect
    def write_null(self) -> None: ...
    def write_bool(self, value: bool) -> None: ...
    def write_int(self, value: int) -> None: ...
    def write_long(self, value: int) -> None: ...
    def write_double(self, value: float) -> None: ...
    def write_string(self, value: str | None) -> None: ...
    def write_bytes(self, value: bytes | bytearray | memoryview | None) -> None: ...
    def write_date(self, value: HessianDate | int) -> None: ...
    def write_list(self, items: Sequence[object], type_name: str | None = None) -> None: ...
    def write_map(self, mapping: Mapping[object, object], type_name: str | None = None) -> None: ...
    def write_object(self, value: HessianObject) -> None: ...

    def write_value(self, value: object) -> None:
        if value is None:
            self.write_null()
        elif isinstance(value, bool):
            self.write_bool(value)
        elif isinstance(value, int):
            if _INT32_MIN <= value <= _INT32_MAX and not isinstance(value, HessianLong):
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


class SofaHessianWriter(_HessianWriter):
    """Writes one Hessian 3.x draft stream (SOFA dialect); `getvalue()` returns the bytes written so far.

    Byte for byte what sofa-hessian 3.x `Hessian2Output` writes for the same Java values (see
    `_HessianWriter` for the mapping of Python values).
    """

    __slots__ = ()

    # --- scalars ---

    def write_null(self) -> None:
        self._out.append(0x4E)

    def write_bool(self, value: bool) -> None:
        self._out.append(0x54 if value else 0x46)

    def write_int(self, value: int) -> None:
        """A Java int (32 bits)."""
        _put_int(self._out, value)

    def write_long(self, value: int) -> None:
        """A Java long (64 bits); 0x77 int32 for longs that fit 32 bits but no shorter form."""
        _put_long(self._out, value, 0x77)

    def write_double(self, value: float) -> None:
        """A Java double, in the shortest form Java's `writeDouble` picks: 0x67 0.0, 0x68 1.0, 0x69 int8,
        0x6a int16 for integral values, 0x6b for any value a float32 holds exactly, else 'D' (note: Java
        writes -0.0 as 0.0 and every NaN as the canonical NaN; `faithful` keeps them)."""
        out = self._out
        value = float(value)
        if _put_short_double(out, value, 0x67, self.faithful):
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
        if len(value) <= 0x1F and value.isascii():  # the common case, in one step
            out.append(len(value))
            out += value.encode("ascii")
            return
        chunks, last = _string_chunks(value)
        for chunk in chunks:
            out.append(0x73)
            out += _U16.pack(len(chunk))
            out += _cesu8(chunk)
        if len(last) <= 0x1F:
            out.append(len(last))
        else:
            out.append(0x53)
            out += _U16.pack(len(last))
        out += _cesu8(last)

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
        millis = _date_millis(value)
        self._out.append(0x64)
        self._out += _I64.pack(millis)

    def write_raw(self, encoded: bytes | bytearray | memoryview) -> None:
        """Appends the bytes of one complete value in this dialect that uses no stream state: a scalar (no
        list, map, object or back-reference), e.g. a call argument copied from another sofa stream."""
        self._out += encoded

    # --- structures ---

    def _back_reference(self, value: object) -> bool:
        """True (and a reference written: 0x4a byte, 0x4b u16, 'R' int32) if this object was written before."""
        index = self._new_ref(value)
        if index is None:
            return False
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

    def _type_name(self, type_name: str | None) -> None:
        """Java's `writeType`: nothing, 't' uint16 + chars the first time, 0x75 int(ref) afterwards."""
        if not type_name:
            return
        ref = self._types.get(type_name)
        if ref is not None:
            self._out.append(0x75)
            self.write_int(ref)
            return
        units = _utf16_units(type_name)
        if len(units) > 0xFFFF:
            raise HessianValueError(f"a type name of {len(units)} UTF-16 units does not fit the sofa 't' form")
        self._types[type_name] = len(self._types)
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
                raise HessianValueError("an untyped map cannot start with the key True in Hessian 3.x")
        self._out.append(0x4D)
        self._type_name(type_name)
        for key, value in mapping.items():
            self.write_value(key)
            self.write_value(value)
        self._out.append(0x7A)

    def write_object(self, value: HessianObject) -> None:
        """An object: the class definition the first time its class (with these fields) is written ('O'
        int(len) chars int(n) field names), then 'o' int(definition index) and the field values."""
        if self._back_reference(value):
            return
        name = value.class_name
        names = tuple(value.fields)
        index = self._class_defs.get((name, names))
        out = self._out
        if index is None:
            index = self._class_defs[(name, names)] = len(self._class_defs)
            units = _utf16_units(name)
            out.append(0x4F)
            self.write_int(len(units))
            out += _cesu8(units)
            self.write_int(len(names))
            for field_name in names:
                self.write_string(field_name)
        out.append(0x6F)
        self.write_int(index)
        for field_value in value.fields.values():
            self.write_value(field_value)


# Java's Hessian2Output (hessian-lite) writes into an 8 KiB buffer and flushes it when a write might not
# fit; where a binary value is cut into chunks depends on how full that buffer is. FinalHessianWriter keeps
# a virtual copy of the buffer's fill level to cut binaries where Java does. The flush tests, by method:
_SIZE = 8 * 1024  # Hessian2Output.SIZE
_LE16 = _SIZE - 16  # "if (SIZE <= offset + 16) flush": writeNull/Int/Long/Double/String, printString per char
_LT16 = _SIZE - 15  # "if (SIZE < offset + 16) flush": writeBoolean, writeRef, writeBytes
_LT32 = _SIZE - 31  # "if (SIZE < offset + 32) flush": lists, maps, types, objects, dates


class FinalHessianWriter(_HessianWriter):
    """Writes one final-grammar Hessian 2.0 stream (Dubbo hessian-lite, "hessian4").

    Byte for byte what hessian-lite's `Hessian2Output` writes (into a fresh stream, as Dubbo does for each
    Triple wrapper argument) for the same Java values: lists with their length (0x78+n / 'X' untyped,
    0x70+n / 'V' typed; Java writes 'U'/'W' only for iterators), 'H' for untyped maps, 'C' class
    definitions and 0x60+n / 'O' instances, 'Q' references, 'K' dates on whole minutes, 0x5f doubles of
    whole thousandths, and binary chunks where Java's 8 KiB buffer cuts them.
    """

    __slots__ = ("_base",)

    def __init__(self, *, faithful: bool = False) -> None:
        super().__init__(faithful=faithful)
        self._base = 0  # offset in _out where Java's buffer was last flushed

    def copy(self) -> FinalHessianWriter:
        twin = super().copy()
        twin._base = self._base
        return twin

    def _flush_at(self, limit: int) -> None:
        """Java's flush test: the buffer is flushed when it holds `limit` bytes or more."""
        if len(self._out) - self._base >= limit:
            self._base = len(self._out)

    # --- scalars ---

    def write_null(self) -> None:
        self._flush_at(_LE16)
        self._out.append(0x4E)

    def write_bool(self, value: bool) -> None:
        self._flush_at(_LT16)
        self._out.append(0x54 if value else 0x46)

    def write_int(self, value: int) -> None:
        """A Java int (32 bits)."""
        self._flush_at(_LE16)
        _put_int(self._out, value)

    def write_long(self, value: int) -> None:
        """A Java long (64 bits); 0x59 int32 for longs that fit 32 bits but no shorter form."""
        self._flush_at(_LE16)
        _put_long(self._out, value, 0x59)

    def write_double(self, value: float) -> None:
        """A Java double as hessian-lite's `writeDouble`: integral values as 0x5b 0.0, 0x5c 1.0, 0x5d int8,
        0x5e int16; `mills = (int) (value * 1000)` with `0.001 * mills == value` as 0x5f int32 mills; else
        'D'. Java writes -0.0 as 0.0 and every NaN as the canonical NaN; `faithful` keeps them."""
        self._flush_at(_LE16)
        out = self._out
        value = float(value)
        if _put_short_double(out, value, 0x5B, self.faithful):
            return
        mills = _java_int_cast(value * 1000)
        if 0.001 * mills == value:
            out.append(0x5F)
            out += _I32.pack(mills)
            return
        out.append(0x44)
        out += b"\x7f\xf8\x00\x00\x00\x00\x00\x00" if math.isnan(value) else _F64.pack(value)

    def _print(self, units: str) -> None:
        """Java's `printString`: CESU-8, with the buffer's flush test before each UTF-16 unit."""
        out = self._out
        start = len(out)
        encoded = _cesu8(units)
        out += encoded
        size = len(encoded)
        fill = start - self._base
        if fill + size <= _LE16:  # no unit starts at or past the flush mark
            return
        pos = 0
        while True:
            at = pos + max(0, _LE16 - fill)  # first byte at which the buffer would hold _LE16 bytes
            while at < size and encoded[at] & 0xC0 == 0x80:  # to the start of the next unit
                at += 1
            if at >= size:
                return
            self._base = start + at  # flushed before the unit at `at`
            pos, fill = at, 0

    def write_string(self, value: str | None) -> None:
        """A string: 'R' chunks of 32768 UTF-16 units (32767 if that would split a surrogate pair), then the
        final chunk: 0x00+len up to 31 units, 0x30-0x33 + byte up to 1023, else 'S' uint16; CESU-8 bytes."""
        self._flush_at(_LE16)
        out = self._out
        if value is None:
            out.append(0x4E)
            return
        if len(value) <= 0x1F and value.isascii() and len(out) - self._base + len(value) < _LE16:
            out.append(len(value))  # the common case, in one step
            out += value.encode("ascii")
            return
        chunks, last = _string_chunks(value)
        for chunk in chunks:
            self._flush_at(_LE16)
            out.append(0x52)
            out += _U16.pack(len(chunk))
            self._print(chunk)
        self._flush_at(_LE16)
        length = len(last)
        if length <= 0x1F:
            out.append(length)
        elif length <= 0x3FF:
            out += bytes((0x30 + (length >> 8), length & 0xFF))
        else:
            out.append(0x53)
            out += _U16.pack(length)
        self._print(last)

    def write_bytes(self, value: bytes | bytearray | memoryview | None) -> None:
        """Binary data as hessian-lite's `writeBytes`: while the rest does not fit the buffer, an 'A' chunk
        that fills it (or a whole new buffer when fewer than 16 bytes are left), then the final chunk:
        0x20+len up to 15 bytes, 0x34-0x37 + byte up to 1023, else 'B' uint16."""
        out = self._out
        if value is None:
            self._flush_at(_LT16)
            out.append(0x4E)
            return
        data = bytes(value)
        start, length = 0, len(data)
        while _SIZE - (len(out) - self._base) - 3 < length:
            sublen = _SIZE - (len(out) - self._base) - 3
            if sublen < 16:
                self._base = len(out)
                sublen = min(_SIZE - 3, length)
            out.append(0x41)
            out += _U16.pack(sublen)
            out += data[start : start + sublen]
            start += sublen
            length -= sublen
            self._base = len(out)
        self._flush_at(_LT16)
        if length <= 0x0F:
            out.append(0x20 + length)
        elif length <= 0x3FF:
            out += bytes((0x34 + (length >> 8), length & 0xFF))
        else:
            out.append(0x42)
            out += _U16.pack(length)
        out += data[start:] if start else data

    def write_date(self, value: HessianDate | int) -> None:
        """A java.util.Date: 0x4b int32 minutes when the time is a whole minute that fits, else 0x4a int64 ms."""
        millis = _date_millis(value)
        self._flush_at(_LT32)
        out = self._out
        if millis % 60000 == 0:
            minutes = millis // 60000
            if _INT32_MIN <= minutes <= _INT32_MAX:
                out.append(0x4B)
                out += _I32.pack(minutes)
                return
        out.append(0x4A)
        out += _I64.pack(millis)

    # --- structures ---

    def _back_reference(self, value: object) -> bool:
        """True (and 'Q' int(ref) written) if this very object was written before."""
        index = self._new_ref(value)
        if index is None:
            return False
        self._flush_at(_LT16)
        self._out.append(0x51)
        self.write_int(index)
        return True

    def _type_name(self, type_name: str) -> None:
        """Java's `writeType`: the type's string the first time, its int index afterwards."""
        self._flush_at(_LT32)
        ref = self._types.get(type_name)
        if ref is not None:
            self.write_int(ref)
            return
        self._types[type_name] = len(self._types)
        self.write_string(type_name)

    def write_list(self, items: Sequence[object], type_name: str | None = None) -> None:
        """A list: typed 0x70+n type (n <= 7) or 'V' type int(n); untyped 0x78+n or 'X' int(n); the items."""
        if self._back_reference(items):
            return
        self._flush_at(_LT32)
        out = self._out
        length = len(items)
        if type_name:
            if length <= 7:
                out.append(0x70 + length)
                self._type_name(type_name)
            else:
                out.append(0x56)
                self._type_name(type_name)
                self.write_int(length)
        elif length <= 7:
            out.append(0x78 + length)
        else:
            out.append(0x58)
            self.write_int(length)
        for item in items:
            self.write_value(item)

    def write_map(self, mapping: Mapping[object, object], type_name: str | None = None) -> None:
        """A map: 'M' type or 'H' (untyped, Java's HashMap), (key value)*, 'Z'."""
        if self._back_reference(mapping):
            return
        self._flush_at(_LT32)
        if type_name:
            self._out.append(0x4D)
            self._type_name(type_name)
        else:
            self._out.append(0x48)
        for key, value in mapping.items():
            self.write_value(key)
            self.write_value(value)
        self._flush_at(_LT32)
        self._out.append(0x5A)

    def write_object(self, value: HessianObject) -> None:
        """An object: the first time its class (with these fields) is written, 'C' name int(n) field names;
        then 0x60+i (i <= 15) or 'O' int(i), and the field values."""
        if self._back_reference(value):
            return
        name = value.class_name
        names = tuple(value.fields)
        index = self._class_defs.get((name, names))
        out = self._out
        if index is None:
            index = self._class_defs[(name, names)] = len(self._class_defs)
            self._flush_at(_LT32)
            out.append(0x43)
            self.write_string(name)
            self.write_int(len(names))
            for field_name in names:
                self.write_string(field_name)
        self._flush_at(_LT32)
        if index <= 0x0F:
            out.append(0x60 + index)
        else:
            out.append(0x4F)
            self.write_int(index)
        for field_value in value.fields.values():
            self.write_value(field_value)


# --- dialects and the transcoder -------------------------------------------------------------------------

DIALECTS: dict[str, tuple[type[_HessianReader], type[_HessianWriter]]] = {
    "sofa": (SofaHessianReader, SofaHessianWriter),
    "final": (FinalHessianReader, FinalHessianWriter),
}


def _dialect(name: str) -> tuple[type[_HessianReader], type[_HessianWriter]]:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown Hessian dialect {name!r} (known: {', '.join(DIALECTS)})") from None


def new_reader(
    dialect: str,
    data: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    faithful: bool = False,
    max_depth: int = MAX_DEPTH,
) -> SofaHessianReader | FinalHessianReader:
    """A reader of `dialect` ("sofa" or "final")."""
    return _dialect(dialect)[0](data, offset, faithful=faithful, max_depth=max_depth)  # type: ignore[return-value]


def new_writer(dialect: str, *, faithful: bool = False) -> SofaHessianWriter | FinalHessianWriter:
    """A writer of `dialect` ("sofa" or "final")."""
    return _dialect(dialect)[1](faithful=faithful)  # type: ignore[return-value]


def write_values(writer: _HessianWriter, values: Iterable[object], dialect: str) -> None:
    """`writer.write_value` for each value, with what the dialect cannot carry as `HessianError`."""
    try:
        for value in values:
            writer.write_value(value)
    except HessianError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise HessianValueError(f"cannot write the value in the {dialect} dialect: {exc}") from None


def transcode(data: bytes | bytearray | memoryview, src: str, dst: str, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Every top-level value of `data`, one stream in dialect `src`, as one stream in dialect `dst`
    ("sofa" = SOFA/Caucho 3.x draft, "final" = Hessian 2.0 / hessian-lite).

    Values, int vs long, type names of lists and maps, class names with their field order, nulls and
    shared references (including cycles) are kept; class definitions, type names and back-references are
    renumbered for the new stream. The output is what the `dst` Java writer writes for those values, so
    transcoding to the same dialect puts a stream into Java's canonical form. Malformed input and values
    `dst` cannot carry raise `HessianError`.
    """
    reader = new_reader(src, data, faithful=True, max_depth=max_depth)
    writer = new_writer(dst, faithful=True)
    values = []
    while not reader.at_end:
        values.append(reader.read_value())
    write_values(writer, values, dst)
    return writer.getvalue()
