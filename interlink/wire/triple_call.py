"""Triple (gRPC over HTTP/2, SOFA/Dubbo flavours) to and from the protocol-neutral `Call`/`Reply`, sans-I/O.

The Triple side of translation (PROTOCOLS.md 2.2, 3.1, 3.2): request heads and metadata, response heads,
messages and trailers. Metadata keys travel lowercase in gRPC; canonical keys keep SOFARPC's case, restored
from `tri-header-convert` (Dubbo's `{lowercase: Original}` map) or from the known-key table below.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

from interlink.model import BIZ_BAGGAGE, RPC_ID, SAMPLED, SYS_BAGGAGE, TRACE_ID, Call, Payload, PayloadKind, Reply, Status
from interlink.wire import grpc, link_headers, tracecontext
from interlink.wire.cache import BoundedCache

Headers = list[tuple[bytes, bytes]]
_Fields = tuple[tuple[bytes, bytes], ...]  # remembered fields (read only: each call's list is its own)

# Triple trace headers <-> canonical keys. On the way out each is written under every listed name (SOFA
# Triple servers read sofa-traceid first, Dubbo tri-trace-traceid).
TRACE_HEADERS: dict[str, tuple[bytes, ...]] = {
    TRACE_ID: tracecontext.TRIPLE_TRACE_ID,
    RPC_ID: tracecontext.TRIPLE_RPC_ID,
    BIZ_BAGGAGE: (b"tri-trace-biz-baggage",),
    SYS_BAGGAGE: (tracecontext.TRIPLE_SYS_BAGGAGE,),
    SAMPLED: (b"tri-trace-samp",),
}
_TRACE_OF_HEADER = {name: key for key, names in TRACE_HEADERS.items() for name in names}

SERVICE_VERSION = b"tri-service-version"
SERVICE_GROUP = b"tri-service-group"
HEADER_CONVERT = b"tri-header-convert"
EXCEPTION_CODE = b"tri-exception-code"
CONSUMER_APP = b"tri-consumer-appname"
CURRENT_APP = b"tri-trace-current-app"
TARGET_SERVICE = b"sofa_head_target_service"
METHOD_NAME = b"sofa_head_method_name"
TARGET_APP = b"sofa_head_target_app"

# SOFARPC keys with capitals (PROTOCOLS.md 1.9): how a lowercase gRPC key is given its case back.
KNOWN_KEYS = {
    key.lower(): key
    for key in (
        TRACE_ID, RPC_ID, BIZ_BAGGAGE, SYS_BAGGAGE, SAMPLED,
        "rpc_trace_context.sofaCallerApp", "rpc_trace_context.sofaCallerZone", "rpc_trace_context.sofaCallerIdc",
        "rpc_trace_context.sofaCallerIp", "rpc_trace_context.sofaCallerUnit",
    )
}

# Never copied between a Call's metadata and gRPC headers: rebuilt per hop, or carried by Call fields.
_RESERVED = frozenset(
    {
        b"content-type", b"user-agent", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding",
        b"accept-encoding", b"grpc-status", b"grpc-message", b"grpc-status-details-bin",
        SERVICE_VERSION, SERVICE_GROUP, HEADER_CONVERT, EXCEPTION_CODE, CONSUMER_APP, CURRENT_APP,
        TARGET_SERVICE, METHOD_NAME, TARGET_APP, b"tri-type", b"tri-trace-protocol-type", b"tri-trace-invoke-type",
        b"service", b"app", b"grpc-version", b"traceparent",
    }
)
_METADATA_KEY = re.compile(rb"[0-9a-z_.\-]+")


# --- requests --------------------------------------------------------------------------------------------


def metadata_from_headers(pairs: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], str | None]:
    """Canonical metadata from gRPC request/trailer metadata; also the consumer app if one was named."""
    pairs = list(pairs)
    restored = KNOWN_KEYS
    for name, value in pairs:
        if name == HEADER_CONVERT:
            restored = {**KNOWN_KEYS, **_header_convert(value)}
    metadata: dict[str, str] = {}
    app = None
    for name, value in pairs:
        if name == CONSUMER_APP:
            app = value.decode("utf-8", "replace")
            continue
        trace_key = _TRACE_OF_HEADER.get(name)
        if trace_key is not None:
            metadata.setdefault(trace_key, value.decode("utf-8", "replace"))
            continue
        if name in _RESERVED or name.startswith(b":") or name.startswith(link_headers.PREFIX):
            continue
        key = name.decode("ascii", "replace")
        if key.endswith("-bin"):
            # Bolt header values are strings: binary metadata crosses base64-encoded, under its -bin name.
            metadata[key] = base64.b64encode(value).decode("ascii")
        else:
            metadata[restored.get(key, key)] = value.decode("utf-8", "replace")
    return metadata, app


# metadata_headers per metadata (as its items): the metadata of a caller's calls repeats. Read only: callers copy.
_METADATA_HEADERS: BoundedCache[tuple[tuple[str, str], ...], tuple[tuple[bytes, bytes], ...]] = BoundedCache(
    max_entries=1024, max_bytes=2 << 20, max_item=8192
)


def metadata_headers(metadata: Mapping[str, str]) -> Headers:
    """gRPC metadata for canonical metadata: trace keys under their tri-/sofa- names, the others lowercase
    (their case kept in tri-header-convert), values that are not visible ASCII sent as `<key>-bin`. The trace
    id, which differs in every call, comes last."""
    trace_id = metadata.get(TRACE_ID)
    return [*_remembered_metadata_headers(metadata, trace_id), *_trace_id_headers(trace_id)]


def _remembered_metadata_headers(metadata: Mapping[str, str], trace_id: str | None) -> _Fields:
    """metadata_headers without the trace id's, remembered per metadata (a caller's calls repeat theirs)."""
    if trace_id is None:
        key = tuple(metadata.items())
    else:
        key = tuple([item for item in metadata.items() if item[0] != TRACE_ID])
    headers = _METADATA_HEADERS.get(key)
    if headers is None:
        headers = tuple(_metadata_headers(dict(key)))
        _METADATA_HEADERS.put(key, headers, sum(len(k) + len(v) for k, v in key) * 3 + 64 * len(headers) + 64)
    return headers


def _trace_id_headers(trace_id: str | None) -> Headers:
    if trace_id is None:
        return []
    encoded = trace_id.encode("utf-8")
    return [(name, encoded) for name in TRACE_HEADERS[TRACE_ID]] if _visible_ascii(encoded) else []


def _metadata_headers(metadata: Mapping[str, str]) -> Headers:
    headers: Headers = []
    convert: dict[str, str] = {}
    for key, value in metadata.items():
        names = TRACE_HEADERS.get(key)
        encoded = value.encode("utf-8")
        if names is not None:
            if _visible_ascii(encoded):
                headers.extend((name, encoded) for name in names)
            continue
        lower = key.lower()
        name = lower.encode("ascii", "replace")
        if not _METADATA_KEY.fullmatch(name) or name in _RESERVED or name.startswith(link_headers.PREFIX):
            continue
        if name.endswith(b"-bin"):
            try:
                headers.append((name, base64.b64decode(value, validate=True)))
            except ValueError:
                continue
            continue
        if lower != key and KNOWN_KEYS.get(lower) != key:
            convert[lower] = key
        if _visible_ascii(encoded):
            headers.append((name, encoded))
        else:
            headers.append((name + b"-bin", encoded))
    if convert:
        headers.append((HEADER_CONVERT, quote(json.dumps(convert, separators=(",", ":"))).encode("ascii")))
    return headers


def call_from_triple(head: grpc.RequestHead, message: bytes, payload_kind: PayloadKind, deadline: float | None) -> Call:
    """A unary Triple request (its head and its one message) as a Call. WRAPPER payloads keep their bytes;
    the serializeType is read by the Bolt adapter when it builds the SofaRequest."""
    metadata, app = metadata_from_headers(head.metadata)
    target_app = None
    for name, value in head.metadata:
        if name == TARGET_APP:
            target_app = value.decode("utf-8", "replace")
    return Call(
        service=head.service,
        method=head.method,
        protocol="triple",
        deadline=deadline,
        metadata=metadata,
        target_app=target_app,
        payload=Payload(payload_kind, message),
    )


def request_headers(
    call: Call,
    *,
    authority: bytes,
    timeout: float | None,
    flavour: str,
    unique_name: str,
    version: str | None,
    unique_id: str | None,
    group: str | None,
    stamps: Iterable[tuple[bytes, bytes]] = (),
) -> Headers:
    """HEADERS of a Triple request for `call`, in the provider's flavour (PROTOCOLS.md 2.2 and 3.1):
    tri-service-version is SOFA's uniqueId but Dubbo's version."""
    app = call.caller.app if call.caller is not None else None
    key: _HeadKey = (call.service, call.method, authority, flavour, unique_name, version, unique_id, group,
                     call.target_app, app)
    parts = _REQUEST_HEADS.get(key)
    if parts is None:
        parts = _request_head(*key)
        _REQUEST_HEADS.put(key, parts, sum(len(name) + len(value) for part in parts for name, value in part) * 3 + 256)
    before_timeout, after_timeout = parts
    headers = list(before_timeout)
    if timeout is not None:
        headers.append((b"grpc-timeout", grpc.format_timeout(timeout)))
    headers += after_timeout
    # The per-call trace context last (the encoder remembers the rest of the list): our stamps, SOFATracer's
    # trace id, our traceparent.
    metadata = call.metadata
    trace_id = metadata.get(TRACE_ID)
    headers += _remembered_metadata_headers(metadata, trace_id)
    stamps = list(stamps)
    traceparent = stamps.pop() if stamps and stamps[-1][0] == tracecontext.TRACEPARENT else None
    headers += stamps
    if trace_id is not None:
        headers += _trace_id_headers(trace_id)
    if traceparent is not None:
        headers.append(traceparent)
    return headers


# The fields of a request head that depend on the call's route, method and apps only, before and after its
# grpc-timeout: a caller's calls repeat them, and the same field objects make the encoder's lookup cheap.
_HeadKey = tuple[str, str, bytes, str, str, str | None, str | None, str | None, str | None, str | None]
_REQUEST_HEADS: BoundedCache[_HeadKey, tuple[_Fields, _Fields]] = BoundedCache(
    max_entries=1024, max_bytes=1 << 20, max_item=4096
)


def _request_head(
    service: str, method: str, authority: bytes, flavour: str, unique_name: str, version: str | None,
    unique_id: str | None, group: str | None, target_app: str | None, app: str | None,
) -> tuple[_Fields, _Fields]:
    content_type = b"application/grpc+proto" if flavour == "dubbo" else b"application/grpc"
    before_timeout = (
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", f"/{service}/{method}".encode()),
        (b":authority", authority),
        (b"te", b"trailers"),
        (b"content-type", content_type),
    )
    after_timeout: Headers = []
    if flavour == "sofa" and unique_id:
        after_timeout.append((SERVICE_VERSION, unique_id.encode()))
    elif flavour == "dubbo":
        if version:
            after_timeout.append((SERVICE_VERSION, version.encode()))
        if group:
            after_timeout.append((SERVICE_GROUP, group.encode()))
    if flavour != "dubbo":
        after_timeout += [(TARGET_SERVICE, unique_name.encode()), (METHOD_NAME, method.encode())]
    if target_app:
        after_timeout.append((TARGET_APP, target_app.encode()))
    if app:
        after_timeout += [(CONSUMER_APP, app.encode()), (CURRENT_APP, app.encode())]
    return before_timeout, tuple(after_timeout)


# --- responses -------------------------------------------------------------------------------------------


def reply_from_triple(headers: Headers, messages: list[bytes], trailers: Headers | None, serialize: str | None) -> Reply:
    """A complete Triple response (response HEADERS, its messages, trailers; Trailers-Only when `trailers`
    is None and `headers` carry grpc-status) as a Reply."""
    final = trailers if trailers is not None else headers
    found = grpc.status_of(final)
    status = Status.UNKNOWN if found is None else found
    metadata = _trailer_metadata(trailers)
    if status != Status.OK:
        message = ""
        for name, value in final:
            if name == b"grpc-message":
                message = grpc.decode_grpc_message(value)
                break
        return Reply(status, message or f"provider answered {status.name}", metadata=metadata)
    if len(messages) != 1:
        return Reply(Status.INTERNAL, f"the provider answered a unary call with {len(messages)} messages")
    exception = False
    for name, value in headers:
        if name == EXCEPTION_CODE and value not in (b"", b"0"):
            exception = True
    kind = PayloadKind.WRAPPER if serialize is not None else PayloadKind.PROTOBUF
    return Reply(Status.OK, payload=Payload(kind, messages[0], serialize), metadata=metadata, exception=exception)


# A provider's trailers as metadata, remembered per trailers: they repeat (often just grpc-status 0).
_TRAILER_METADATA: BoundedCache[tuple[tuple[bytes, bytes], ...], tuple[tuple[str, str], ...]] = BoundedCache(
    max_entries=1024, max_bytes=1 << 20, max_item=4096
)


def _trailer_metadata(trailers: Headers | None) -> dict[str, str]:
    if not trailers:
        return {}
    key = tuple(trailers)
    items = _TRAILER_METADATA.get(key)
    if items is None:
        items = tuple(metadata_from_headers(trailers)[0].items())
        _TRAILER_METADATA.put(key, items, 3 * sum(len(name) + len(value) for name, value in key) + 64)
    return dict(items)


def response(reply: Reply, content_type: bytes = grpc.CONTENT_TYPE) -> tuple[Headers, bytes | None, Headers]:
    """(response HEADERS, DATA or None, trailers) for a Reply; an error without a body is Trailers-Only
    (then the first element is empty and the trailers carry :status)."""
    trailing = metadata_headers(reply.metadata)
    if reply.status != Status.OK or reply.payload is None:
        status = reply.status if reply.status != Status.OK else Status.INTERNAL
        return [], None, grpc.trailers_only(status, reply.message) + trailing
    head: Headers = [(b":status", b"200"), (b"content-type", content_type)]
    if reply.exception:
        head.append((EXCEPTION_CODE, b"3"))  # Dubbo RpcException.BIZ_EXCEPTION
    trailers: Headers = [(b"grpc-status", b"0")] + trailing
    return head, grpc.encode_message(reply.payload.data), trailers


def _header_convert(value: bytes) -> dict[str, str]:
    try:
        table = json.loads(unquote(value.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(table, dict):
        return {}
    return {str(k): str(v) for k, v in table.items() if isinstance(k, str) and isinstance(v, str) and k == v.lower()}


def _visible_ascii(value: bytes) -> bool:
    return _VISIBLE_ASCII(value) is not None


_VISIBLE_ASCII = re.compile(rb"[\x20-\x7e]*").fullmatch
