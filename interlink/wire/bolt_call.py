"""SOFA Bolt to and from the protocol-neutral `Call`/`Reply`, sans-I/O (PROTOCOLS.md 1.9, 1.10, 3).

The Bolt side of translation. Header maps and `requestProps` become canonical metadata (SOFARPC's own key
names, case kept); bodies become payloads: codec 11 (protobuf) content is an IDL message byte for byte,
codec 1 (hessian2) content is a SofaRequest/SofaResponse stream, converted to and from Triple wrapper
messages by wire/triple_wrapper.py only when the other side needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from interlink.model import RPC_ID, SYS_BAGGAGE, TRACE_ID, Call, Identity, Payload, PayloadKind, Refusal, Reply, Status
from interlink.wire import bolt, link_headers, sofarpc, tracecontext, triple_wrapper
from interlink.wire.cache import BoundedCache
from interlink.wire.hessian2 import HessianError, HessianObject, SofaHessianReader

SERVICE = "service"
TARGET_SERVICE = "sofa_head_target_service"
METHOD_NAME = "sofa_head_method_name"
TARGET_APP = "sofa_head_target_app"
APP = "app"
RESPONSE_ERROR = "sofa_head_response_error"
NEW_TRACE = "new_rpc_trace_context"
# Keys a Call carries in its own fields (or that are rebuilt per hop), never as metadata.
_NOT_METADATA = frozenset({SERVICE, TARGET_SERVICE, METHOD_NAME, TARGET_APP, APP, RESPONSE_ERROR, "sofa_head_method_argsigs",
                           "traceparent"})  # (each hop stamps its own traceparent)

# What reading a request's head can fail with; and what translating a body can fail with besides a
# Refusal (bodies the codecs cannot read or write).
UNREADABLE = (bolt.BoltProtocolError, HessianError)
UNTRANSLATABLE = (HessianError, triple_wrapper.TranslationError, bolt.BoltProtocolError, ValueError)

# Bolt response statuses a provider (or a Bolt peer) can answer with, as gRPC statuses (PROTOCOLS.md 3.3).
_STATUS_OF_BOLT = {
    bolt.ResponseStatus.SERVER_EXCEPTION: Status.UNKNOWN,
    bolt.ResponseStatus.UNKNOWN: Status.UNKNOWN,
    bolt.ResponseStatus.NO_PROCESSOR: Status.UNIMPLEMENTED,
    bolt.ResponseStatus.SERVER_THREADPOOL_BUSY: Status.RESOURCE_EXHAUSTED,
    bolt.ResponseStatus.TIMEOUT: Status.DEADLINE_EXCEEDED,
    bolt.ResponseStatus.CODEC_EXCEPTION: Status.INTERNAL,
    bolt.ResponseStatus.SERVER_SERIAL_EXCEPTION: Status.INTERNAL,
    bolt.ResponseStatus.SERVER_DESERIAL_EXCEPTION: Status.INTERNAL,
}


# --- requests --------------------------------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: a frozen dataclass costs an object.__setattr__ per field, per call
class BoltRequestHead:
    """What the gateway needs from a Bolt request, read once per call from its header map (and, only when
    the map lacks them, from the SofaRequest head at the start of a hessian2 body; never the arguments).

    `app` is who the request says is calling: on a local caller's connection its own `app` key (or the
    SofaRequest's caller app), on a peer link the app the calling gateway stamped (link_headers.CALLER_APP).
    `spans` is where the map holds link keys (x-interlink-*), so that the request is restamped on its way
    upstream without reading its map again (bolt.header_rewrite); heads of requests with the same map may
    share it (read only)."""

    service: str | None  # the unique name interface:version[:uniqueId] (`service`, else sofa_head_target_service)
    method: str | None
    app: str | None
    timeout: float | None  # seconds; None when the caller set none
    spans: list[bolt.HeaderSpan]
    # Trace context and load-test mark, as in grpc.RequestHead (gateway/tracing.py decides what they mean).
    traceparent: bytes | None = None
    sofa_trace_id: bytes | None = None  # rpc_trace_context.sofaTraceId, else new_rpc_trace_context's tcid
    sys_baggage: bytes | None = None  # rpc_trace_context.sysPenAttrs, else the whole new_rpc_trace_context
    loadtest_mark: bytes | None = None  # x-interlink-loadtest
    target_zone: str | None = None  # x-interlink-target-zone: routing hints (a caller may set them)
    unit: str | None = None  # x-interlink-unit
    # The SofaRequest's requestProps when its head was read from the body (sofa-rpc-node's hessian2 callers put
    # their props only there, Java's go to the header map too): what routing rules read when the map lacks a key.
    props: Mapping[str, object] | None = None


# The keys a request's head is read from: service, target service, method, then the caller's app (its own
# `app` key on a local caller's connection; the stamped one, and the stamped method first, on a peer link).
# Then the trace context and the load-test mark (the same on both): their entries' places are kept too
# (spans_of_keys), so that our own traceparent replaces the caller's instead of adding a second one.
_TRACE_KEYS = (tracecontext.TRACEPARENT, TRACE_ID.encode(), NEW_TRACE.encode(), SYS_BAGGAGE.encode(), link_headers.LOADTEST,
               link_headers.TARGET_ZONE, link_headers.UNIT)
_LOCAL_KEYS = bolt.HeaderKeys((SERVICE.encode(), TARGET_SERVICE.encode(), METHOD_NAME.encode(), APP.encode(), *_TRACE_KEYS),
                              link_headers.PREFIX, spans_of_keys=(tracecontext.TRACEPARENT,))
_LINK_KEYS = bolt.HeaderKeys((SERVICE.encode(), TARGET_SERVICE.encode(), METHOD_NAME.encode(), link_headers.CALLER_APP,
                              link_headers.METHOD, *_TRACE_KEYS), link_headers.PREFIX,
                             spans_of_keys=(tracecontext.TRACEPARENT,))
_TRACE_AT = {False: 4, True: 5}  # where the trace keys start in each list
_HEADS = sofarpc.RequestHeadCache()

# What a header map says (service, method, app, spans), remembered per exact map bytes, one cache per kind of
# connection: callers of a service send the same map over and over, so most reads are one lookup. (A map that
# carries per-call values, such as the trace ids of Java callers, is scanned every time; its miss costs one
# lookup more.)
_HeaderRead = tuple[str | None, str | None, str | None, list[bolt.HeaderSpan], tuple]
_LOCAL_READS: BoundedCache[bytes, _HeaderRead] = BoundedCache(max_entries=1024, max_bytes=2 << 20, max_item=4096)
_LINK_READS: BoundedCache[bytes, _HeaderRead] = BoundedCache(max_entries=1024, max_bytes=2 << 20, max_item=4096)


def read_request_head(request: bolt.BoltFrame, *, from_link: bool) -> BoltRequestHead:
    """The head of `request`; `from_link`: it came from a peer gateway (trust its stamps, not the caller's
    own keys). Raises BoltProtocolError or HessianError for a header map or head that cannot be read."""
    service, method, app, spans, trace = _read_header(request.header, from_link)
    need_body = method is None if from_link else method is None or app is None
    props = None
    if need_body and request.codec == bolt.CODEC_HESSIAN2 and request.content and service is not None:
        body_head = _HEADS.read(request.content)
        method = method or body_head.method_name
        if not from_link:
            props = body_head.request_props
            app = app or sofarpc.caller_app(body_head)
            if trace[1] is None and trace[2] is None:  # sofa-rpc-node sends its trace context only in the body
                trace = (trace[0], *_body_trace(props), *trace[3:])
            if trace[4] is None and trace[5] is None:  # ... and its routing hints
                trace = (*trace[:4], _prop_hint(props, link_headers.TARGET_ZONE_TEXT),
                         _prop_hint(props, link_headers.UNIT_TEXT))
    timeout = request.timeout / 1000 if request.timeout > 0 else None
    return BoltRequestHead(service, method, app, timeout, spans, *trace, props)  # type: ignore[call-arg]


def _body_trace(props: Mapping[str, object]) -> tuple[bytes | None, bytes | None]:
    """(SOFA trace id, system baggage) from a SofaRequest's requestProps: the `rpc_trace_context` map (or
    its flattened keys), else `new_rpc_trace_context`."""
    context = props.get("rpc_trace_context")
    context = context if isinstance(context, Mapping) else {}
    trace_id = context.get("sofaTraceId", props.get(TRACE_ID))
    baggage = context.get("sysPenAttrs", props.get(SYS_BAGGAGE))
    new_context = props.get(NEW_TRACE)
    if not isinstance(trace_id, str) and isinstance(new_context, str):
        return (tracecontext.sofa_trace_id_of_new_context(new_context.encode()),
                (baggage if isinstance(baggage, str) else new_context).encode())
    return (trace_id.encode() if isinstance(trace_id, str) and trace_id else None,
            baggage.encode() if isinstance(baggage, str) and baggage else None)


# A gateway's traceparent, as it stamps it: the map's last entry (11-byte key, 55-byte value). It differs in every
# call; the entries before it repeat, and are what the reads are remembered by.
_TRACE_ENTRY = bolt.header_entry(tracecontext.TRACEPARENT, b"")[:-4] + b"\x00\x00\x00\x37"
_TRACE_TAIL = len(_TRACE_ENTRY) + 55


def _trailing_traceparent(header: bytes) -> int:
    """Where a gateway's traceparent entry starts when it is the map's last one, else -1. (Whether the entries
    before it form a map of their own is for the caller to find out: only then is the map them plus it.)"""
    cut = len(header) - _TRACE_TAIL
    return cut if cut > 0 and header.startswith(_TRACE_ENTRY, cut) else -1


def _read_header(header: bytes, from_link: bool) -> _HeaderRead:
    cut = _trailing_traceparent(header)
    if cut > 0:
        # When the entries before it scan on their own, they end where an entry ends: the map is them plus
        # that traceparent (else the whole map is scanned, below).
        try:
            service, method, app, spans, trace = _read_whole_header(header[:cut], from_link)
        except bolt.BoltProtocolError:
            pass
        else:
            traceparent = header[cut + len(_TRACE_ENTRY) :]
            return service, method, app, [*spans, (cut, len(header), tracecontext.TRACEPARENT)], (traceparent, *trace[1:])
    return _read_whole_header(header, from_link)


def _read_whole_header(header: bytes, from_link: bool) -> _HeaderRead:
    reads = _LINK_READS if from_link else _LOCAL_READS
    read = reads.get(header)
    if read is None:
        values, spans = bolt.header_scan(header, _LINK_KEYS if from_link else _LOCAL_KEYS)
        method = (_text(values[4]) or _text(values[2])) if from_link else _text(values[2])
        at = _TRACE_AT[from_link]
        traceparent, sofa_trace_id, new_trace, sys_baggage, loadtest, target_zone, unit = values[at:]
        if sofa_trace_id is None and new_trace is not None:
            sofa_trace_id = tracecontext.sofa_trace_id_of_new_context(new_trace)
        trace = (traceparent, sofa_trace_id, sys_baggage or new_trace, loadtest, _hint(target_zone), _hint(unit))
        read = (_text(values[0] or values[1]), method, _text(values[3]), spans, trace)
        reads.put(header, read, 2 * len(header) + 64 * len(spans))
    return read


def request_props(request: bolt.BoltFrame, head: BoltRequestHead) -> Mapping[str, object] | None:
    """The SofaRequest's requestProps of a hessian2 request (None for another codec, or an unreadable body):
    what the head read, else the body head (cached: read once per distinct head bytes)."""
    if head.props is not None:
        return head.props
    if request.codec != bolt.CODEC_HESSIAN2 or not request.content:
        return None
    try:
        return _HEADS.read(request.content).request_props
    except UNREADABLE:
        return None


def _prop_hint(props: Mapping[str, object], key: str) -> str | None:
    value = props.get(key)
    return value[:100] if isinstance(value, str) and value else None


def _hint(value: bytes | None) -> str | None:
    """A routing hint as grpc.read_request_head keeps it (at most 100 characters)."""
    return value.decode("ascii", "replace")[:100] if value else None


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None



def call_from_bolt(request: bolt.BoltFrame, interface: str, deadline: float | None, head: BoltRequestHead | None = None) -> Call:
    """A Bolt request as a Call: method, target app, caller app and metadata from the header map, and for
    hessian2 from the SofaRequest head too (sofa-rpc-node puts them only there); the method and app of
    `head` (read_request_head) when given. Refusal for a request that names no method or uses a codec
    other than hessian2/protobuf."""
    items, method, target_app, app = _call_header(request.header)
    metadata = dict(items)
    if head is not None:  # already read once for routing: the same answer, without reading it again
        method, app = head.method or method, head.app or app
    if request.codec == bolt.CODEC_HESSIAN2:
        body_head = sofarpc.read_request_head(request.content)
        method = method or body_head.method_name
        target_app = target_app or body_head.target_app
        app = app or sofarpc.caller_app(body_head)
        for key, value in _flatten(body_head.request_props):  # type: ignore[arg-type]
            if key not in _NOT_METADATA:
                metadata.setdefault(key, value)
        payload = Payload(PayloadKind.SOFA_HESSIAN, request.content)
    elif request.codec == bolt.CODEC_PROTOBUF:
        payload = Payload(PayloadKind.PROTOBUF, request.content)
    else:
        raise Refusal(Status.INTERNAL, f"Bolt codec {request.codec} cannot be translated (hessian2 and protobuf can)")
    if not method:
        raise Refusal(Status.INTERNAL, "the request names no method (header sofa_head_method_name)")
    _trace_from_new_context(metadata)
    return Call(
        service=interface,
        method=method,
        protocol="bolt",
        caller=Identity(site="", app=app) if app else None,
        deadline=deadline,
        metadata=metadata,
        target_app=target_app,
        payload=payload,
    )


def request_frame(
    call: Call, *, unique_name: str, codec: str, timeout_ms: int, stamps: Mapping[str, str | None]
) -> bolt.BoltFrame:
    """A Bolt V1 request for `call` to a provider that takes `codec` bodies. The header map carries what
    Java SOFARPC sends (service, target service, method, target app, app, flattened props); a hessian2 body
    carries the same props in SofaRequest.requestProps (sofa-rpc-node reads only those)."""
    payload = call.payload
    assert payload is not None
    app = call.caller.app if call.caller is not None else None
    if codec == "protobuf":
        if payload.kind != PayloadKind.PROTOBUF:
            raise Refusal(
                Status.UNIMPLEMENTED,
                f"the Bolt providers of {unique_name} take protobuf bodies, but the call carries a {payload.kind.value} "
                "payload; export the service with codec: hessian2 for wrapper-mode (Hessian) callers",
            )
        content, codec_id = payload.data, bolt.CODEC_PROTOBUF
    else:
        if payload.kind != PayloadKind.WRAPPER:
            raise Refusal(
                Status.UNIMPLEMENTED,
                f"the Bolt providers of {unique_name} take hessian2 bodies, but the call is an IDL (protobuf) call; "
                "export the service with codec: protobuf for IDL callers",
            )
        props: dict[str, object] = _nest({k: v for k, v in call.metadata.items()})
        if app:
            props[APP] = app
        _, content = triple_wrapper.wrapper_to_sofa_request(
            payload.data, method=call.method, target_service=unique_name, target_app=call.target_app, request_props=props
        )
        codec_id = bolt.CODEC_HESSIAN2
    return bolt.BoltFrame(
        bolt.PROTO_V1,
        bolt.TYPE_REQUEST,
        bolt.CMD_RPC_REQUEST,
        0,
        codec_id,
        timeout=timeout_ms,
        class_name=bolt.SOFA_REQUEST_CLASS,
        header=_request_header(unique_name, call.method, call.target_app, app, call.metadata, stamps),
        content=content,
    )


# The header map's first entries per (unique name, method, target app, app): a caller's calls repeat them.
_REQUEST_HEAD_ENTRIES: BoundedCache[tuple[str, str, str | None, str | None], bytes] = BoundedCache(
    max_entries=1024, max_bytes=1 << 20, max_item=2048
)
_HEAD_KEYS = frozenset({SERVICE, TARGET_SERVICE, METHOD_NAME, TARGET_APP, APP})


def _request_header(unique_name: str, method: str, target_app: str | None, app: str | None,
                    metadata: Mapping[str, str], stamps: Mapping[str, str | None]) -> bytes:
    """The header map of a translated request: who is called and by whom, then the call's metadata, then our
    stamps (a None value: left out). A map is its entries one after the other, so the first ones are
    remembered and the rest, which carries the per-call trace context, is encoded per call."""
    if not (_HEAD_KEYS.isdisjoint(metadata) and _HEAD_KEYS.isdisjoint(stamps) and metadata.keys().isdisjoint(stamps)):
        # a key given twice (not from the Triple adapter, which keeps these names out of metadata): the later wins
        header: dict[str, str | None] = dict(_head_entries(unique_name, method, target_app, app))
        header.update(metadata)
        header.update(stamps)
        return bolt.encode_header_map(header)
    key = (unique_name, method, target_app, app)
    head = _REQUEST_HEAD_ENTRIES.get(key)
    if head is None:
        head = bolt.encode_header_map(_head_entries(unique_name, method, target_app, app))
        _REQUEST_HEAD_ENTRIES.put(key, head, 2 * len(head) + 128)
    return head + bolt.encode_header_map([*metadata.items(), *stamps.items()])


def _head_entries(unique_name: str, method: str, target_app: str | None,
                  app: str | None) -> tuple[tuple[str, str | None], ...]:
    return ((SERVICE, unique_name), (TARGET_SERVICE, unique_name), (METHOD_NAME, method), (TARGET_APP, target_app),
            (APP, app))


# --- responses -------------------------------------------------------------------------------------------


def reply_from_bolt(response: bolt.BoltFrame, serialize: str | None) -> Reply:
    """A provider's Bolt response as a Reply; `serialize` is the wrapper serializeType the Triple caller
    used (None for IDL callers), so that a hessian2 return value is converted once, straight into it."""
    header = bolt.decode_header_map(response.header) if response.header else {}
    metadata = {k: v for k, v in header.items() if k != RESPONSE_ERROR and not k.startswith(link_headers.PREFIX_TEXT)}
    stamped = header.get(link_headers.STATUS_TEXT)
    if response.status != bolt.ResponseStatus.SUCCESS:
        status = _STATUS_OF_BOLT.get(response.status, Status.UNAVAILABLE)  # type: ignore[call-overload]
        name = bolt.ResponseStatus(response.status).name
        if response.codec == bolt.CODEC_HESSIAN2:
            detail = _exception_message(response.content)
        else:  # sofa-rpc-node sends the bare message with protobuf
            detail = response.content.decode("utf-8", "replace") or None
        return Reply(status, f"provider answered Bolt status {name}" + (f": {detail}" if detail else ""), metadata=metadata)
    if response.codec == bolt.CODEC_PROTOBUF:
        if header.get(RESPONSE_ERROR) == "true":
            return Reply(_stamped(stamped), _protobuf_error_text(response.content), metadata=metadata)
        return Reply(Status.OK, payload=Payload(PayloadKind.PROTOBUF, response.content), metadata=metadata)
    if serialize is None:
        raise Refusal(Status.INTERNAL, "a hessian2 response cannot answer an IDL (protobuf) call")
    result, wrapper = triple_wrapper.sofa_response_to_wrapper(response.content, serialize)
    metadata.update({k: str(v) for k, v in (result.response_props or {}).items() if isinstance(k, str)})
    if result.is_error:
        return Reply(_stamped(stamped), result.error_msg or "the provider answered isError", metadata=metadata)
    if result.is_exception and serialize != triple_wrapper.SERIALIZE_DUBBO:
        # SOFA Triple keeps only the message of a business exception (grpc-status UNKNOWN).
        return Reply(Status.UNKNOWN, result.exception_message or "business exception", metadata=metadata)
    return Reply(
        Status.OK, payload=Payload(PayloadKind.WRAPPER, wrapper, serialize), metadata=metadata, exception=result.is_exception
    )


# Errors for callers whose body is not hessian2 (no SofaResponse can be written for them), as Bolt statuses.
_BOLT_STATUS_OF = {
    Status.UNIMPLEMENTED: bolt.ResponseStatus.NO_PROCESSOR,
    Status.RESOURCE_EXHAUSTED: bolt.ResponseStatus.SERVER_THREADPOOL_BUSY,
    Status.DEADLINE_EXCEEDED: bolt.ResponseStatus.TIMEOUT,
    Status.INTERNAL: bolt.ResponseStatus.CODEC_EXCEPTION,
}


def error_frame(request: bolt.BoltFrame, status: Status, text: str, header: Mapping[str, str] = {},
                unprocessed: bool = False) -> bolt.BoltFrame:
    """An error answer SOFARPC clients understand best (PROTOCOLS.md 3.3): for hessian2 SofaRequests a
    SUCCESS frame carrying SofaResponse{isError: true, errorMsg}, as Java SOFARPC itself answers; otherwise
    a Bolt status with the text as UTF-8 content (what sofa-rpc-node sends with protobuf, and shows).
    `unprocessed`: the gateway refused it before any provider saw it (link_headers.UNPROCESSED)."""
    entries = {**header, link_headers.STATUS_TEXT: status.name, RESPONSE_ERROR: "true"}
    if unprocessed:
        entries[link_headers.UNPROCESSED_TEXT] = "1"
    encoded = bolt.encode_header_map(entries)
    if request.codec == bolt.CODEC_HESSIAN2 and request.class_name == bolt.SOFA_REQUEST_CLASS:
        return bolt.response_for(
            request, bolt.ResponseStatus.SUCCESS, bolt.SOFA_RESPONSE_CLASS, encoded, sofarpc.sofa_error_response(text)
        )
    content = text.encode("utf-8") if request.codec == bolt.CODEC_PROTOBUF else b""
    bolt_status = _BOLT_STATUS_OF.get(status, bolt.ResponseStatus.SERVER_EXCEPTION)
    return bolt.response_for(request, bolt_status, bolt.SOFA_RESPONSE_CLASS, encoded, content)


def response_frame(reply: Reply, request: bolt.BoltFrame) -> bolt.BoltFrame:
    """The Bolt response to `request` for a Reply (PROTOCOLS.md 3.2): protobuf content unchanged, a
    wrapper's value as a SofaResponse in the SOFA dialect (reply metadata as its responseProps and as the
    header map), errors as `error_frame` makes them."""
    props = {k: v for k, v in reply.metadata.items() if not k.startswith(link_headers.PREFIX_TEXT)}
    if reply.status != Status.OK or reply.payload is None:
        return error_frame(request, reply.status if reply.status != Status.OK else Status.INTERNAL, reply.message, props)
    if request.codec == bolt.CODEC_PROTOBUF:
        if reply.payload.kind != PayloadKind.PROTOBUF:
            raise Refusal(Status.INTERNAL, f"a {reply.payload.kind.value} reply cannot answer a protobuf call")
        content = reply.payload.data
    else:
        if reply.payload.kind != PayloadKind.WRAPPER:
            raise Refusal(Status.INTERNAL, "an IDL (protobuf) reply cannot answer a hessian2 call")
        content = triple_wrapper.wrapper_response_to_sofa_response(
            reply.payload.data, exception=reply.exception, response_props=props or None
        )
    return bolt.response_for(request, bolt.ResponseStatus.SUCCESS, bolt.SOFA_RESPONSE_CLASS,
                             _response_header(tuple(props.items()), reply.exception), content)


# Response header maps per (props, business exception): a provider's answers repeat them.
_RESPONSE_HEADERS: BoundedCache[tuple, bytes] = BoundedCache(max_entries=1024, max_bytes=1 << 20, max_item=4096)


def _response_header(props: tuple[tuple[str, str], ...], exception: bool) -> bytes:
    key = (props, exception)
    header = _RESPONSE_HEADERS.get(key)
    if header is None:
        header = bolt.encode_header_map({**dict(props), RESPONSE_ERROR: "true" if exception else "false"})
        _RESPONSE_HEADERS.put(key, header, 2 * len(header) + 64)
    return header


# --- helpers ---------------------------------------------------------------------------------------------


def _flatten(props: Mapping[object, object], prefix: str = "") -> list[tuple[str, str]]:
    """requestProps as header-map entries, as Java does: nested maps become `outer.inner` keys."""
    items: list[tuple[str, str]] = []
    for key, value in props.items():
        if not isinstance(key, str) or value is None:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items.extend(_flatten(value, name + "."))
        elif isinstance(value, (str, int, float, bool)):
            items.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return items


def _nest(flat: Mapping[str, str]) -> dict[str, object]:
    """The inverse of `_flatten` for the known nested props (`rpc_trace_context.*`, baggage maps)."""
    props: dict[str, object] = {}
    for key, value in flat.items():
        outer, dot, inner = key.partition(".")
        if dot and outer in ("rpc_trace_context", "rpc_req_baggage"):
            nested = props.setdefault(outer, {})
            if isinstance(nested, dict):
                nested[inner] = value
        else:
            props[key] = value
    return props


# What a header map gives a Call (metadata, method, target app, app), remembered per map: a caller's maps repeat.
# A gateway's trailing traceparent is never metadata, so a map ending in one is remembered by what precedes it.
_CallHeader = tuple[tuple[tuple[str, str], ...], str | None, str | None, str | None]
_CALL_HEADERS: BoundedCache[bytes, _CallHeader] = BoundedCache(max_entries=1024, max_bytes=2 << 20, max_item=8192)


def _call_header(header: bytes) -> _CallHeader:
    if not header:
        return (), None, None, None
    cut = _trailing_traceparent(header)
    if cut > 0:
        try:
            return _call_header_of(header[:cut])
        except bolt.BoltProtocolError:
            pass  # the entries before it are not a map of their own: read the whole map
    return _call_header_of(header)


def _call_header_of(header: bytes) -> _CallHeader:
    read = _CALL_HEADERS.get(header)
    if read is None:
        values = bolt.decode_header_map(header)
        items = tuple((key, value) for key, value in values.items()
                      if key not in _NOT_METADATA and not key.startswith(link_headers.PREFIX_TEXT))
        read = (items, values.get(METHOD_NAME), values.get(TARGET_APP), values.get(APP))
        _CALL_HEADERS.put(header, read, 2 * len(header) + 128)
    return read


def _trace_from_new_context(metadata: dict[str, str]) -> None:
    """`new_rpc_trace_context` (tcid=...&spid=...): trace and span id for callers that send only it."""
    context = metadata.get(NEW_TRACE)
    if not context or TRACE_ID in metadata:
        return
    pairs = dict(part.partition("=")[::2] for part in context.split("&") if "=" in part)
    if pairs.get("tcid"):
        metadata[TRACE_ID] = pairs["tcid"]
    if pairs.get("spid"):
        metadata.setdefault(RPC_ID, pairs["spid"])


def _stamped(name: str | None) -> Status:
    if name and name in Status.__members__:
        return Status[name]
    return Status.UNKNOWN


def _exception_message(content: bytes) -> str | None:
    """The message of a serialized Throwable (SERVER_EXCEPTION bodies), best effort."""
    try:
        value = SofaHessianReader(content).read_value()
    except HessianError:
        return None
    if isinstance(value, HessianObject):
        message = value.fields.get("detailMessage")
        return f"{value.class_name}: {message}" if isinstance(message, str) else value.class_name
    return None


def _protobuf_error_text(content: bytes) -> str:
    if content[:1] == b"\x0a":
        length, offset = _read_varint(content, 1)
        if length is not None and offset + length == len(content):
            return content[offset:].decode("utf-8", "replace")
    return content.decode("utf-8", "replace") or "the provider answered with an error"


def _read_varint(data: bytes, offset: int) -> tuple[int | None, int]:
    value = shift = 0
    while offset < len(data) and shift < 64:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
    return None, offset


# --- the peer link's own frames -------------------------------------------------------------------------

# Bolt has no way to cancel a request. Between two interlink gateways (ALPN "bolt" is ours), the caller's
# gateway tells the other one that a call was given up (deadline passed, caller gone) with a oneway
# request carrying only this header: the receiving gateway drops the call if it has not dispatched it
# (always so when both arrive in one read) and stops waiting for it otherwise.


def cancel_frame(request_id: int) -> bytes:
    """The link frame that cancels `request_id` (an id of the connection it is sent on)."""
    return bolt.encode(bolt.BoltFrame(
        proto=bolt.PROTO_V1, type=bolt.TYPE_ONEWAY, cmdcode=bolt.CMD_RPC_REQUEST, request_id=0,
        header=bolt.encode_header_map({link_headers.CANCEL_TEXT: str(request_id)}),
    ))


def cancelled_id(frame: bolt.BoltFrame) -> int | None:
    """The request id a link cancel frame names, or None when `frame` is not one."""
    if frame.type != bolt.TYPE_ONEWAY or frame.content or not frame.header:
        return None
    try:
        value = bolt.header_get(frame.header, link_headers.CANCEL)
    except bolt.BoltProtocolError:
        return None
    if value is None or not value.isdigit():
        return None
    return int(value)
