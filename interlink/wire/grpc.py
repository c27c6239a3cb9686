"""gRPC over HTTP/2, the parts a proxy needs, sans-I/O.

- Length-Prefixed-Message framing (1 byte compressed flag + uint32 length + message), reassembled across
  DATA frames whose boundaries are unrelated to message boundaries;
- `grpc-timeout` parse and format (at most 8 digits + unit H M S m u n);
- `grpc-message` percent-encoding (UTF-8, bytes outside 0x20..0x7e and '%' become %XX);
- Trailers-Only error responses, as header lists ready for an HTTP/2 encoder.

Reference: grpc/grpc doc/PROTOCOL-HTTP2.md (see ../shared/PROTOCOLS.md section 2.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from interlink.model import Refusal, Status
from interlink.wire import link_headers, tracecontext
from interlink.wire.cache import BoundedCache

PREFIX = struct.Struct(">BI")
PREFIX_SIZE = PREFIX.size  # 5
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024

CONTENT_TYPE: bytes = b"application/grpc"


class GrpcFramingError(Exception):
    """A gRPC message stream that no correct peer would send."""


# --- Length-Prefixed-Message -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    compressed: bool
    data: bytes


def encode_message(data: bytes, compressed: bool = False) -> bytes:
    return PREFIX.pack(1 if compressed else 0, len(data)) + data


class MessageDecoder:
    """Reassembles gRPC messages from DATA payloads of any size and alignment.

    `feed(chunk)` returns the messages completed by that chunk. `pending` tells whether a partial message
    is buffered (a stream that ends there was truncated).
    """

    __slots__ = ("_buffer", "_max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self._max_message = max_message

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Message]:
        buffer = self._buffer
        buffer += chunk
        messages: list[Message] = []
        offset = 0
        while len(buffer) - offset >= PREFIX_SIZE:
            flag, length = PREFIX.unpack_from(buffer, offset)
            if flag > 1:
                raise GrpcFramingError(f"compressed flag is {flag}; only 0 and 1 are defined")
            if length > self._max_message:
                raise GrpcFramingError(
                    f"message of {length} bytes exceeds the limit of {self._max_message} bytes"
                )
            end = offset + PREFIX_SIZE + length
            if end > len(buffer):
                break
            messages.append(Message(flag == 1, bytes(buffer[offset + PREFIX_SIZE : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return messages


# --- grpc-timeout ---------------------------------------------------------------------------------------

_UNIT_SECONDS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def parse_timeout(value: bytes | str) -> float:
    """Return the timeout in seconds. Raises ValueError for anything the spec does not allow."""
    raw = value.encode("ascii") if isinstance(value, str) else bytes(value)
    digits = raw[:-1]
    if not raw or not 1 <= len(digits) <= 8 or not digits.isdigit():
        raise ValueError(f"grpc-timeout {raw!r} is not 1-8 ASCII digits followed by a unit")
    unit = _UNIT_SECONDS.get(raw[-1])
    if unit is None:
        raise ValueError(f"grpc-timeout {raw!r} has an unknown unit (use H, M, S, m, u or n)")
    return int(digits) * unit


_MAX_AMOUNT = 99_999_999  # at most 8 digits


def format_timeout(seconds: float) -> bytes:
    """grpc-timeout for the next hop: the time left rounded *down* to 4 significant digits (at most 0.1%
    less), in the coarsest unit that writes it exactly in at most 8 digits; "1n" when nothing is left.

    Never longer than what is left: a hop never promises the next one more time than the caller gave (the
    gateway enforces the exact deadline itself in any case). In exchange for the 0.1%, the header takes one
    value per 10 ms of a 30 s deadline instead of a new one per call, so the header blocks that carry it
    repeat and HPACK's caches on both hops keep hitting (a 30 s deadline sent as "29999987u" made every
    request head a cache miss)."""
    nanos = int(seconds * 1e9) if seconds > 0 else 0  # floor
    if nanos < 1_000_000_000:
        return _format_timeout(nanos) if nanos > 0 else b"1n"
    # From 1 s on, 4 significant digits are whole milliseconds or coarser: the value depends only on the
    # milliseconds, and calls with the same deadline send the same few (remembered per millisecond).
    millis = nanos // 1_000_000
    value = _TIMEOUT_OF_MILLIS.get(millis)
    if value is None:
        value = _format_timeout(nanos)
        _TIMEOUT_OF_MILLIS.put(millis, value, 64)
    return value


_TIMEOUT_OF_MILLIS: BoundedCache[int, bytes] = BoundedCache(max_entries=4096, max_bytes=1 << 18, max_item=64)


def _format_timeout(nanos: int) -> bytes:
    step = 10 ** max(0, len(str(nanos)) - 4)
    nanos = nanos // step * step
    for unit, unit_nanos in _UNITS_COARSEST_FIRST:
        amount, rest = divmod(nanos, unit_nanos)
        if not rest and 0 < amount <= _MAX_AMOUNT:
            return b"%d%s" % (amount, unit)
    seconds = nanos / 1e9  # too large for an exact unit: the finest unit that fits, rounded down
    for unit, scale in ((b"S", 1.0), (b"M", 1 / 60), (b"H", 1 / 3600)):
        amount = int(seconds * scale)
        if amount <= _MAX_AMOUNT:
            return b"%d%s" % (amount, unit)
    return b"%dH" % _MAX_AMOUNT


_UNITS_COARSEST_FIRST = ((b"H", 3_600_000_000_000), (b"M", 60_000_000_000), (b"S", 1_000_000_000), (b"m", 1_000_000), (b"u", 1_000), (b"n", 1))


# --- grpc-message -----------------------------------------------------------------------------------------

_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}


def encode_grpc_message(text: str) -> bytes:
    data = text.encode("utf-8")
    if all(byte in _SAFE for byte in data):
        return data
    return b"".join(bytes((byte,)) if byte in _SAFE else b"%%%02X" % byte for byte in data)


def decode_grpc_message(value: bytes) -> str:
    """Percent-decode leniently: a malformed %XX sequence is kept as it is (the spec asks receivers to)."""
    if b"%" not in value:
        return value.decode("utf-8", "replace")
    out = bytearray()
    i, n = 0, len(value)
    while i < n:
        byte = value[i]
        if byte == 0x25 and _is_hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


# --- responses the gateway makes itself -------------------------------------------------------------------


def trailers_only(status: Status, message: str, http_status: bytes = b"200") -> list[tuple[bytes, bytes]]:
    """A complete Trailers-Only error response (send with END_STREAM). Gateway-made gRPC errors use HTTP
    200; only requests that are not gRPC at all get 405 / 415 (the spec's SHOULD)."""
    headers = [
        (b":status", http_status),
        (b"content-type", CONTENT_TYPE),
        (b"grpc-status", b"%d" % status),
    ]
    if message:
        headers.append((b"grpc-message", encode_grpc_message(message)))
    return headers


_STATUS_OF_VALUE = {b"%d" % status: status for status in Status}  # grpc-status as senders write it


def status_of(headers: list[tuple[bytes, bytes]]) -> Status | None:
    """The grpc-status of a response's trailers (or Trailers-Only HEADERS); None when absent, UNKNOWN when it
    is not a number of a known status."""
    for name, value in headers:
        if name == b"grpc-status":
            status = _STATUS_OF_VALUE.get(value)
            if status is not None:
                return status
            try:  # another spelling of a number (" 0", "00"), or not one
                return Status(int(value))
            except ValueError:
                return Status.UNKNOWN
    return None


# An HTTP/2 stream reset, as the gRPC status a caller sees (gRPC's own mapping, PROTOCOLS.md).
_STATUS_OF_RESET = {
    0x7: Status.UNAVAILABLE,  # REFUSED_STREAM: never processed, safe to retry
    0x8: Status.CANCELLED,  # CANCEL
    0xB: Status.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: Status.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


def status_of_reset(error_code: int) -> Status:
    return _STATUS_OF_RESET.get(int(error_code), Status.INTERNAL)


def status_trailers(status: Status, message: str) -> list[tuple[bytes, bytes]]:
    """Trailers ending a response whose headers were already sent."""
    headers = [(b"grpc-status", b"%d" % status)]
    if message:
        headers.append((b"grpc-message", encode_grpc_message(message)))
    return headers


def split_path(path: bytes) -> tuple[str, str] | None:
    """`/package.Service/method` -> ("package.Service", "method"); None when the path has another shape.

    Triple also allows `/{contextPath}/{interface}/{method}`; the service is then everything between the
    first and the last slash, which is what a route table keyed by service name needs.
    """
    if len(path) < 4 or path[0] != 0x2F:
        return None
    cut = path.rfind(b"/")
    if cut <= 1 or cut == len(path) - 1:
        return None
    try:
        return path[1:cut].decode("ascii"), path[cut + 1 :].decode("ascii")
    except UnicodeDecodeError:
        return None


# --- request heads ----------------------------------------------------------------------------------------

CONSUMER_APP = b"tri-consumer-appname"  # Triple / Dubbo consumer application name

_TRI_TRACE_ID, _SOFA_TRACE_ID = tracecontext.TRIPLE_TRACE_ID
_TRACE_PREFIXES = frozenset({b"tra", b"sof", b"tri"})  # traceparent, sofa-traceid, tri-trace-*: one test for most headers

# Never forwarded: HTTP/2 pseudo-headers are rebuilt, these are hop-by-hop or rewritten per hop.
_NOT_FORWARDED = frozenset(
    {b"te", b"grpc-timeout", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What the gateway needs from a gRPC request's HEADERS; `metadata` is what may travel on. Shared by the
    calls whose heads are the same (parse_request_head remembers them): read-only."""

    path: bytes
    service: str
    method: str
    authority: bytes
    timeout: float | None
    metadata: tuple[tuple[bytes, bytes], ...]
    consumer_app: str | None
    caller_app: str | None  # as stamped by a peer gateway (only believed on the peer link)
    # Trace context and load-test mark (the call core decides what they mean; `traceparent` comes with the head
    # from read_request_head, out of the metadata: each hop sends its own). The SOFA trace id and baggage
    # travel on unchanged.
    sofa_trace_id: bytes | None = None  # sofa-traceid, else tri-trace-traceid
    sys_baggage: bytes | None = None  # tri-trace-sys-baggage (SOFATracer system baggage)
    loadtest_mark: bytes | None = None  # x-interlink-loadtest (a caller may set it; a peer gateway does)
    target_zone: str | None = None  # x-interlink-target-zone: routing hints (a caller may set them)
    unit: str | None = None  # x-interlink-unit


# Request heads (and their traceparent) by their header lists: callers send the same heads call after call
# (bounded like every cache keyed by what callers send; a head is kept the second time it is seen).
_HEADS: BoundedCache[tuple[tuple[bytes, bytes], ...], tuple[RequestHead, bytes | None]] = BoundedCache(
    max_entries=2048, max_bytes=2 << 20, max_item=4096
)


def parse_request_head(headers: list[tuple[bytes, bytes]]) -> RequestHead:
    """The head of a gRPC request (Refusal when it is not one)."""
    return read_request_head(headers)[0]


def read_request_head(headers: list[tuple[bytes, bytes]]) -> tuple[RequestHead, bytes | None]:
    """The head of a gRPC request and its `traceparent` (Refusal when it is not a gRPC request).

    A traceparent differs in every call. When it is the last field, as gateways send it, the head is found by
    the fields before it, which repeat; the answer is the same (the last traceparent of a list counts)."""
    if headers and headers[-1][0] == tracecontext.TRACEPARENT:
        return _head_of(headers[:-1])[0], headers[-1][1]
    return _head_of(headers)


def _head_of(headers: list[tuple[bytes, bytes]]) -> tuple[RequestHead, bytes | None]:
    key = tuple(headers)
    head = _HEADS.get(key)
    if head is None:
        head = _parse_request_head(headers)
        _HEADS.put(key, head, 256 + sum(len(name) + len(value) + 32 for name, value in headers))
    return head


def _parse_request_head(headers: list[tuple[bytes, bytes]]) -> tuple[RequestHead, bytes | None]:
    path = authority = method = content_type = timeout_raw = None
    consumer_app = caller_app = traceparent = sofa_trace_id = tri_trace_id = sys_baggage = loadtest_mark = None
    target_zone = unit = None
    metadata: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":method":
                method = value
            continue
        if name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            timeout_raw = value
            continue
        elif name in _NOT_FORWARDED:
            continue
        elif name.startswith(link_headers.PREFIX):  # the gateway's own keys: never forwarded as metadata
            if name == link_headers.CALLER_APP:
                caller_app = value.decode("ascii", "replace")
            elif name == link_headers.LOADTEST:
                loadtest_mark = value
            elif name == link_headers.TARGET_ZONE:
                target_zone = value.decode("ascii", "replace")[:100]
            elif name == link_headers.UNIT:
                unit = value.decode("ascii", "replace")[:100]
            continue
        elif name == CONSUMER_APP:
            consumer_app = value.decode("ascii", "replace")
        elif name[:3] in _TRACE_PREFIXES:
            if name == tracecontext.TRACEPARENT:
                traceparent = value
                continue
            if name == _SOFA_TRACE_ID:
                sofa_trace_id = value
            elif name == _TRI_TRACE_ID:
                tri_trace_id = value
            elif name == tracecontext.TRIPLE_SYS_BAGGAGE:
                sys_baggage = value
        metadata.append((name, value))
    if method != b"POST":
        raise Refusal(Status.UNIMPLEMENTED, "gRPC requests must use POST", b"405")
    if content_type is None or not content_type.startswith(CONTENT_TYPE):
        raise Refusal(Status.INTERNAL, "content-type must be application/grpc[+proto|+json|...]", b"415")
    target = split_path(path or b"")
    if target is None:
        raise Refusal(Status.UNIMPLEMENTED, f"path {path!r} is not /<service>/<method>")
    timeout = None
    if timeout_raw is not None:
        try:
            timeout = parse_timeout(timeout_raw)
        except ValueError as exc:
            raise Refusal(Status.INTERNAL, str(exc)) from None
    head = RequestHead(
        path=path,  # type: ignore[arg-type]
        service=target[0],
        method=target[1],
        authority=_host_only(authority or b""),
        timeout=timeout,
        metadata=tuple(metadata),
        consumer_app=consumer_app,
        caller_app=caller_app,
        sofa_trace_id=sofa_trace_id or tri_trace_id,
        sys_baggage=sys_baggage,
        loadtest_mark=loadtest_mark,
        target_zone=target_zone,
        unit=unit,
    )
    return head, traceparent


def _host_only(authority: bytes) -> bytes:
    if authority.startswith(b"["):
        return authority.partition(b"]")[0] + b"]"
    host, _, port = authority.rpartition(b":")
    return host.lower() if host and port.isdigit() else authority.lower()


def request_headers(
    head: RequestHead,
    *,
    scheme: bytes,
    authority: bytes,
    timeout: float | None,
    stamps: list[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """HEADERS for the next hop: pseudo-headers first, then te and grpc-timeout, then metadata."""
    headers = [
        (b":method", b"POST"),
        (b":scheme", scheme),
        (b":path", head.path),
        (b":authority", authority),
        (b"te", b"trailers"),
    ]
    if timeout is not None:
        headers.append((b"grpc-timeout", format_timeout(timeout)))
    headers.extend(head.metadata)
    headers.extend(stamps)
    return headers
