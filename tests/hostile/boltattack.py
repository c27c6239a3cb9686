"""Bolt V1 frames for the attackers: valid SofaRequest calls (hessian2, as sofa-rpc-node sends them) built
with interlink.wire.bolt + the SOFA Hessian writer, huge heads, and frames that are never finished."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from interlink.wire import bolt
from interlink.wire.hessian2 import HessianObject, SofaHessianWriter, TypedList
from interlink.wire.sofarpc import SOFA_REQUEST_CLASS
from tests.e2e.topology import ALLOWED_APP
from tests.hostile.sites import BOLT_SERVICE

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "bolt"
V1_REQUEST_FIXED = 22  # bytes before the class name in a V1 request


def vector(name: str) -> bytes:
    return bytes.fromhex("".join((VECTORS / f"{name}.hex").read_text().split()))


def sofa_request_content(
    method: str = "echo",
    arg: str = "hello",
    *,
    props: dict[str, str] | None = None,
    service: str = BOLT_SERVICE,
    app: str = ALLOWED_APP,
) -> bytes:
    """SofaRequest head (fields in sofa-rpc-node's order) + one String argument, SOFA hessian2."""
    writer = SofaHessianWriter()
    writer.write_object(
        HessianObject(
            SOFA_REQUEST_CLASS.decode() if isinstance(SOFA_REQUEST_CLASS, bytes) else SOFA_REQUEST_CLASS,
            {
                "methodName": method,
                "methodArgSigs": TypedList(["java.lang.String"], "[java.lang.String"),
                "targetServiceUniqueName": service,
                "targetAppName": None,
                "requestProps": {"service": service, "app": app, **(props or {})},
            },
        )
    )
    writer.write_string(arg)
    return writer.getvalue()


def request_frame(
    request_id: int,
    content: bytes,
    *,
    timeout_ms: int = 3000,
    service: str = BOLT_SERVICE,
    oneway: bool = False,
) -> bytes:
    frame = bolt.BoltFrame(
        proto=1,
        type=bolt.TYPE_ONEWAY if oneway else bolt.TYPE_REQUEST,
        cmdcode=bolt.CMD_RPC_REQUEST,
        request_id=request_id,
        timeout=timeout_ms,
        class_name=bolt.SOFA_REQUEST_CLASS,
        header=bolt.encode_header_map({"service": service}),
        content=content,
    )
    return bolt.encode(frame)


def echo_frame(request_id: int, arg: str = "hello", **kwargs) -> bytes:
    return request_frame(request_id, sofa_request_content("echo", arg), **kwargs)


def big_head_frame(request_id: int, pad_bytes: int) -> bytes:
    """An echo call whose SofaRequest head carries `pad_bytes` of random ASCII in requestProps: every head is
    different, so nothing a cache keeps can be reused."""
    pad = os.urandom(pad_bytes // 2).hex()[:pad_bytes]
    return request_frame(request_id, sofa_request_content("echo", "big-head", props={"x-pad": pad}))


def frame_header(content_len: int, request_id: int = 1) -> bytes:
    """The fixed part + class name + header map of a V1 request whose content is `content_len` bytes (the
    content itself is for the caller to send, or not)."""
    header = bolt.encode_header_map({"service": BOLT_SERVICE})
    cls = bolt.SOFA_REQUEST_CLASS
    fixed = struct.pack(
        ">BBHBIBIHHI", 1, bolt.TYPE_REQUEST, bolt.CMD_RPC_REQUEST, 1, request_id, 1, 3000, len(cls), len(header),
        content_len,
    )
    assert len(fixed) == V1_REQUEST_FIXED
    return fixed + cls + header


class BoltReader:
    """Collects complete response frames from a socket (bolt.BoltDecoder)."""

    def __init__(self) -> None:
        self.decoder = bolt.BoltDecoder(max_frame_size=64 * 1024 * 1024)
        self.frames: list[bolt.BoltFrame] = []

    def read(self, sock: socket.socket, timeout: float) -> bool:
        sock.settimeout(timeout)
        try:
            data = sock.recv(262144)
        except (TimeoutError, socket.timeout):
            return True
        except OSError:
            return False
        if not data:
            return False
        self.frames.extend(self.decoder.feed(data))
        return True

    def wait_for(self, sock: socket.socket, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count and time.monotonic() < deadline:
            if not self.read(sock, min(0.2, max(0.01, deadline - time.monotonic()))):
                break
        return len(self.frames) >= count
