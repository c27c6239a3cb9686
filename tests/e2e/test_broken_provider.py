"""A provider that breaks HTTP/2 or gRPC: each caller gets a clear gRPC error, the gateway and its other
calls carry on."""

from __future__ import annotations

import socket
import threading

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from interlink.demo.client import EchoClient
from tests.e2e.topology import ALLOWED_APP, two_sites

APP = (("tri-consumer-appname", ALLOWED_APP),)
GOOD_REPLY = b"\x00\x00\x00\x00\x02\x08\x05"  # AddReply{sum: 5}


class BrokenProvider:
    """h2c server; what it does depends on the method called:
    echo -> DATA with END_STREAM and no trailers; count -> response headers with an upper-case name;
    fail -> RST_STREAM REFUSED_STREAM; add -> a correct reply."""

    def __init__(self, refuse_every_stream: bool = False) -> None:
        """`refuse_every_stream`: every request is refused (REFUSED_STREAM) as it arrives, and counted."""
        self.refuse_every_stream = refuse_every_stream
        self.refused = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.target = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        config = h2.config.H2Configuration(
            client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        paths: dict[int, bytes] = {}
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived) and self.refuse_every_stream:
                    self.refused += 1
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                elif isinstance(event, h2.events.RequestReceived):
                    paths[event.stream_id] = dict(event.headers)[b":path"]
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in paths:
                    self._answer(conn, event.stream_id, paths.pop(event.stream_id).rsplit(b"/", 1)[1])
            sock.sendall(conn.data_to_send())

    @staticmethod
    def _answer(conn: h2.connection.H2Connection, stream_id: int, method: bytes) -> None:
        ok = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        if method == b"echo":
            conn.send_headers(stream_id, ok)
            conn.send_data(stream_id, GOOD_REPLY, end_stream=True)
        elif method == b"count":
            conn.send_headers(stream_id, ok + [(b"X-Upper", b"1")])
            conn.send_data(stream_id, GOOD_REPLY)
            conn.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
        elif method == b"fail":
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            conn.send_headers(stream_id, ok)
            conn.send_data(stream_id, GOOD_REPLY)
            conn.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)


@pytest.fixture
def broken_sites(certs, tmp_path):
    provider = BrokenProvider()
    sites = two_sites(certs, tmp_path, provider.target, name="broken")
    yield sites
    sites.stop()
    provider.sock.close()


@pytest.mark.parametrize(
    ("call", "code", "words"),
    [
        (lambda c: c.echo("x", metadata=APP), grpc.StatusCode.INTERNAL, "without grpc-status trailers"),
        (lambda c: c.count(1, metadata=APP), grpc.StatusCode.INTERNAL, "PROTOCOL_ERROR"),
        (lambda c: c.fail("x", metadata=APP), grpc.StatusCode.UNAVAILABLE, "REFUSED_STREAM"),
    ],
    ids=["no-trailers", "malformed-headers", "refused-stream"],
)
def test_broken_responses_become_clear_errors(broken_sites, call, code, words):
    with EchoClient(broken_sites.triple_target) as client:
        with pytest.raises(grpc.RpcError) as info:
            call(client)
        assert info.value.code() == code, info.value.details()
        assert words in info.value.details()
        assert client.add(2, 3, metadata=APP) == 5  # the same gateways and connections keep working


@pytest.fixture
def broken_translated_sites(certs, tmp_path):
    provider = BrokenProvider()
    sites = two_sites(
        certs, tmp_path, provider.target, name="broken-bolt", protocol="bolt",
        export_options={"protocol": "triple", "flavour": "grpc"},
    )
    yield sites
    sites.stop()
    provider.sock.close()


@pytest.mark.parametrize(
    ("case", "words"),
    [("echo", "without grpc-status trailers"), ("fail", "REFUSED_STREAM")],
    ids=["no-trailers", "refused-stream"],
)
def test_a_broken_triple_provider_gives_bolt_callers_clear_errors(broken_translated_sites, bolt_peers, case, words):
    from tests.conftest import PEERS_DIR, _json_line_of

    def call(which: str) -> dict:
        argv = [bolt_peers, str(PEERS_DIR / "bolt_pb_client.js"), "--target", broken_translated_sites.triple_target,
                "--case", which, "--app", ALLOWED_APP]
        return _json_line_of(argv, "bolt_pb_client", 30)

    failed = call(case)
    assert failed["ok"] is False and words in failed["error"]["message"], failed
    assert call("add")["result"] == {"sum": 5}  # the gateways and their connections keep working
