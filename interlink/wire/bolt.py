"""SOFA Bolt framing (V1 and V2, optional CRC32) for a relay, sans-I/O.

A relay forwards most frames untouched, so the decoder keeps each frame's exact bytes (`BoltFrame.raw`)
and the header map as its raw bytes; the fields the gateway rewrites (request id, timeout, header map)
have helpers that splice the wire bytes instead of re-encoding the frame, recomputing the CRC32 trailer
when the frame carries one. Nothing here decodes bodies (`content`): a Bolt call is routed on the fixed
header plus a few header-map keys (PROTOCOLS.md 1.12), so `header_get` reads one key without building
a dict.

Layouts, enumerations and CRC rules: ../shared/PROTOCOLS.md sections 1.2-1.4 and 1.8. Where the Java
implementation (sofa-bolt) and sofa-bolt-node disagree, this module follows Java: a V2 frame has a
CRC trailer iff ver1 == 2 and bit 0 of switch is set.

Errors: bytes from a peer that cannot be framed raise `BoltProtocolError` and nothing else. Frames built
by our own code that cannot be encoded raise a plain `ValueError` (a bug on our side, not the peer's).
The decoder checks framing only, not the header map inside a frame: Java reads the map per request and
answers a bad one with an error response, so a bad map is one call's failure, not the connection's. The
header-map functions raise `BoltProtocolError` when they meet one; callers turn that into a reply.
"""

from __future__ import annotations

import enum
import functools
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "BoltDecoder",
    "BoltFrame",
    "BoltProtocolError",
    "Codec",
    "CommandCode",
    "CommandType",
    "Proto",
    "ResponseStatus",
    "crc_present",
    "decode",
    "decode_header_map",
    "encode",
    "encode_header_map",
    "header_get",
    "header_rewrite",
    "header_scan",
    "header_set",
    "header_values",
    "heartbeat",
    "heartbeat_ack",
    "patch_request_id",
    "patch_timeout",
    "response_for",
    "with_request_id",
    "with_header",
]


# --- enumerations (PROTOCOLS.md 1.4) ---------------------------------------------------------------------


class Proto(enum.IntEnum):
    """First byte of every frame; it alone decides the layout of the rest."""

    V1 = 1
    V2 = 2


class CommandType(enum.IntEnum):
    RESPONSE = 0
    REQUEST = 1
    ONEWAY = 2


class CommandCode(enum.IntEnum):
    HEARTBEAT = 0  # request or ack, told apart by the type byte
    RPC_REQUEST = 1
    RPC_RESPONSE = 2


class Codec(enum.IntEnum):
    """Serializer ids (SOFARPC extension codes). The byte is opaque to a relay: any value is accepted."""

    HESSIAN2 = 1
    JAVA = 2
    HESSIAN2_LEGACY = 4  # deprecated SERIALIZE_CODE_HESSIAN2, not produced by current code
    PROTOBUF = 11
    JSON = 12
    MSGPACK = 13
    PROTOSTUFF = 14
    FURY2 = 22
    FORY = 23


class ResponseStatus(enum.IntEnum):
    """Java's `ResponseStatus.getValue()`. The hex jump from 0x0009 to 0x0010 is real: decimal 10..15 are
    not statuses, and a Java client throws on them, so the decoder rejects them too."""

    SUCCESS = 0x0000
    ERROR = 0x0001
    SERVER_EXCEPTION = 0x0002
    UNKNOWN = 0x0003
    SERVER_THREADPOOL_BUSY = 0x0004
    ERROR_COMM = 0x0005
    NO_PROCESSOR = 0x0006
    TIMEOUT = 0x0007
    CLIENT_SEND_ERROR = 0x0008
    CODEC_EXCEPTION = 0x0009
    CONNECTION_CLOSED = 0x0010
    SERVER_SERIAL_EXCEPTION = 0x0011
    SERVER_DESERIAL_EXCEPTION = 0x0012


PROTO_V1 = Proto.V1
PROTO_V2 = Proto.V2
TYPE_RESPONSE = CommandType.RESPONSE
TYPE_REQUEST = CommandType.REQUEST
TYPE_ONEWAY = CommandType.ONEWAY
CMD_HEARTBEAT = CommandCode.HEARTBEAT
CMD_RPC_REQUEST = CommandCode.RPC_REQUEST
CMD_RPC_RESPONSE = CommandCode.RPC_RESPONSE
CODEC_HESSIAN2 = Codec.HESSIAN2
CODEC_JAVA = Codec.JAVA
CODEC_PROTOBUF = Codec.PROTOBUF
CODEC_JSON = Codec.JSON

