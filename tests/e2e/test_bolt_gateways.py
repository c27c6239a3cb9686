"""sofa-rpc-node client in site B -> GW-B (Bolt) -> mTLS, ALPN bolt -> GW-A -> sofa-rpc-node server in site A."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from interlink.wire import bolt
from tests.e2e import rawgrpc
from tests.e2e.topology import ALLOWED_APP, TwoSites, access_domain, two_sites

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "bolt"
BOLT_METHODS = ["echo", "add", "fail", "slow", "whoami"]


def vector(name: str) -> bytes:
    return bytes.fromhex("".join((VECTORS / f"{name}.hex").read_text().split()))


@pytest.fixture(scope="module")
def bolt_sites(certs, tmp_path_factory, bolt_server, site_c_port) -> Iterator[TwoSites]:
    sites = two_sites(
        certs,
        tmp_path_factory.mktemp("bolt-sites"),
        bolt_server.target,
        name="bolt",
        protocol="bolt",
        methods=BOLT_METHODS,
        extra_consumers={"site-c": site_c_port},
    )
    yield sites
    sites.stop()


def test_echo_add_and_identity(bolt_sites, run_bolt_client):
    target = bolt_sites.triple_target
    echoed = run_bolt_client(target, "echo", app=ALLOWED_APP, args=["héllo ✓"])
    assert (echoed["ok"], echoed["result"]) == (True, "héllo ✓"), echoed
    assert run_bolt_client(target, "add", app=ALLOWED_APP, args=[40, 2])["result"] == 42
    seen = json.loads(run_bolt_client(target, "whoami", app=ALLOWED_APP)["result"])
    assert seen["app"] == ALLOWED_APP
    # The gateways stamped who is calling from where; nothing a local caller sent under our prefix survives.
    assert seen["headers"]["x-interlink-caller-site"] == "site-b"
    assert seen["headers"]["x-interlink-caller-app"] == ALLOWED_APP
    assert "x-interlink-method" not in seen["headers"]
    assert seen["bolt"]["proto"] == 1, seen["bolt"]  # upstream calls always travel as Bolt V1


def test_provider_error_reaches_the_caller_as_an_error(bolt_sites, run_bolt_client):
    result = run_bolt_client(bolt_sites.triple_target, "fail", app=ALLOWED_APP, args=["boom"])
    assert result["ok"] is False
    assert "boom" in result["error"]["message"]


def test_slow_call_times_out_at_the_caller_and_the_gateway_logs_it(bolt_sites, run_bolt_client):
    result = run_bolt_client(bolt_sites.triple_target, "slow", app=ALLOWED_APP, args=[1500], timeout_ms=300)
    assert result["ok"] is False
    assert result["error"]["name"] in {"RpcResponseTimeoutError", "Error"}, result
    # GW-B's deadline and the client's own timeout end the call at the same moment: whichever comes first
    # (the deadline, or the client closing its connection) is the call's one access line.
    bolt_sites.b.wait_for_event(
        lambda e: e.get("event") == "call" and e.get("method") == "slow"
        and e.get("status") in ("DEADLINE_EXCEEDED", "CANCELLED"),
        timeout=5,
    )
    # The provider finishes after 1.5 s, when nobody waits any more: its late answer (if it sends one) is an
    # orphan and is dropped; sofa-rpc-node sends none once the request's timeout has passed.


def test_two_thousand_calls_at_concurrency_16(bolt_sites, run_bolt_client):
    result = run_bolt_client(
        bolt_sites.triple_target, "echo", app=ALLOWED_APP, count=2000, concurrency=16, process_timeout=120
    )
    assert (result["calls"], result["errors"]) == (2000, 0), result


def test_unknown_service_and_denied_app_are_errors(bolt_sites, run_bolt_client):
    unknown = run_bolt_client(bolt_sites.triple_target, "unknown", app=ALLOWED_APP)
    assert unknown["ok"] is False and "not imported" in unknown["error"]["message"], unknown
    denied = run_bolt_client(bolt_sites.triple_target, "echo", app="intruder-app")
    assert denied["ok"] is False and "PERMISSION_DENIED" in denied["error"]["message"], denied
    bolt_sites.a.wait_for_event(
        lambda e: e.get("event") == "audit" and e.get("decision") == "deny" and e.get("caller_app") == "intruder-app"
    )


# --- raw frames ---------------------------------------------------------------------------------------------


def _exchange(sites: TwoSites, frame: bytes, expect_response: bool = True, timeout: float = 5.0) -> bytes:
    host, port = sites.triple_target.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(frame)
        if not expect_response:
            sock.settimeout(1.0)
            try:
                return sock.recv(65536)
            except TimeoutError:
                return b""
        decoder = bolt.BoltDecoder()
        while True:
            chunk = sock.recv(65536)
            assert chunk, "the gateway closed the connection"
            frames = decoder.feed(chunk)
            if frames:
                return frames[0].raw


def test_heartbeat_is_answered_by_the_gateway(bolt_sites):
    ack = _exchange(bolt_sites, vector("bolt_v1_heartbeat"))
    assert ack == vector("bolt_v1_heartbeat_ack")


def test_v2_with_crc_is_answered_in_v2_with_a_valid_crc(bolt_sites):
    request = bolt.BoltDecoder().feed(vector("bolt_v2_crc_req_echo"))[0]
    request.header = bolt.encode_header_map({"service": "com.example.EchoService:1.0", "app": ALLOWED_APP})
    request.raw = None
    raw = _exchange(bolt_sites, bolt.encode(request))
    response = bolt.BoltDecoder().feed(raw)[0]  # the decoder checks the CRC
    assert (response.proto, response.ver1, response.has_crc) == (2, 2, True)
    assert response.request_id == request.request_id
    assert response.status == bolt.ResponseStatus.SUCCESS
    body = raw[:-4]
    assert struct.unpack(">I", raw[-4:])[0] == zlib.crc32(body)


def test_oneway_gets_no_response_but_reaches_the_provider(bolt_sites):
    request = bolt.BoltDecoder().feed(vector("bolt_v1_oneway_echo"))[0]
    request.header = bolt.encode_header_map({"service": "com.example.EchoService:1.0", "app": ALLOWED_APP})
    request.raw = None
    assert _exchange(bolt_sites, bolt.encode(request), expect_response=False) == b""
    bolt_sites.a.wait_for_event(
        lambda e: e.get("event") == "call" and e.get("ingress") == "peer-bolt" and e.get("method") == "echo"
        and e.get("status") == "OK"
    )


def test_garbage_closes_only_that_connection(bolt_sites, run_bolt_client):
    host, port = bolt_sites.triple_target.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"\x07garbage that is not bolt")
        assert sock.recv(100) == b""  # closed
    assert run_bolt_client(bolt_sites.triple_target, "echo", app=ALLOWED_APP)["ok"]


def test_site_c_cannot_use_site_b_domain_over_bolt(bolt_sites, certs):
    """Site B's access domain is served only to certificates of site B's CA: site C's is refused in the
    handshake (TLS 1.3 tells the client on its first read), and the refusal is audited."""
    paths = certs.site("site-c")
    context = rawgrpc.mtls_context(certs.site("site-a").ca, paths.cert, paths.key)
    context.set_alpn_protocols(["bolt"])
    request = bolt.BoltDecoder().feed(vector("bolt_v1_req_echo"))[0]
    with pytest.raises(ssl.SSLError, match="UNKNOWN_CA|unknown ca"):
        sock = rawgrpc.open_socket("127.0.0.1", bolt_sites.a_peer_port, context, access_domain("site-b", "site-a"), 5)
        with sock:
            port = sock.getsockname()[1]
            sock.sendall(bolt.encode(request))
            sock.recv(65536)
    event = bolt_sites.a.wait_for_event(
        lambda e: e.get("event") == "audit" and e.get("decision") == "deny" and e.get("remote", "").endswith(f":{port}")
    )
    reason = event["reason"].replace(access_domain("site-b", "site-a"), "")
    assert "site-b" not in reason and "site-c" not in reason


def _whoami_request(header: dict[str, str]) -> bytes:
    """A sofa-rpc-node style SofaRequest for whoami() with the given header map."""
    from interlink.wire.hessian2 import HessianObject, SofaHessianWriter

    writer = SofaHessianWriter()
    writer.write_object(
        HessianObject(
            bolt.SOFA_REQUEST_CLASS.decode(),
            {
                "methodName": "whoami",
                "methodArgSigs": [],
                "targetServiceUniqueName": "com.example.EchoService:1.0",
                "targetAppName": None,
                "requestProps": {"service": "com.example.EchoService:1.0"},
            },
        )
    )
    frame = bolt.BoltFrame(
        proto=1, type=bolt.TYPE_REQUEST, cmdcode=bolt.CMD_RPC_REQUEST, request_id=77, timeout=3000,
        class_name=bolt.SOFA_REQUEST_CLASS, header=bolt.encode_header_map(header), content=writer.getvalue(),
    )
    return bolt.encode(frame)


def test_identity_keys_from_local_callers_are_replaced(bolt_sites):
    from interlink.wire.hessian2 import SofaHessianReader

    raw = _exchange(
        bolt_sites,
        _whoami_request(
            {
                "service": "com.example.EchoService:1.0",
                "app": ALLOWED_APP,
                "x-interlink-caller-app": "forged-app",
                "x-interlink-caller-site": "site-a",
                "x-interlink-anything": "forged",
            }
        ),
    )
    response = bolt.BoltDecoder().feed(raw)[0]
    assert response.request_id == 77 and response.status == bolt.ResponseStatus.SUCCESS
    seen = json.loads(SofaHessianReader(response.content).read_value().fields["appResponse"])
    headers = seen["headers"]
    assert headers["x-interlink-caller-app"] == ALLOWED_APP
    assert headers["x-interlink-caller-site"] == "site-b"
    assert "x-interlink-anything" not in headers


def test_calls_in_flight_are_bounded_and_the_excess_fails_fast(bolt_sites):
    """Callers cannot queue unbounded work in a gateway: GW-B's link to GW-A carries at most
    max_concurrent_streams (256) x connections (2) = 512 calls, and one caller connection may not take the
    last eighth of them (64 are left for callers that hold fewer than 8): 448 go through, the excess is
    refused at once with RESOURCE_EXHAUSTED (a SofaResponse error for these hessian2 callers)."""
    from interlink.wire import sofarpc

    slow = _slow_request(request_id=1, ms=1500)
    host, port = bolt_sites.triple_target.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"".join(bolt.patch_request_id(slow, i) for i in range(1, 601)))
        decoder, refused = bolt.BoltDecoder(), []
        while len(refused) < 152:
            for frame in decoder.feed(sock.recv(65536)):
                is_error, message = sofarpc.read_response_summary(frame.content)
                assert is_error and "RESOURCE_EXHAUSTED" in message, message
                refused.append(frame.request_id)
    assert sorted(refused) == list(range(449, 601))


def _slow_request(request_id: int, ms: int) -> bytes:
    from interlink.wire.hessian2 import HessianObject, SofaHessianWriter

    writer = SofaHessianWriter()
    writer.write_object(
        HessianObject(
            bolt.SOFA_REQUEST_CLASS.decode(),
            {
                "methodName": "slow",
                "methodArgSigs": ["int"],
                "targetServiceUniqueName": "com.example.EchoService:1.0",
                "targetAppName": None,
                "requestProps": {"service": "com.example.EchoService:1.0", "app": ALLOWED_APP},
            },
        )
    )
    writer.write_int(ms)
    frame = bolt.BoltFrame(
        proto=1, type=bolt.TYPE_REQUEST, cmdcode=bolt.CMD_RPC_REQUEST, request_id=request_id, timeout=5000,
        class_name=bolt.SOFA_REQUEST_CLASS,
        header=bolt.encode_header_map({"service": "com.example.EchoService:1.0"}), content=writer.getvalue(),
    )
    return bolt.encode(frame)
