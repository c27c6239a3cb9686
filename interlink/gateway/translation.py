"""Translation: the codec step a call picks at routing time when its caller and its providers speak
different protocols. It happens once, at the provider-side gateway, through `Call`/`Reply` (the two wire
adapters are wire/bolt_call.py and wire/triple_call.py):

    Bolt caller, Triple provider:  Bolt request -> Call -> Triple HEADERS + one message (protobuf body
                                   unchanged, or the SofaRequest split into a TripleRequestWrapper);
                                   the response -> Reply -> Bolt response (boltlegs.BoltDownstream.answer)
    Triple caller, Bolt provider:  the one request message -> Call -> Bolt request (protobuf content, or a
                                   SofaRequest built from the wrapper); the response -> Reply -> gRPC
                                   response (h2legs.H2Downstream.answer)

Bolt is request/response only: a Triple call that sends a second message is refused with UNIMPLEMENTED.
Deadlines cross both ways (grpc-timeout <-> Bolt timeout, reduced by the time spent here); errors map as
PROTOCOLS.md 3.3 proposes, and a body that cannot be translated is answered with INTERNAL, never guessed.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from interlink.model import Call, PayloadKind, Refusal, Status
from interlink.net.h2link import Headers
from interlink.routes import ExportRoute
from interlink.wire import bolt, bolt_call, grpc, triple_call, triple_wrapper, triple_wrapper_pb2

_SERIALIZE_OF_FLAVOUR = {"sofa": triple_wrapper.SERIALIZE_SOFA, "dubbo": triple_wrapper.SERIALIZE_DUBBO}


def triple_request(
    call: Call, route: ExportRoute, stamps: list[tuple[bytes, bytes | None]], timeout: float | None
) -> tuple[Headers, bytes, str | None]:
    """The Triple request for a call from a Bolt caller: HEADERS, the one gRPC message (framed), and the
    wrapper serializeType (None for IDL providers). Refusal when it cannot be made."""
    payload = call.payload
    assert payload is not None
    serialize = None
    try:
        if payload.kind == PayloadKind.SOFA_HESSIAN:
            serialize = _SERIALIZE_OF_FLAVOUR.get(route.flavour)
            if serialize is None:
                raise Refusal(
                    Status.UNIMPLEMENTED,
                    f"{route.service} is exported from IDL (protobuf) gRPC providers; a hessian2 Bolt call cannot be "
                    "translated to it: call it with the protobuf codec, or export it with flavour: sofa or dubbo",
                )
            _, message = triple_wrapper.sofa_request_to_wrapper(payload.data, serialize)
        else:
            message = payload.data
    except bolt_call.UNTRANSLATABLE as exc:
        raise Refusal(Status.INTERNAL, f"cannot translate the request to Triple: {exc}") from None
    headers = triple_call.request_headers(
        call,
        authority=route.service.encode(),
        timeout=timeout,
        flavour=route.flavour,
        unique_name=route.bolt_name,
        version=route.version,
        unique_id=route.unique_id,
        group=route.group,
        stamps=[(name, value) for name, value in stamps if value is not None],
    )
    return headers, grpc.encode_message(message), serialize


def bolt_request(
    call: Call, route: ExportRoute, stamps: list[tuple[bytes, bytes | None]], timeout_ms: int
) -> tuple[bolt.BoltFrame, str | None]:
    """The Bolt request for a call from a Triple caller, and the wrapper serializeType its answer is
    written in (None for IDL callers). Refusal when it cannot be made."""
    payload = call.payload
    assert payload is not None
    serialize = _serialize_type(payload.data) if payload.kind == PayloadKind.WRAPPER else None
    try:
        frame = bolt_call.request_frame(
            call, unique_name=route.bolt_name, codec=route.codec, timeout_ms=timeout_ms,
            stamps={name.decode(): value.decode() if value is not None else None for name, value in stamps},
        )
    except bolt_call.UNTRANSLATABLE as exc:
        raise Refusal(Status.INTERNAL, f"cannot translate the request to Bolt: {exc}") from None
    return frame, serialize


def response_content_type(route: ExportRoute) -> bytes:
    return b"application/grpc+proto" if route.flavour == "dubbo" else grpc.CONTENT_TYPE


def _serialize_type(message: bytes) -> str:
    """The serializeType of a TripleRequestWrapper, which the response is written in too."""
    try:
        return triple_wrapper_pb2.TripleRequestWrapper.FromString(message).serializeType  # type: ignore[attr-defined]
    except DecodeError as exc:
        raise Refusal(Status.INTERNAL, f"the request is not a TripleRequestWrapper: {exc}") from None