SOFA_REQUEST_CLASS = b"com.alipay.sofa.rpc.core.request.SofaRequest"
SOFA_RESPONSE_CLASS = b"com.alipay.sofa.rpc.core.response.SofaResponse"

DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
MAX_CLASS_LEN = 0x7FFF  # int16 on the wire (Java `short`)
MAX_HEADER_LEN = 0x7FFF
MAX_CONTENT_LEN = 0x7FFFFFFF
MAX_SWITCH = 127  # Java's ProtocolSwitch is a 7-bit set
CRC_SIZE = 4

# (type, cmdcode) pairs a correct peer sends. Java would also take a few odd ones (a oneway heartbeat, a
# request carrying cmdcode RPC_RESPONSE); nobody emits them, and a relay cannot answer them sensibly.
_VALID_COMMANDS = frozenset(
    {
        (CommandType.REQUEST, CommandCode.HEARTBEAT),
        (CommandType.REQUEST, CommandCode.RPC_REQUEST),
        (CommandType.ONEWAY, CommandCode.RPC_REQUEST),
        (CommandType.RESPONSE, CommandCode.HEARTBEAT),
        (CommandType.RESPONSE, CommandCode.RPC_RESPONSE),
    }
)
_RESPONSE, _REQUEST, _ONEWAY = 0, 1, 2  # plain ints for the decoder's inner loop
_STATUS_BY_VALUE: dict[int, ResponseStatus] = {status.value: status for status in ResponseStatus}
_SUCCESS = ResponseStatus.SUCCESS

# Fixed headers. Lengths are signed (Java short/short/int) so that negative values can be seen and refused.
_V1_REQUEST = struct.Struct(">BBHBiBihhi")  # proto type cmdcode ver2 id codec timeout classLen headerLen contentLen
_V1_RESPONSE = struct.Struct(">BBHBiBHhhi")  # ... status instead of timeout
_V2_REQUEST = struct.Struct(">BBBHBiBBihhi")  # proto ver1 type cmdcode ver2 id codec switch timeout lengths
_V2_RESPONSE = struct.Struct(">BBBHBiBBHhhi")
_CRC = struct.Struct(">I")
_I32 = struct.Struct(">i")

V1_REQUEST_HEADER_SIZE = _V1_REQUEST.size  # 22
V1_RESPONSE_HEADER_SIZE = _V1_RESPONSE.size  # 20
V2_REQUEST_HEADER_SIZE = _V2_REQUEST.size  # 24
V2_RESPONSE_HEADER_SIZE = _V2_RESPONSE.size  # 22

# Offsets of the fields the relay rewrites in place.
_REQUEST_ID_OFFSET = {1: 5, 2: 6}
_TIMEOUT_OFFSET = {1: 10, 2: 12}


