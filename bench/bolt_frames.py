"""Bolt V1 frames of the Bolt benchmark, built with interlink's own codec (interlink.wire.bolt, sofarpc,
hessian2), and the checks that a reply really is the expected SOFARPC echo.

- `echo_request(size)`: what sofa-rpc-node 2.10.0 sends for `EchoService.echo(String)` with the hessian2
  codec (byte for byte the layout of tests/vectors/bolt/bolt_v1_req_echo.hex: same class definition, field
  order, typed `[java.lang.String` list, requestProps map), with the argument `'x' * size`, the caller app
  in requestProps and the Bolt header map `{service, app}` (what a Java SOFARPC consumer sends as well).
- `echo_response(size)`: `SofaResponse{isError: false, errorMsg: null, appResponse: 'x' * size,
  responseProps: null}` as sofa-rpc-node writes it (tests/vectors/bolt/bolt_v1_resp_echo.hex), status
  SUCCESS, request id 0 (the provider copies the id of each request into it).
- `check_echo_reply(frame, size)`: None if a frame is that reply (decoded with the codec: status, class
  name, the whole SofaResponse), else what is wrong.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from interlink.wire import bolt, sofarpc
from interlink.wire.hessian2 import HessianError, HessianObject, SofaHessianReader, SofaHessianWriter, TypedList

SERVICE = "com.example.EchoService"
VERSION = "1.0"
UNIQUE_NAME = f"{SERVICE}:{VERSION}"
METHOD = "echo"
CALLER_APP = "bench-app"  # what the load generator claims to be (header `app` + requestProps.app)
TARGET_APP = "echo-server"
TIMEOUT_MS = 3000  # Bolt timeout field, sofa-rpc-node's default responseTimeout


def payload(size: int) -> str:
    return "x" * size


def echo_request_frame(size: int, request_id: int = 1) -> bolt.BoltFrame:
    writer = SofaHessianWriter()
    writer.write_object(
        HessianObject(
            sofarpc.SOFA_REQUEST_CLASS,
            {
                "methodName": METHOD,
                "methodArgSigs": TypedList(["java.lang.String"], "[java.lang.String"),
                "targetServiceUniqueName": UNIQUE_NAME,
                "targetAppName": TARGET_APP,
                "requestProps": {"service": UNIQUE_NAME, "app": CALLER_APP},
            },
        )
    )
    writer.write_string(payload(size))
    return bolt.BoltFrame(
        bolt.Proto.V1,
        bolt.CommandType.REQUEST,
        bolt.CommandCode.RPC_REQUEST,
        request_id,
        bolt.Codec.HESSIAN2,
        timeout=TIMEOUT_MS,
        class_name=bolt.SOFA_REQUEST_CLASS,
        header=bolt.encode_header_map({"service": UNIQUE_NAME, "app": CALLER_APP}),
        content=writer.getvalue(),
    )


def echo_request(size: int, request_id: int = 1) -> bytes:
    return bolt.encode(echo_request_frame(size, request_id))


def echo_response_content(size: int) -> bytes:
    return sofarpc.sofa_response(payload(size))


def echo_response(size: int) -> bytes:
    """The canned reply frame (request id 0: the provider puts each request's id in)."""
    request = echo_request_frame(size, request_id=0)
    reply = bolt.response_for(
        request, bolt.ResponseStatus.SUCCESS, bolt.SOFA_RESPONSE_CLASS, b"", echo_response_content(size)
    )
    return bolt.encode(reply)


def check_echo_reply(frame: bolt.BoltFrame, size: int) -> str | None:
    """None when `frame` is a successful SOFARPC echo of 'x' * size, decoded with the codec; else why not."""
    if not frame.is_response or frame.cmdcode != bolt.CommandCode.RPC_RESPONSE:
        return f"not an RPC response (type {frame.type}, cmdcode {frame.cmdcode})"
    if frame.status != bolt.ResponseStatus.SUCCESS:
        detail = ""
        try:
            detail = f" ({bolt.decode_header_map(frame.header)}; {frame.content[:200]!r})"
        except bolt.BoltProtocolError:
            pass
        return f"status {bolt.ResponseStatus(frame.status).name}{detail}"
    if frame.class_name != bolt.SOFA_RESPONSE_CLASS:
        return f"class name {frame.class_name!r}"
    try:
        reader = SofaHessianReader(frame.content)
        value = reader.read_value()
        trailing = not reader.at_end
    except HessianError as exc:
        return f"body does not decode: {exc}"
    if not isinstance(value, HessianObject) or value.class_name != sofarpc.SOFA_RESPONSE_CLASS:
        return f"body is {value!r:.200}, not a SofaResponse"
    fields = value.fields
    if fields.get("isError") is not False:
        return f"SofaResponse.isError = {fields.get('isError')!r}, errorMsg = {fields.get('errorMsg')!r}"
    echoed = fields.get("appResponse")
    if echoed != payload(size):
        shown = f"a {len(echoed)}-char string" if isinstance(echoed, str) else repr(echoed)[:200]
        return f"appResponse is {shown}, expected 'x' * {size}"
    if trailing:
        return "bytes after the SofaResponse"
    return None


def exchange(port: int, frames: list[bytes], expect: int, timeout_s: float = 10.0) -> list[bolt.BoltFrame]:
    """Send `frames` back to back on one fresh connection and read `expect` frames back (or fewer, if the
    peer closes or the time is up)."""
    decoder = bolt.BoltDecoder()
    got: list[bolt.BoltFrame] = []
    deadline = time.monotonic() + timeout_s
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(b"".join(frames))
        while len(got) < expect:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                break
            if not data:
                break
            got.extend(decoder.feed(data))
    return got


def sanity_check(port: int, sizes: list[int], heartbeat: bool = False) -> list[str]:
    """Problems found calling echo on `port` (empty = fine): for every size, three pipelined calls with
    distinct request ids on one connection, each answer matched by id and decoded with the codec; with
    `heartbeat`, a heartbeat first, which must come back as an ack with its id."""
    return _pipelined_check(port, sizes, [101, 102, 103], echo_request, check_echo_reply, heartbeat)


def _pipelined_check(
    port: int, sizes: list[int], ids: list[int], request: Callable[[int, int], bytes],
    check_reply: Callable[[bolt.BoltFrame, int], str | None], heartbeat: bool = False,
) -> list[str]:  # fmt: skip
    """`request(size, id)` for each id, sent back to back on one connection per size; each answer is
    matched by id and judged by `check_reply(frame, size)` (None = fine)."""
    problems = []
    for size in sizes:
        frames = [request(size, i) for i in ids]
        if heartbeat:
            frames.insert(0, bolt.encode(bolt.heartbeat(100)))
        try:
            got = exchange(port, frames, len(frames))
        except (OSError, bolt.BoltProtocolError) as exc:
            problems.append(f"{size} B: {type(exc).__name__}: {exc}")
            continue
        by_id = {f.request_id: f for f in got}
        if heartbeat:
            ack = by_id.pop(100, None)
            if ack is None or not (ack.is_response and ack.is_heartbeat and ack.status == 0):
                problems.append(f"{size} B: heartbeat not acknowledged (got {ack})")
        for i in ids:
            frame = by_id.pop(i, None)
            if frame is None:
                problems.append(f"{size} B: no answer for request id {i} ({len(got)} frames received)")
                continue
            why = check_reply(frame, size)
            if why:
                problems.append(f"{size} B, id {i}: {why}")
        if by_id:
            problems.append(f"{size} B: answers with unexpected request ids {sorted(by_id)}")
    return problems


# --- protobuf (Bolt codec 11): the translate part -------------------------------------------------------
#
# What sofa-rpc-node 2.10.0 (sofa-bolt-node 2.0.1) sends with codecType 'protobuf' for
# EchoService.echo(EchoRequest) (captured from tests/peers/bolt_pb_client.js): className SofaRequest, the
# header map {service, sofa_head_method_name, sofa_head_target_app, sofa_head_target_service, app} (+ the
# requestProps flattened), content = the raw protobuf EchoRequest. The real sofa-rpc-node protobuf server
# (tests/peers/bolt_pb_server.js) answers SUCCESS, className SofaResponse, header
# {sofa_head_response_error: "false"}, content = the raw protobuf EchoReply.
#
# The bench adds one header entry, `bench-reply-size: N` (a requestProps entry for sofa-rpc-node): a Bolt
# header key reaches a gRPC provider as metadata when GW-A translates, and the canned nginx gRPC provider
# picks its reply by it (see bench/templates/provider.conf.in).

REPLY_SIZE_KEY = "bench-reply-size"


def pb_echo_message(size: int) -> bytes:
    """EchoRequest / EchoReply{message = 'x' * size} (both: field 1, string), protobuf-encoded."""
    n, length = size, bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return b"\x0a" + bytes(length) + payload(size).encode()


def pb_echo_request_frame(size: int, request_id: int = 1) -> bolt.BoltFrame:
    header = {
        "service": UNIQUE_NAME,
        "sofa_head_method_name": METHOD,
        "sofa_head_target_app": "",
        "sofa_head_target_service": UNIQUE_NAME,
        "app": CALLER_APP,
        REPLY_SIZE_KEY: str(size),
    }
    return bolt.BoltFrame(
        bolt.Proto.V1,
        bolt.CommandType.REQUEST,
        bolt.CommandCode.RPC_REQUEST,
        request_id,
        bolt.Codec.PROTOBUF,
        timeout=TIMEOUT_MS,
        class_name=bolt.SOFA_REQUEST_CLASS,
        header=bolt.encode_header_map(header),
        content=pb_echo_message(size),
    )


def pb_echo_request(size: int, request_id: int = 1) -> bytes:
    return bolt.encode(pb_echo_request_frame(size, request_id))


def pb_echo_response(size: int) -> bytes:
    """The canned protobuf reply frame, as the real sofa-rpc-node protobuf server answers (request id 0)."""
    request = pb_echo_request_frame(size, request_id=0)
    reply = bolt.response_for(
        request,
        bolt.ResponseStatus.SUCCESS,
        bolt.SOFA_RESPONSE_CLASS,
        bolt.encode_header_map({"sofa_head_response_error": "false"}),
        pb_echo_message(size),
    )
    return bolt.encode(reply)


def decode_pb_echo(data: bytes) -> str | None:
    """The `message` of an EchoRequest/EchoReply, strictly (field 1 only, lengths exact); None if it is not one."""
    if not data:
        return ""  # proto3: every field default
    if data[0] != 0x0A:
        return None
    length, shift, i = 0, 0, 1
    while True:
        if i >= len(data) or shift > 28:
            return None
        byte = data[i]
        i += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if i + length != len(data):
        return None
    try:
        return data[i:].decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_pb_echo_reply(frame: bolt.BoltFrame, size: int) -> str | None:
    """None when `frame` is a successful protobuf (codec 11) echo of 'x' * size, decoded; else why not."""
    if not frame.is_response or frame.cmdcode != bolt.CommandCode.RPC_RESPONSE:
        return f"not an RPC response (type {frame.type}, cmdcode {frame.cmdcode})"
    try:
        header = bolt.decode_header_map(frame.header) if frame.header else {}
    except bolt.BoltProtocolError as exc:
        return f"header map does not decode: {exc}"
    if frame.status != bolt.ResponseStatus.SUCCESS:
        return f"status {bolt.ResponseStatus(frame.status).name} ({header}; {frame.content[:200]!r})"
    if frame.codec != bolt.CODEC_PROTOBUF:
        return f"codec {frame.codec}, not protobuf (11)"
    if frame.class_name != bolt.SOFA_RESPONSE_CLASS:
        return f"class name {frame.class_name!r}"
    if header.get("sofa_head_response_error") == "true":
        return f"sofa_head_response_error = true ({header}; {frame.content[:200]!r})"
    echoed = decode_pb_echo(frame.content)
    if echoed != payload(size):
        shown = f"a {len(echoed)}-char message" if isinstance(echoed, str) else f"{frame.content[:60]!r}"
        return f"EchoReply is {shown}, expected 'x' * {size}"
    return None


def pb_sanity_check(port: int, sizes: list[int]) -> list[str]:
    """As `sanity_check`, for the protobuf frames: three pipelined calls per size, decoded and matched by id."""
    return _pipelined_check(port, sizes, [201, 202, 203], pb_echo_request, check_pb_echo_reply)
