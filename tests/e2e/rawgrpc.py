"""A bare-hands gRPC client (h2 over a plain or TLS socket) for what real clients will not do: choose SNI
and :authority freely, present any client certificate, skip hostname checks, send broken requests."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from interlink.wire.grpc import decode_grpc_message, encode_message


@dataclass
class RawResult:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""
    reset: int | None = None
    closed: str | None = None  # why the connection ended before the stream did

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.trailers or self.headers:
            if key == name:
                return value
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def grpc_status(self) -> int | None:
        value = self.header(b"grpc-status")
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        return decode_grpc_message(self.header(b"grpc-message") or b"")


def mtls_context(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


def grpc_request_headers(path: str, authority: str, extra=(), scheme: str = "https") -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", scheme),
        (":path", path),
        (":authority", authority),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        *extra,
    ]


def open_socket(host: str, port: int, context: ssl.SSLContext | None, sni: str | None, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname=sni)
    return sock


def call(
    host: str,
    port: int,
    headers: list[tuple[str, str]],
    message: bytes | None = b"",
    *,
    context: ssl.SSLContext | None = None,
    sni: str | None = None,
    timeout: float = 5.0,
) -> RawResult:
    """One gRPC call on a fresh connection. `message=None` sends HEADERS only (END_STREAM on HEADERS)."""
    sock = open_socket(host, port, context, sni, timeout)
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers, end_stream=message is None)
        if message is not None:
            conn.send_data(stream_id, encode_message(message), end_stream=True)
        sock.sendall(conn.data_to_send())
        return _read_response(sock, conn, stream_id)
    finally:
        sock.close()


def _read_response(sock: socket.socket, conn: h2.connection.H2Connection, stream_id: int) -> RawResult:
    result = RawResult()
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            result.closed = f"{type(exc).__name__}: {exc}"
            break
        if not chunk:
            result.closed = "connection closed"
            break
        for event in conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                result.headers = list(event.headers)
            elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream_id:
                result.trailers = list(event.trailers if hasattr(event, "trailers") else event.headers)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                data += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                result.reset = event.error_code
                result.data = bytes(data)
                return result
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                result.data = bytes(data)
                return result
            elif isinstance(event, h2.events.ConnectionTerminated):
                result.closed = f"GOAWAY {event.error_code}"
        pending = conn.data_to_send()
        if pending:
            sock.sendall(pending)
        if result.closed:
            break
    result.data = bytes(data)
    return result