class BoltProtocolError(ValueError):
    """The peer sent bytes that cannot be framed; the connection must be closed.

    Bolt has no resynchronisation point (no magic, no length prefix of its own), so after one bad frame
    every following byte is unframeable. `frames` holds the frames that were complete before the bad bytes
    in the same `feed()` call, so that the owner can still answer them before closing if it wishes.
    """

    def __init__(self, reason: str, frames: list[BoltFrame] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frames: list[BoltFrame] = frames if frames is not None else []


def crc_present(proto: int, ver1: int, switch: int) -> bool:
    """Java's rule, not sofa-bolt-node's: only ver1 == 2 with switch bit 0 carries a trailer."""
    return proto == PROTO_V2 and ver1 == 2 and bool(switch & 1)


# --- the frame ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class BoltFrame:
    """One Bolt command. Mutable so that the gateway can copy a request and change a field or two.

    Fields that a layout lacks keep neutral values: `ver1`/`switch` are 0 for V1, `status` is SUCCESS for
    requests and `timeout` is -1 for responses; `encode` ignores them. `has_crc` must agree with
    `crc_present(proto, ver1, switch)` (`encode` refuses a frame where it does not, rather than emit a
    frame the peer would frame differently). `raw` is what the decoder read; it is not updated when a
    field changes, so set it to None (or ignore it) once the frame has been edited.
    """

    proto: int
    type: int
    cmdcode: int
    request_id: int
    codec: int = CODEC_HESSIAN2
    ver1: int = 0
    ver2: int = 1
    switch: int = 0
    timeout: int = -1
    status: int = ResponseStatus.SUCCESS
    class_name: bytes = b""
    header: bytes = b""
    content: bytes = b""
    has_crc: bool = False
    raw: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def is_request(self) -> bool:
        """Oneway requests count: they are routed like any other request, only never answered."""
        return self.type != CommandType.RESPONSE

    @property
    def is_response(self) -> bool:
        return self.type == CommandType.RESPONSE

    @property
    def is_oneway(self) -> bool:
        return self.type == CommandType.ONEWAY

    @property
    def is_heartbeat(self) -> bool:
        return self.cmdcode == CommandCode.HEARTBEAT


# --- encoding ----------------------------------------------------------------------------------------------


def encode(frame: BoltFrame, request_id: int | None = None) -> bytes:
    """Wire bytes built from the fields (never from `raw`, which may be stale after an edit); under
    `request_id` instead of the frame's own when given (a request sent under an id of its connection)."""
    return _encode(frame, frame.header, frame.request_id if request_id is None else request_id)


def with_header(frame: BoltFrame, header: bytes) -> bytes:
    """The frame with another header map, without touching the frame object (the original request stays
    intact for logging and for answering the caller)."""
    return _encode(frame, header, frame.request_id)


def _encode(frame: BoltFrame, header: bytes, request_id: int) -> bytes:
    class_name = frame.class_name
    content = frame.content
    class_len, header_len, content_len = len(class_name), len(header), len(content)
    proto = frame.proto
    if (frame.type, frame.cmdcode) not in _VALID_COMMANDS:
        raise ValueError(f"type {frame.type!r} with cmdcode {frame.cmdcode!r} is not a Bolt command")
    if class_len > MAX_CLASS_LEN or header_len > MAX_HEADER_LEN or content_len > MAX_CONTENT_LEN:
        raise ValueError(
            f"class name ({class_len} B) and header ({header_len} B) must fit in int16, "
            f"content ({content_len} B) in int32"
        )
    is_response = frame.type == _RESPONSE
    if is_response and frame.status not in _STATUS_BY_VALUE:
        raise ValueError(f"response status {frame.status!r} is not a Bolt ResponseStatus")
    try:
        if proto == PROTO_V1:
            crc = False
            if is_response:
                fixed = _V1_RESPONSE.pack(
                    1, 0, frame.cmdcode, frame.ver2, request_id, frame.codec, frame.status,
                    class_len, header_len, content_len,
                )
            else:
                fixed = _V1_REQUEST.pack(
                    1, frame.type, frame.cmdcode, frame.ver2, request_id, frame.codec, frame.timeout,
                    class_len, header_len, content_len,
                )
        elif proto == PROTO_V2:
            ver1, switch = frame.ver1, frame.switch
            if ver1 not in (1, 2):
                raise ValueError(f"V2 ver1 must be 1 or 2, not {ver1!r}")
            if not 0 <= switch <= MAX_SWITCH:
                raise ValueError(f"V2 switch must be 0..{MAX_SWITCH}, not {switch!r}")
            crc = ver1 == 2 and bool(switch & 1)
            if is_response:
                fixed = _V2_RESPONSE.pack(
                    2, ver1, 0, frame.cmdcode, frame.ver2, request_id, frame.codec, switch, frame.status,
                    class_len, header_len, content_len,
                )
            else:
                fixed = _V2_REQUEST.pack(
                    2, ver1, frame.type, frame.cmdcode, frame.ver2, request_id, frame.codec, switch,
                    frame.timeout, class_len, header_len, content_len,
                )
        else:
            raise ValueError(f"unknown Bolt protocol code {proto!r}")
    except (struct.error, TypeError) as exc:
        raise ValueError(f"Bolt frame field out of range: {exc}") from exc
    if crc != frame.has_crc:
        raise ValueError(
            f"has_crc={frame.has_crc} contradicts proto={proto} ver1={frame.ver1} switch={frame.switch} "
            "(a CRC trailer is present iff proto 2, ver1 2 and switch bit 0)"
        )
    if not crc:
        return b"".join((fixed, class_name, header, content))
    checksum = zlib.crc32(content, zlib.crc32(header, zlib.crc32(class_name, zlib.crc32(fixed))))
    return b"".join((fixed, class_name, header, content, _CRC.pack(checksum)))


# --- relaying without re-encoding ----------------------------------------------------------------------------


def patch_request_id(raw: bytes, new_id: int) -> bytes:
    """A copy of a complete frame under another request id (every relayed call needs one, PROTOCOLS.md
    1.13), with the CRC trailer recomputed when there is one. One copy of the frame, no field decoding."""
    proto, _, crc = _frame_layout(raw)
    return _splice(raw, _REQUEST_ID_OFFSET[proto], _pack_i32(new_id, "request id"), crc)


def with_request_id(frame: BoltFrame, new_id: int) -> bytes:
    """A decoded frame's bytes under another request id (a response relayed to the caller that asked): its
    `raw` bytes with the id spliced in, as `patch_request_id` does, without reading their layout again (the
    decoder checked it); encoded from the fields when the frame has no `raw`."""
    if frame.raw is None:
        return encode(frame, new_id)
    return _splice(frame.raw, _REQUEST_ID_OFFSET[frame.proto], _pack_i32(new_id, "request id"), frame.has_crc)


def patch_timeout(raw: bytes, new_timeout_ms: int) -> bytes:
    """A copy of a complete request frame with the caller's remaining budget, so that the next hop does not
    wait longer than the caller will."""
    proto, is_response, crc = _frame_layout(raw)
    if is_response:
        raise ValueError("a response has no timeout field")
    return _splice(raw, _TIMEOUT_OFFSET[proto], _pack_i32(new_timeout_ms, "timeout"), crc)


def _pack_i32(value: int, what: str) -> bytes:
    try:
        return _I32.pack(value)
    except (struct.error, TypeError) as exc:
        raise ValueError(f"{what} {value!r} does not fit in int32") from exc


def _frame_layout(raw: bytes) -> tuple[int, bool, bool]:
    """(proto, is_response, has_crc) of a complete frame; refuses anything that is not exactly one frame,
    because splicing a field into the wrong offset would corrupt a connection silently."""
    size = len(raw)
    if size < 3:
        raise BoltProtocolError(f"{size} bytes are not a Bolt frame")
    proto = raw[0]
    if proto == 1:
        is_response = raw[1] == _RESPONSE
        layout = _V1_RESPONSE if is_response else _V1_REQUEST
        if size < layout.size:
            raise BoltProtocolError(f"{size} bytes are shorter than a Bolt V1 fixed header")
        values = layout.unpack_from(raw)
        crc = False
    elif proto == 2:
        is_response = raw[2] == _RESPONSE
        layout = _V2_RESPONSE if is_response else _V2_REQUEST
        if size < layout.size:
            raise BoltProtocolError(f"{size} bytes are shorter than a Bolt V2 fixed header")
        values = layout.unpack_from(raw)
        crc = values[1] == 2 and bool(values[7] & 1)
    else:
        raise BoltProtocolError(f"unknown Bolt protocol code 0x{proto:02x}")
    class_len, header_len, content_len = values[-3:]
    expected = layout.size + class_len + header_len + content_len + (CRC_SIZE if crc else 0)
    if class_len < 0 or header_len < 0 or content_len < 0 or expected != size:
        raise BoltProtocolError(f"{size} bytes are not one complete Bolt frame (its header says {expected})")
    return proto, is_response, crc


def _splice(raw: bytes, offset: int, value: bytes, crc: bool) -> bytes:
    view = memoryview(raw)
    after = offset + len(value)
    if not crc:
        return b"".join((view[:offset], value, view[after:]))
    body_end = len(raw) - CRC_SIZE
    checksum = zlib.crc32(view[after:body_end], zlib.crc32(value, zlib.crc32(view[:offset])))
    return b"".join((view[:offset], value, view[after:body_end], _CRC.pack(checksum)))


# --- decoding ------------------------------------------------------------------------------------------------


class BoltDecoder:
    """Frames from a byte stream cut at arbitrary places.

    `feed(data)` returns every frame completed by `data` and keeps the rest. The stream is a bytearray
    consumed from the front, so bytes are never copied again and again while a large frame trickles in;
    each complete frame is copied out once (into `BoltFrame.raw`, of which `class_name`, `header` and
    `content` are slices). When nothing is buffered, a `bytes` read is sliced directly, and a read that is
    exactly one frame becomes `raw` itself, without a copy.

    After a `BoltProtocolError` the decoder is unusable: Bolt cannot resynchronise, so the connection must
    be closed. Every later `feed` raises `BoltProtocolError` again.
    """

    __slots__ = ("max_frame_size", "_buffer", "_failure")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._failure: str | None = None

    @property
    def pending(self) -> bool:
        """Part of a frame is buffered: a connection that ends now ended mid-frame."""
        return bool(self._buffer)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held until the rest arrives."""
        return len(self._buffer)

    def discard(self) -> None:
        """Drop an incomplete frame now (its connection is gone), not when the decoder is collected."""
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[BoltFrame]:
        if self._failure is not None:
            raise BoltProtocolError(f"the stream already failed: {self._failure}")
        frames: list[BoltFrame] = []
        buffer = self._buffer
        try:
            if buffer:
                buffer += data
                consumed = self._split(buffer, frames)
                if consumed:
                    del buffer[:consumed]
            elif data:
                source = data if type(data) is bytes else bytes(data)
                consumed = self._split(source, frames)
                if consumed < len(source):
                    buffer += source[consumed:] if consumed else source
        except BoltProtocolError as exc:
            self._failure = exc.reason
            buffer.clear()
            exc.frames = frames
            raise
        return frames

    def _split(self, source: bytes | bytearray, frames: list[BoltFrame]) -> int:
        """Appends the complete frames at the start of `source`; returns how many bytes they took."""
        size = len(source)
        pos = 0
        while pos < size:
            proto = source[pos]
            available = size - pos
            if proto == PROTO_V1:
                if available < 2:
                    break
                command_type = source[pos + 1]
                if command_type == _RESPONSE:
                    layout = _V1_RESPONSE
                elif command_type == _REQUEST or command_type == _ONEWAY:
                    layout = _V1_REQUEST
                else:
                    raise BoltProtocolError(f"unknown Bolt command type {command_type}")
                if available < layout.size:
                    break
                if layout is _V1_RESPONSE:
                    _, _, cmdcode, ver2, request_id, codec, status, class_len, header_len, content_len = (
                        layout.unpack_from(source, pos)
                    )
                    timeout = -1
                else:
                    _, _, cmdcode, ver2, request_id, codec, timeout, class_len, header_len, content_len = (
                        layout.unpack_from(source, pos)
                    )
                    status = 0
                ver1 = switch = 0
                crc = False
            elif proto == PROTO_V2:
                if available < 2:
                    break
                ver1 = source[pos + 1]
                if ver1 != 1 and ver1 != 2:
                    raise BoltProtocolError(f"unknown Bolt V2 protocol version (ver1) {ver1}")
                if available < 3:
                    break
                command_type = source[pos + 2]
                if command_type == _RESPONSE:
                    layout = _V2_RESPONSE
                elif command_type == _REQUEST or command_type == _ONEWAY:
                    layout = _V2_REQUEST
                else:
                    raise BoltProtocolError(f"unknown Bolt command type {command_type}")
                if available < layout.size:
                    break
                if layout is _V2_RESPONSE:
                    _, _, _, cmdcode, ver2, request_id, codec, switch, status, class_len, header_len, content_len = (
                        layout.unpack_from(source, pos)
                    )
                    timeout = -1
                else:
                    _, _, _, cmdcode, ver2, request_id, codec, switch, timeout, class_len, header_len, content_len = (
                        layout.unpack_from(source, pos)
                    )
                    status = 0
                if switch > MAX_SWITCH:
                    raise BoltProtocolError(f"Bolt V2 switch 0x{switch:02x} has bits above the 7 defined")
                crc = ver1 == 2 and bool(switch & 1)
            else:
                raise BoltProtocolError(f"unknown Bolt protocol code 0x{proto:02x}")

            if (command_type, cmdcode) not in _VALID_COMMANDS:
                raise BoltProtocolError(f"Bolt command type {command_type} with cmdcode {cmdcode} is not defined")
            if class_len < 0 or header_len < 0 or content_len < 0:
                raise BoltProtocolError(
                    f"negative length in Bolt header (class {class_len}, header {header_len}, content {content_len})"
                )
            if command_type == _RESPONSE:
                try:
                    status = _STATUS_BY_VALUE[status]
                except KeyError:
                    raise BoltProtocolError(f"unknown Bolt response status 0x{status:04x}") from None
            else:
                status = _SUCCESS
            fixed = layout.size
            total = fixed + class_len + header_len + content_len + (CRC_SIZE if crc else 0)
            if total > self.max_frame_size:
                raise BoltProtocolError(f"Bolt frame of {total} bytes exceeds the limit of {self.max_frame_size}")
            end = pos + total
            if end > size:
                break

            if type(source) is bytes:
                raw = source if total == size else source[pos:end]
            else:
                raw = bytes(memoryview(source)[pos:end])
            if crc:
                (carried,) = _CRC.unpack_from(raw, total - CRC_SIZE)
                computed = zlib.crc32(memoryview(raw)[: total - CRC_SIZE])
                if carried != computed:
                    raise BoltProtocolError(
                        f"Bolt CRC32 mismatch (frame carries 0x{carried:08x}, bytes give 0x{computed:08x})"
                    )
            header_start = fixed + class_len
            content_start = header_start + header_len
            frames.append(
                BoltFrame(
                    proto,
                    command_type,
                    cmdcode,
                    request_id,
                    codec,
                    ver1,
                    ver2,
                    switch,
                    timeout,
                    status,
                    raw[fixed:header_start],
                    raw[header_start:content_start],
                    raw[content_start : content_start + content_len],
                    crc,
                    raw,
                )
            )
            pos = end
        return pos


def decode(data: bytes) -> BoltFrame:
    """Exactly one complete frame, for callers that already hold one (tests, stored vectors, replays)."""
    decoder = BoltDecoder(max_frame_size=max(len(data), DEFAULT_MAX_FRAME_SIZE))
    frames = decoder.feed(data)
    if len(frames) != 1 or decoder.pending:
        raise BoltProtocolError(f"{len(data)} bytes are not exactly one Bolt frame")
    return frames[0]


# --- header map (SOFA SimpleMapSerializer, PROTOCOLS.md 1.8) ------------------------------------------------


def _entries(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(entry start, key start, key length, value start, value length) per entry; length -1 is null.

    Stricter than Java, which reads any negative length as null: only -1 is ever written, so anything else
    means the bytes are not a header map."""
    size = len(data)
    pos = 0
    while pos < size:
        start = pos
        if pos + 4 > size:
            raise BoltProtocolError(f"header map: truncated key length at offset {pos}")
        (key_len,) = _I32.unpack_from(data, pos)
        key_start = pos = pos + 4
        if key_len > 0:
            pos += key_len
        elif key_len < -1:
            raise BoltProtocolError(f"header map: key length {key_len} at offset {start}")
        if pos + 4 > size:
            raise BoltProtocolError(f"header map: truncated entry at offset {start}")
        (value_len,) = _I32.unpack_from(data, pos)
        value_start = pos = pos + 4
        if value_len > 0:
            pos += value_len
            if pos > size:
                raise BoltProtocolError(f"header map: value of entry at offset {start} runs past the end")
        elif value_len < -1:
            raise BoltProtocolError(f"header map: value length {value_len} at offset {start}")
        yield start, key_start, key_len, value_start, value_len


def decode_header_map(data: bytes) -> dict[str, str]:
    """All entries as text, null keys/values dropped as Java does, the last of duplicate keys winning."""
    result: dict[str, str] = {}
    try:
        for _, key_start, key_len, value_start, value_len in _entries(data):
            if key_len >= 0 and value_len >= 0:
                key = str(data[key_start : key_start + key_len], "utf-8")
                result[key] = str(data[value_start : value_start + value_len], "utf-8")
    except UnicodeDecodeError as exc:
        raise BoltProtocolError(f"header map: invalid UTF-8 ({exc.reason})") from None
    return result


def encode_header_map(items: Mapping[str, str | None] | Iterable[tuple[str | None, str | None]]) -> bytes:
    """Entries whose key or value is None are skipped, and an empty map is b"" (headerLen 0), as Java's
    encoder does: peers read both the same way, and the empty form is what captured frames contain."""
    pairs = items.items() if isinstance(items, Mapping) else items
    parts: list[bytes] = []
    for key, value in pairs:
        if key is None or value is None:
            continue
        key_bytes = key.encode("utf-8")
        value_bytes = value.encode("utf-8")
        parts.append(_I32.pack(len(key_bytes)))
        parts.append(key_bytes)
        parts.append(_I32.pack(len(value_bytes)))
        parts.append(value_bytes)
    return b"".join(parts)


class HeaderKeys:
    """The keys a caller reads from header maps, prepared once (a module constant), for header_scan and
    header_values. With `prefix`, header_scan also finds the entries whose key starts with it (the keys a
    gateway replaces or drops on the way upstream), and with `spans_of_keys` the entries of `keys` too (all of
    them, or those listed)."""

    __slots__ = ("keys", "index", "lengths", "prefix", "span_keys")

    def __init__(self, keys: tuple[bytes, ...], prefix: bytes | None = None, *,
                 spans_of_keys: bool | tuple[bytes, ...] = False) -> None:
        self.keys = keys
        self.index = {key: position for position, key in enumerate(keys)}
        self.lengths = frozenset(len(key) for key in keys)
        self.prefix = prefix
        self.span_keys = frozenset(keys if spans_of_keys is True else spans_of_keys or ())


HeaderSpan = tuple[int, int, bytes]  # one entry of a header map: (start, end, key)


def header_scan(data: bytes, keys: HeaderKeys) -> tuple[list[bytes | None], list[HeaderSpan]]:
    """One pass over a header map, without decoding it: the values of `keys` as raw bytes (None when absent
    or null), and where the entries under `keys.prefix` (and those of `keys`, with `keys.spans_of_keys`) are,
    so that `header_rewrite` can edit the map without reading it again.

    The request path needs three or four keys per call and most maps hold more; comparing bytes in place
    skips building and UTF-8-decoding the whole dict. Consistent with `decode_header_map` (the last non-null
    value of a duplicated key wins); it checks the map's structure but not its UTF-8.
    """
    found: list[bytes | None] = [None] * len(keys.keys)
    spans: list[HeaderSpan] = []
    index, lengths, prefix, span_keys = keys.index, keys.lengths, keys.prefix, keys.span_keys
    if prefix is not None and prefix not in data:
        prefix = None  # no key under it (one substring search instead of a test per key)
    size = len(data)
    pos = 0
    unpack = _I32.unpack_from
    while pos < size:  # inline rather than over _entries: a generator costs more than the lookups
        start = pos
        if pos + 8 > size:
            raise BoltProtocolError(f"header map: truncated entry at offset {pos}")
        (key_len,) = unpack(data, pos)
        key_start = pos + 4
        if key_len < -1:
            raise BoltProtocolError(f"header map: key length {key_len} at offset {pos}")
        pos = key_start + key_len if key_len > 0 else key_start
        if pos + 4 > size:
            raise BoltProtocolError(f"header map: truncated entry at offset {key_start - 4}")
        (value_len,) = unpack(data, pos)
        value_start = pos + 4
        if value_len < -1:
            raise BoltProtocolError(f"header map: value length {value_len} at offset {pos}")
        pos = value_start + value_len if value_len > 0 else value_start
        if pos > size:
            raise BoltProtocolError(f"header map: value at offset {value_start} runs past the end")
        if key_len < 0:
            continue  # a null key is never one of ours
        if key_len in lengths:
            key = data[key_start : key_start + key_len]
            position = index.get(key)
            if position is not None:
                if value_len >= 0:
                    found[position] = data[value_start:pos]
                if key in span_keys:
                    spans.append((start, pos, key))
                    continue
        if prefix is not None and data.startswith(prefix, key_start, key_start + key_len):
            spans.append((start, pos, data[key_start : key_start + key_len]))
    return found, spans


def header_values(data: bytes, keys: HeaderKeys) -> list[bytes | None]:
    """The values of `keys` (header_scan's first half)."""
    return header_scan(data, keys)[0]


@functools.lru_cache(maxsize=64)
def _one_key(key: bytes) -> HeaderKeys:
    return HeaderKeys((key,))


def header_get(data: bytes, key: bytes) -> bytes | None:
    """The value of one key (header_values for a single key)."""
    return header_values(data, _one_key(key))[0]


def header_set(data: bytes, updates: Mapping[bytes, bytes | None], drop_prefix: bytes | None = None) -> bytes:
    """The map with `updates` applied (None removes a key) and every other entry kept byte for byte, in
    place. An updated key keeps the position of its first occurrence and loses its duplicates; new keys go
    at the end in `updates` order. Keys starting with `drop_prefix` that `updates` does not set are removed.
    Used to strip and stamp identity keys without re-encoding what the caller sent (keys we do not
    understand, null entries, their order)."""
    if drop_prefix is not None and drop_prefix not in data:
        drop_prefix = None  # nothing to drop (one substring search instead of a test per key)
    _, spans = header_scan(data, HeaderKeys(tuple(updates), drop_prefix, spans_of_keys=True))
    if not updates and drop_prefix is None:
        return data
    return header_rewrite(data, spans, updates, drop_prefix)


def header_rewrite(
    data: bytes, spans: list[HeaderSpan], updates: Mapping[bytes, bytes | None], drop_prefix: bytes | None
) -> bytes:
    """header_set, for a map already scanned: `spans` (from header_scan) must cover the keys of `updates`,
    under the scan's prefix or as its keys (with spans_of_keys), and `drop_prefix` must be that prefix."""
    parts: list[bytes] = []
    done: set[bytes] = set()
    kept_from = 0  # start of the run of untouched entries not yet copied
    for start, end, key in spans:
        if key in updates:
            parts.append(data[kept_from:start])
            kept_from = end
            value = updates[key]
            if value is not None and key not in done:
                parts.append(header_entry(key, value))
            done.add(key)
        elif drop_prefix is not None and key.startswith(drop_prefix):
            parts.append(data[kept_from:start])
            kept_from = end
    parts.append(data[kept_from:] if kept_from else data)
    for key, value in updates.items():
        if value is not None and key not in done:
            parts.append(header_entry(key, value))
    return b"".join(parts)


def header_entry(key: bytes, value: bytes) -> bytes:
    """One header-map entry (key and value, each with its length)."""
    return b"".join((_I32.pack(len(key)), key, _I32.pack(len(value)), value))


# --- builders --------------------------------------------------------------------------------------------------


def heartbeat(
    request_id: int, proto: int = PROTO_V1, ver1: int = 1, switch: int = 0, timeout: int = -1
) -> BoltFrame:
    """A keep-alive for an upstream connection, in that connection's protocol (a Java peer pins the
    protocol of the first frame). `timeout` -1 is what Java sends; sofa-bolt-node sends 3000; nobody reads it.
    ver1 and switch do not exist in V1 and are dropped there."""
    if proto == PROTO_V1:
        ver1 = switch = 0
    return BoltFrame(
        proto,
        CommandType.REQUEST,
        CommandCode.HEARTBEAT,
        request_id,
        CODEC_HESSIAN2,
        ver1=ver1,
        switch=switch,
        timeout=timeout,
        has_crc=crc_present(proto, ver1, switch),
    )


def heartbeat_ack(request: BoltFrame) -> BoltFrame:
    """Heartbeats are hop-by-hop: every accepted connection answers its own, in the request's protocol,
    version, switch and CRC setting (what both Java and node do)."""
    return _answer(request, CommandCode.HEARTBEAT, ResponseStatus.SUCCESS, b"", b"", b"", None)


def response_for(
    request: BoltFrame,
    status: int,
    class_name: bytes = b"",
    header: bytes = b"",
    content: bytes = b"",
    codec: int | None = None,
) -> BoltFrame:
    """A reply the caller can match and frame: its request id, its protocol version, switch and CRC
    presence, and (unless given) its codec. A heartbeat request gets a heartbeat ack."""
    cmdcode = CommandCode.HEARTBEAT if request.cmdcode == CommandCode.HEARTBEAT else CommandCode.RPC_RESPONSE
    return _answer(request, cmdcode, ResponseStatus(status), class_name, header, content, codec)


def _answer(
    request: BoltFrame,
    cmdcode: int,
    status: ResponseStatus,
    class_name: bytes,
    header: bytes,
    content: bytes,
    codec: int | None,
) -> BoltFrame:
    proto = request.proto
    ver1, switch = (request.ver1, request.switch) if proto == PROTO_V2 else (0, 0)
    return BoltFrame(
        proto,
        CommandType.RESPONSE,
        cmdcode,
        request.request_id,
        request.codec if codec is None else codec,
        ver1=ver1,
        ver2=1,
        switch=switch,
        timeout=-1,
        status=status,
        class_name=class_name,
        header=header,
        content=content,
        has_crc=crc_present(proto, ver1, switch),
    )
