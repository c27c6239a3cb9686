"""Bolt hessian2 bodies <-> Triple wrapper messages (../shared/PROTOCOLS.md 2.3, 3.1-3.5), sans-I/O.

A Bolt codec-1 request body is one Hessian stream in the SOFA (3.x draft) dialect: the `SofaRequest`
object, then one top-level value per argument. A Triple wrapper-mode request is a `TripleRequestWrapper`
(protos/triple_wrapper.proto) whose `args` are independent Hessian streams, one per argument, in the
dialect its `serializeType` names:

    serializeType   who                               dialect of each arg / of the response data
    "hessian2"      SOFARPC Triple, generic mode      sofa  (SOFA/Caucho 3.x draft, as in Bolt bodies)
    "hessian4"      Dubbo (its name for hessian2)     final (Hessian 2.0, hessian-lite)

Going from one to the other therefore needs more than byte slicing (PROTOCOLS.md 3.4): an argument may
use a class definition, a type name or an object that appeared earlier in the Bolt stream, and a Dubbo
peer needs the other grammar. Each argument is decoded (`hessian2`, faithful mode) and written into a
fresh stream of the target dialect, which re-emits class definitions and writes objects shared with
earlier arguments in full. A self-contained scalar that is spelled the same in both dialects (ints,
longs, null, booleans, short ASCII strings, short binary) is copied as bytes instead, which is both
faster and byte-identical to the golden vectors (`tests/vectors/triple`).

Responses go the same way: `SofaResponse.appResponse` <-> `TripleResponseWrapper.data`.

Everything that cannot be translated raises `TranslationError` (malformed Hessian or protobuf input, an
unknown serializeType, a value the target dialect cannot carry), with the value and argument concerned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from interlink.wire import sofarpc
from interlink.wire import triple_wrapper_pb2 as pb
from interlink.wire.hessian2 import (
    HessianDate,
    HessianError,
    HessianLong,
    HessianObject,
    SofaHessianReader,
    SofaHessianWriter,
    TypedList,
    TypedMap,
    new_reader,
    new_writer,
    write_values,
)

__all__ = [
    "SERIALIZE_DUBBO",
    "SERIALIZE_SOFA",
    "SofaCall",
    "SofaResult",
    "TranslationError",
    "java_type_name",
    "read_sofa_response",
    "sofa_error_body",
    "sofa_request_to_wrapper",
    "sofa_response_to_wrapper",
    "wrapper_response_to_sofa_response",
    "wrapper_to_sofa_request",
]

SERIALIZE_SOFA = "hessian2"  # SOFA Triple generic mode: args in the SOFA draft dialect
SERIALIZE_DUBBO = "hessian4"  # Dubbo: args in the final grammar

_DIALECT_OF = {SERIALIZE_SOFA: "sofa", SERIALIZE_DUBBO: "final"}

# Leading bytes of a value that is a whole scalar, spelled the same in both dialects and as both Java
# writers spell it: null, true, false, ints, longs, short binary (0-15 bytes). Short strings (0x00-0x1f)
# qualify too when they are ASCII (hessian-lite rejects the 4-byte UTF-8 another writer may have used).
_PORTABLE = bytes(
    1 if code in (0x4E, 0x54, 0x46, 0x49, 0x4C) or 0x20 <= code <= 0x2F or 0x38 <= code <= 0x3F or code >= 0x80 else 0
    for code in range(256)
)


class TranslationError(Exception):
    """A body or message that cannot be translated: says what (which argument, which value kind) and why."""


@dataclass(frozen=True, slots=True)
class SofaCall:
    """The `SofaRequest` of a Bolt hessian2 request, without its arguments."""

    method: str
    arg_sigs: tuple[str, ...]  # Java Class.getName() of each parameter = the wrapper's argTypes
    target_service: str | None  # unique name interface:version[:uniqueId]
    target_app: str | None
    request_props: dict[str, object] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class SofaResult:
    """A decoded `SofaResponse`. `is_exception`: `app_response` is a Throwable (a business exception)."""

    is_error: bool
    error_msg: str | None
    app_response: object = field(hash=False)
    is_exception: bool
    exception_message: str | None
    response_props: dict[object, object] = field(default_factory=dict, hash=False)


def _dialect(serialize_type: str) -> str:
    dialect = _DIALECT_OF.get(serialize_type)
    if dialect is None:
        raise TranslationError(
            f"serializeType {serialize_type!r} cannot be translated to or from a Bolt hessian2 body "
            f"(known: {SERIALIZE_SOFA!r} for SOFA, {SERIALIZE_DUBBO!r} for Dubbo)"
        )
    return dialect


def _kind(value: object) -> str:
    if isinstance(value, HessianObject):
        return f"an object of class {value.class_name}"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _copyable(data: bytes, start: int, value: object) -> bool:
    """True if the value read from data[start:...] may be copied as bytes into any stream of either dialect."""
    return bool(_PORTABLE[data[start]]) or (data[start] <= 0x1F and type(value) is str and value.isascii())


def _encode(value: object, dialect: str, what: str) -> bytes:
    """`value` as a stream of its own in `dialect` (faithful: -0.0, NaN payloads, int vs long kept)."""
    writer = new_writer(dialect, faithful=True)
    try:
        write_values(writer, (value,), dialect)
    except HessianError as exc:
        raise TranslationError(f"{what} ({_kind(value)}) cannot be written in the {dialect} dialect: {exc}") from None
    return writer.getvalue()


# --- requests -----------------------------------------------------------------------------------------


def sofa_request_to_wrapper(content: bytes, serialize_type: str) -> tuple[SofaCall, bytes]:
    """A Bolt codec-1 request body as a `TripleRequestWrapper` (protobuf bytes): `serializeType`, one
    independent Hessian stream per argument in the dialect of `serialize_type`, `argTypes` = the
    `methodArgSigs`. Bytes after the last argument are ignored, as Java and node providers ignore them."""
    dialect = _dialect(serialize_type)
    try:
        reader = SofaHessianReader(content, faithful=True)
        head = sofarpc.read_request_head_from(reader)
    except HessianError as exc:
        raise TranslationError(f"the SofaRequest of the Bolt body cannot be read: {exc}") from None
    data = reader.data
    args = []
    for index in range(len(head.arg_sigs)):
        start = reader.offset
        try:
            value = reader.read_value()
        except HessianError as exc:
            raise TranslationError(f"argument {index} ({head.arg_sigs[index]}) of the Bolt body: {exc}") from None
        if _copyable(data, start, value):
            args.append(data[start : reader.offset])
        else:
            args.append(_encode(value, dialect, f"argument {index} ({head.arg_sigs[index]})"))
    call = SofaCall(head.method_name, head.arg_sigs, head.target_service, head.target_app, head.request_props)
    wrapper = pb.TripleRequestWrapper(serializeType=serialize_type, args=args, argTypes=head.arg_sigs)
    return call, wrapper.SerializeToString()


def _request_head_writer(
    method: str, sigs: tuple[str, ...], target_service: str, target_app: str | None, props: Mapping[str, object]
) -> SofaHessianWriter:
    writer = SofaHessianWriter(faithful=True)
    head = HessianObject(
        sofarpc.SOFA_REQUEST_CLASS,
        {
            "methodName": method,
            "methodArgSigs": TypedList(sigs, "[java.lang.String"),  # as sofa-rpc-node writes String[]
            "targetServiceUniqueName": target_service,
            "targetAppName": target_app,
            "requestProps": dict(props),
        },
    )
    try:
        write_values(writer, (head,), "sofa")
    except HessianError as exc:
        raise TranslationError(f"the SofaRequest cannot be written: {exc}") from None
    return writer


def wrapper_to_sofa_request(
    wrapper: bytes,
    *,
    method: str,
    target_service: str,
    target_app: str | None,
    request_props: Mapping[str, object],
) -> tuple[tuple[str, ...], bytes]:
    """A `TripleRequestWrapper` (serializeType "hessian2" or "hessian4") as (argument signatures, Bolt
    codec-1 body in the SOFA dialect): the `SofaRequest` with its fields in the order sofa-rpc-node writes
    them (methodName, methodArgSigs, targetServiceUniqueName, targetAppName, requestProps), then the
    arguments in one stream. Each wrapper argument must hold one value; bytes after it are ignored."""
    message = _parse(pb.TripleRequestWrapper, wrapper, "TripleRequestWrapper")
    dialect = _dialect(message.serializeType)
    sigs = tuple(message.argTypes)
    if len(sigs) != len(message.args):
        raise TranslationError(f"the wrapper has {len(message.args)} args but {len(sigs)} argTypes")
    writer = _request_head_writer(method, sigs, target_service, target_app, request_props)
    for index, arg in enumerate(message.args):
        what = f"argument {index} ({sigs[index]})"
        if not arg:
            raise TranslationError(f"{what} of the wrapper is empty (a Hessian value takes at least one byte)")
        reader = new_reader(dialect, arg, faithful=True)
        try:
            value = reader.read_value()
        except HessianError as exc:
            raise TranslationError(f"{what} of the wrapper ({message.serializeType}): {exc}") from None
        if _copyable(reader.data, 0, value):
            writer.write_raw(reader.data[: reader.offset])
            continue
        try:
            write_values(writer, (value,), "sofa")
        except HessianError as exc:
            raise TranslationError(f"{what} ({_kind(value)}) cannot be written in the sofa dialect: {exc}") from None
    return sigs, writer.getvalue()


# --- responses ----------------------------------------------------------------------------------------

# A SofaResponse up to its appResponse: class definition (isError, errorMsg, appResponse, responseProps,
# the order sofa-rpc-node writes and Java declares), 'o' #0, isError false, errorMsg null.
_RESPONSE_PREFIX = sofarpc.sofa_response()[:-2]
assert _RESPONSE_PREFIX.endswith(b"o\x90FN")


def _is_throwable(value: object) -> bool:
    return isinstance(value, HessianObject) and (
        "detailMessage" in value.fields or value.class_name.endswith(("Exception", "Error"))
    )


def _read_response(content: bytes) -> tuple[SofaResult, int, int]:
    """The SofaResponse and the byte range of its appResponse value in `content`."""
    reader = SofaHessianReader(content, faithful=True)
    try:
        instance, names = reader.read_object_start()
        if instance.class_name != sofarpc.SOFA_RESPONSE_CLASS:
            raise TranslationError(f"the body is an object of class {instance.class_name}, not a SofaResponse")
        start = end = -1
        fields = instance.fields
        for name in names:
            if name == "appResponse":
                start = reader.offset
                fields[name] = reader.read_value()
                end = reader.offset
            else:
                fields[name] = reader.read_value()
    except HessianError as exc:
        raise TranslationError(f"the SofaResponse body cannot be read: {exc}") from None
    is_error = fields.get("isError", False)
    error_msg = fields.get("errorMsg")
    props = fields.get("responseProps")
    if not isinstance(is_error, bool):
        raise TranslationError(f"SofaResponse.isError is {_kind(is_error)}, not a boolean")
    if error_msg is not None and not isinstance(error_msg, str):
        raise TranslationError(f"SofaResponse.errorMsg is {_kind(error_msg)}, not a string")
    if props is not None and not isinstance(props, dict):
        raise TranslationError(f"SofaResponse.responseProps is {_kind(props)}, not a map")
    app = fields.get("appResponse")
    is_exception = _is_throwable(app)
    message = app.fields.get("detailMessage") if is_exception else None  # type: ignore[union-attr]
    result = SofaResult(
        is_error=is_error,
        error_msg=error_msg,
        app_response=app,
        is_exception=is_exception,
        exception_message=message if isinstance(message, str) else None,
        response_props=props or {},
    )
    return result, start, end


def read_sofa_response(content: bytes) -> SofaResult:
    """A whole `SofaResponse` body (SOFA dialect), `appResponse` decoded (faithfully). An appResponse that
    is a Throwable (an object with a `detailMessage` field, or whose class name ends in Exception or
    Error) sets `is_exception` and `exception_message`."""
    return _read_response(content)[0]


_ARRAY_OF = {
    "int": "I", "long": "J", "short": "S", "byte": "B", "boolean": "Z", "char": "C", "float": "F", "double": "D",
    "string": "Ljava.lang.String;", "object": "Ljava.lang.Object;",
}  # fmt: skip


def java_type_name(value: object) -> str:
    """A best-effort Java `Class.getName()` for a decoded value: "int", "long", "double", "boolean",
    "java.lang.String", "[B", "java.util.Date", the class name of an object, the Java array name of a
    typed list ("[int" -> "[I", "[java.lang.String" -> "[Ljava.lang.String;"), the type of a typed map,
    "java.util.List"/"java.util.Map" for untyped ones, "" for null (unknown)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, HessianLong):
        return "long"
    if isinstance(value, int):
        return "int" if -(1 << 31) <= value < (1 << 31) else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "java.lang.String"
    if isinstance(value, bytes | bytearray):
        return "[B"
    if isinstance(value, HessianDate):
        return "java.util.Date"
    if isinstance(value, HessianObject):
        return value.class_name
    if isinstance(value, TypedList) and value.type_name:
        name = value.type_name
        if not name.startswith("["):
            return name
        element = name.lstrip("[")
        depth = len(name) - len(element)
        return "[" * depth + _ARRAY_OF.get(element, f"L{element};")
    if isinstance(value, list):
        return "java.util.List"
    if isinstance(value, TypedMap) and value.type_name:
        return value.type_name
    if isinstance(value, dict):
        return "java.util.Map"
    return ""


