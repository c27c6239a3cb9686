"""SOFARPC bodies in Bolt codec 1 (hessian2, SOFA 3.x draft dialect), the parts a gateway needs, sans-I/O.

- `read_request_head`: the `SofaRequest` object at the start of a request body (method, argument
  signatures, target service and app, requestProps), read without touching the call arguments that follow
  it. sofa-rpc-node with hessian2 sends only the `service` Bolt header; everything else is in here
  (../shared/PROTOCOLS.md 1.9, 1.12).
- `sofa_error_response` / `sofa_response`: `SofaResponse` bodies as sofa-rpc-node writes them (class
  definition fields isError, errorMsg, appResponse, responseProps). A SOFARPC client (Java or node) turns
  `isError: true` into an error carrying `errorMsg` (PROTOCOLS.md 3.3).
- `read_response_summary`: isError/errorMsg of a `SofaResponse` body, for logging the outcome of a call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from interlink.wire.cache import BoundedCache
from interlink.wire.hessian2 import HessianError, HessianObject, SofaHessianReader, SofaHessianWriter

__all__ = [
    "SOFA_REQUEST_CLASS",
    "SOFA_RESPONSE_CLASS",
    "SofaRequestHead",
    "caller_app",
    "read_request_head",
    "read_request_head_from",
    "read_response_summary",
    "sofa_error_response",
    "sofa_response",
]

SOFA_REQUEST_CLASS = "com.alipay.sofa.rpc.core.request.SofaRequest"
SOFA_RESPONSE_CLASS = "com.alipay.sofa.rpc.core.response.SofaResponse"

# requestProps key of the consumer's app name (RemotingConstants.HEAD_APP_NAME)
APP_PROP = "app"


@dataclass(frozen=True, slots=True)
class SofaRequestHead:
    """The `SofaRequest` of a hessian2 Bolt request, without its arguments."""

    method_name: str
    arg_sigs: tuple[str, ...]  # Java Class.getName() of each parameter: "java.lang.String", "int", ...
    target_service: str | None  # unique name interface:version[:uniqueId]
    target_app: str | None
    request_props: dict[str, object] = field(default_factory=dict, hash=False)


def _describe(value: object) -> str:
    if isinstance(value, HessianObject):
        return f"an object of class {value.class_name}"
    return f"a {type(value).__name__}" if value is not None else "null"


def _optional_str(fields: Mapping[str, object], name: str) -> str | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise HessianError(f"SofaRequest.{name} is {_describe(value)}, not a string")
    return value


def read_request_head(content: bytes | bytearray | memoryview) -> SofaRequestHead:
    """The `SofaRequest` head of a hessian2 request body: only its first top-level value is read, so the
    arguments after it are neither decoded nor validated. Fields are read in the order of the stream's
    class definition (sofa-rpc-node and Java order them differently). HessianError if the body does not
    start with a well-formed `SofaRequest`."""
    return _read_request_head(SofaHessianReader(content))


def read_request_head_from(reader: SofaHessianReader) -> SofaRequestHead:
    """`read_request_head` for a caller that goes on reading the arguments with the same reader (they
    may refer to class definitions, types and values of the head): the reader must be at the start of
    the body and is left just after the `SofaRequest`."""
    return _read_request_head(reader)


def _read_request_head(reader: SofaHessianReader) -> SofaRequestHead:
    value = reader.read_value()
    if not isinstance(value, HessianObject) or value.class_name != SOFA_REQUEST_CLASS:
        raise HessianError(f"the body starts with {_describe(value)}, not a {SOFA_REQUEST_CLASS}")
    fields = value.fields
    method = fields.get("methodName")
    if not isinstance(method, str):
        raise HessianError(f"SofaRequest.methodName is {_describe(method)}, not a string")
    sigs = fields.get("methodArgSigs")
    if sigs is None:
        sigs = []
    if not isinstance(sigs, list) or not all(isinstance(sig, str) for sig in sigs):
        raise HessianError(f"SofaRequest.methodArgSigs is {_describe(sigs)}, not a list of strings")
    props = fields.get("requestProps")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise HessianError(f"SofaRequest.requestProps is {_describe(props)}, not a map")
    return SofaRequestHead(
        method_name=method,
        arg_sigs=tuple(sigs),
        target_service=_optional_str(fields, "targetServiceUniqueName"),
        target_app=_optional_str(fields, "targetAppName"),
        request_props=props,
    )


class RequestHeadCache:
    """Remembers the heads already read, keyed by their exact bytes (a bounded cache: heads of at most
    MAX_HEAD bytes, kept when seen twice; see interlink.wire.cache).

    Sound because the head is the stream's first value: its parse depends only on its own bytes, so a
    body that starts with bytes that once parsed as a complete head of length L has that very head.
    Callers of one service send the same few heads over and over (trace ids, when present, go in the
    header for Java and in `requestProps` for node, so those heads vary and simply miss); a hit costs
    one slice and one dict lookup per known length instead of a Hessian parse.
    """

    MAX_HEAD = 1024  # bytes; a larger head (big requestProps) is parsed every time, never kept

    def __init__(self, max_entries: int = 1024) -> None:
        self._heads: BoundedCache[bytes, SofaRequestHead] = BoundedCache(
            max_entries=max_entries, max_bytes=max_entries * 2 * self.MAX_HEAD, max_item=2 * self.MAX_HEAD
        )
        self._lengths: dict[int, None] = {}  # distinct head lengths seen, most recent last

    def read(self, content: bytes) -> SofaRequestHead:
        heads = self._heads
        for length in reversed(self._lengths):
            head = heads.get(content[:length])
            if head is not None:
                return head
        reader = SofaHessianReader(content)
        head = _read_request_head(reader)
        length = reader.offset
        if length <= self.MAX_HEAD:
            heads.put(bytes(content[:length]), head, 2 * length)
            self._lengths.pop(length, None)
            self._lengths[length] = None
            if len(self._lengths) > 8:  # keep the probe short; rarely used lengths fall out
                del self._lengths[next(iter(self._lengths))]
        return head


def caller_app(head: SofaRequestHead) -> str | None:
    """The consumer's app name as it claims it (requestProps["app"]), if it is a non-empty string.

    Java SOFARPC consumers set it (and send it as the `app` header too); sofa-rpc-node sends it only when
    the application puts it in `requestProps`.
    """
    app = head.request_props.get(APP_PROP)
    return app if isinstance(app, str) and app else None


def sofa_response(
    app_response: object = None,
    *,
    is_error: bool = False,
    error_msg: str | None = None,
    response_props: Mapping[str, str] | None = None,
) -> bytes:
    """A `SofaResponse` body: class definition (isError, errorMsg, appResponse, responseProps, the order
    sofa-rpc-node writes and Java declares), then the instance. `app_response` is any value the Hessian
    writer supports."""
    writer = SofaHessianWriter()
    writer.write_object(
        HessianObject(
            SOFA_RESPONSE_CLASS,
            {
                "isError": bool(is_error),
                "errorMsg": error_msg,
                "appResponse": app_response,
                "responseProps": dict(response_props) if response_props is not None else None,
            },
        )
    )
    return writer.getvalue()


# Everything before errorMsg is the same in every error response: the class definition, 'o' #0, isError T.
_ERROR_PREFIX = sofa_response(is_error=True, error_msg="")[:-3]
assert _ERROR_PREFIX.endswith(b"o\x90T")


def sofa_error_response(message: str) -> bytes:
    """The body of `SofaResponse{isError: true, errorMsg: message, appResponse: null, responseProps: null}`,
    which Java SOFARPC raises as a SofaRpcException and sofa-rpc-node as an Error with that message. Send
    it with response status SUCCESS (and, for Java clients, header sofa_head_response_error=true)."""
    writer = SofaHessianWriter()
    writer.write_string(message)
    return _ERROR_PREFIX + writer.getvalue() + b"NN"


def read_response_summary(content: bytes | bytearray | memoryview) -> tuple[bool, str | None]:
    """(isError, errorMsg) of a `SofaResponse` body, reading the fields in stream order only until both are
    known: `appResponse` is not decoded when it comes after them (as from sofa-rpc-node and Java). A field
    missing from the class definition counts as false / null. HessianError if the body does not start
    with a `SofaResponse` or if the bytes up to those two fields are malformed."""
    reader = SofaHessianReader(content)
    instance, names = reader.read_object_start()
    if instance.class_name != SOFA_RESPONSE_CLASS:
        raise HessianError(f"the body is an object of class {instance.class_name}, not a {SOFA_RESPONSE_CLASS}")
    wanted = {"isError", "errorMsg"}.intersection(names)
    fields = instance.fields
    for name in names:
        if not wanted:
            break
        fields[name] = reader.read_value()
        wanted.discard(name)
    is_error = fields.get("isError", False)
    error_msg = fields.get("errorMsg")
    if not isinstance(is_error, bool):
        raise HessianError(f"SofaResponse.isError is {_describe(is_error)}, not a boolean")
    if error_msg is not None and not isinstance(error_msg, str):
        raise HessianError(f"SofaResponse.errorMsg is {_describe(error_msg)}, not a string")
    return is_error, error_msg
