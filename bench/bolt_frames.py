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
    problems = []
    for size in sizes:
        ids = [101, 102, 103]
        frames = [echo_request(size, i) for i in ids]
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
            why = check_echo_reply(frame, size)
            if why:
                problems.append(f"{size} B, id {i}: {why}")
        if by_id:
            problems.append(f"{size} B: answers with unexpected request ids {sorted(by_id)}")
    return problems