def sofa_response_to_wrapper(content: bytes, serialize_type: str) -> tuple[SofaResult, bytes]:
    """A Bolt codec-1 response body as (the decoded SofaResponse, `TripleResponseWrapper` protobuf bytes:
    `serializeType`, `data` = appResponse as its own stream in the dialect of `serialize_type`, `type` =
    `java_type_name(appResponse)`). The wrapper is built whatever the result; the caller decides what an
    error (`is_error`) or an exception (`is_exception`) becomes on its side."""
    dialect = _dialect(serialize_type)
    result, start, end = _read_response(content)
    value = result.app_response
    if start < 0:  # no appResponse field in the class definition
        data = b"N"
    elif _copyable(content, start, value):
        data = content[start:end]
    else:
        data = _encode(value, dialect, "the appResponse")
    wrapper = pb.TripleResponseWrapper(serializeType=serialize_type, data=data, type=java_type_name(value))
    return result, wrapper.SerializeToString()


def wrapper_response_to_sofa_response(
    message: bytes, *, exception: bool = False, response_props: Mapping[str, str] | None = None
) -> bytes:
    """A `TripleResponseWrapper` as a `SofaResponse` body (SOFA dialect): `{isError: false, errorMsg: null,
    appResponse: <data, transcoded>, responseProps}`. Empty `data` is null.

    `exception=True` (Dubbo `tri-exception-code` != 0): the data is a serialized exception and is kept as
    the appResponse, which SOFARPC clients throw. Data that is not an object cannot be thrown: it becomes
    `{isError: true, errorMsg: <the string, or a description>}` instead."""
    wrapper = _parse(pb.TripleResponseWrapper, message, "TripleResponseWrapper")
    dialect = _dialect(wrapper.serializeType)
    data = wrapper.data
    props = dict(response_props) if response_props is not None else None
    value: object = None
    end = 0
    if data:
        reader = new_reader(dialect, data, faithful=True)
        try:
            value = reader.read_value()
        except HessianError as exc:
            raise TranslationError(f"the wrapper's data ({wrapper.serializeType}): {exc}") from None
        end = reader.offset
    if exception and not isinstance(value, HessianObject):
        text = value if isinstance(value, str) else f"remote exception ({_kind(value)}, type {wrapper.type or '?'})"
        return sofarpc.sofa_response(is_error=True, error_msg=text, response_props=props)
    if not data or _copyable(data, 0, value):
        tail = SofaHessianWriter()
        try:
            tail.write_value(props)  # a map of its own: it neither defines nor refers to anything
        except (HessianError, TypeError, ValueError) as exc:
            raise TranslationError(f"the responseProps cannot be written: {exc}") from None
        return _RESPONSE_PREFIX + (data[:end] if data else b"N") + tail.getvalue()
    writer = SofaHessianWriter(faithful=True)
    response = HessianObject(
        sofarpc.SOFA_RESPONSE_CLASS,
        {"isError": False, "errorMsg": None, "appResponse": value, "responseProps": props},
    )
    try:
        write_values(writer, (response,), "sofa")
    except HessianError as exc:
        raise TranslationError(
            f"the appResponse ({_kind(value)}) cannot be written in the sofa dialect: {exc}"
        ) from None
    return writer.getvalue()


def sofa_error_body(message: str) -> bytes:
    """`SofaResponse{isError: true, errorMsg: message}`: what SOFARPC clients raise as an RPC error."""
    return sofarpc.sofa_error_response(message)


def _parse(message_type, data: bytes, name: str):  # noqa: ANN001, ANN202 - generated protobuf classes
    try:
        return message_type.FromString(bytes(data))
    except DecodeError as exc:
        raise TranslationError(f"the {name} message cannot be decoded: {exc}") from None
