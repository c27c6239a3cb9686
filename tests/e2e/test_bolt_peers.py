"""The SOFA Bolt peers on their own, WITHOUT any gateway.

sofa-rpc-node 2.10.0 client (tests/peers/bolt_client.js) -> sofa-rpc-node 2.10.0 server
(tests/peers/bolt_server.js), fixed address, no registry, hessian2, Bolt V1. These pin down
what the gateway tests can rely on: results, error shapes, the client-side timeout, what the
server sees about the caller (``whoami``), throughput, and the raw heartbeat exchange.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "bolt"
BOLT_SERVER_JS = Path(__file__).resolve().parents[1] / "peers" / "bolt_server.js"
SERVICE_ID = "com.example.EchoService:1.0"


def read_vector(name: str) -> bytes:
    return bytes.fromhex("".join((VECTORS / f"{name}.hex").read_text().split()))


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"connection closed after {len(buf)} of {n} bytes: {buf.hex()}")
        buf += chunk
    return buf


def assert_no_more_bytes(sock: socket.socket, wait: float = 0.3) -> None:
    sock.settimeout(wait)
    try:
        extra = sock.recv(4096)
    except TimeoutError:
        return
    finally:
        sock.settimeout(5.0)
    raise AssertionError(f"unexpected extra bytes: {extra.hex()}")


# ---- client -> server ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "héllo wörld: 日本語 中文 ✓ 🎉 %41 %%",  # non-ASCII incl. a surrogate pair (emoji)
        "ü" * 40 + "x" * 1000,  # > 1023 chars: long-string form
        ("ünïcødé-🎉-" * 4000)[:40000],  # > 32 Ki chars: chunked string
    ],
    ids=["ascii", "non-ascii", "1040-chars", "40000-chars"],
)
def test_echo(bolt_server, run_bolt_client, text):
    r = run_bolt_client(bolt_server.target, "echo", args=[text])
    assert r["ok"] is True, r
    assert r["result"] == text
    assert r["elapsed_ms"] >= 0


def test_echo_default_argument(bolt_server, run_bolt_client):
    r = run_bolt_client(bolt_server.target, "echo")
    assert r == {"ok": True, "case": "echo", "result": "hello", "elapsed_ms": r["elapsed_ms"]}


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [(2, 3, 5), (-7, 3, -4), (0, 0, 0), (2**31 - 1, 1, -(2**31))],  # Java int overflow wraps
)
def test_add(bolt_server, run_bolt_client, a, b, want):
    r = run_bolt_client(bolt_server.target, "add", args=[a, b])
    assert r["ok"] is True, r
    assert r["result"] == want


def test_add_default_arguments(bolt_server, run_bolt_client):
    r = run_bolt_client(bolt_server.target, "add")
    assert r["ok"] is True and r["result"] == 5, r


def test_fail_reaches_client_as_error(bolt_server, run_bolt_client):
    r = run_bolt_client(bolt_server.target, "fail", args=["boom"])
    assert r["ok"] is False, r
    err = r["error"]
    # sofa-rpc-node answers with Bolt status SERVER_EXCEPTION and an RpcServerException body;
    # the node client turns it into a plain Error (resultCode "01").
    assert err["name"] == "Error"
    assert err["message"] == "com.alipay.remoting.rpc.exception.RpcServerException: Error: boom"
    assert err["code"] == "01"


def test_fail_non_ascii_message(bolt_server, run_bolt_client):
    r = run_bolt_client(bolt_server.target, "fail", args=["kaputt: ünïcødé ✓ 日本語"])
    assert r["ok"] is False, r
    assert r["error"]["message"].endswith("Error: kaputt: ünïcødé ✓ 日本語")


def test_slow_within_timeout(bolt_server, run_bolt_client):
    r = run_bolt_client(bolt_server.target, "slow", args=[50], timeout_ms=3000)
    assert r["ok"] is True, r
    assert r["result"] == 50
    assert r["elapsed_ms"] >= 50


def test_slow_times_out_on_the_client(bolt_server, run_bolt_client):
    r = run_bolt_client(bolt_server.target, "slow", args=[1500], timeout_ms=200)
    assert r["ok"] is False, r
    err = r["error"]
    assert err["name"] == "RpcResponseTimeoutError"
    # e.g. "no response in 201ms, address:bolt://127.0.0.1:40123"
    assert err["message"].startswith("no response in ")
    assert f"address:bolt://{bolt_server.target}" in err["message"]
    assert err["code"] == "03"
    assert 200 <= r["elapsed_ms"] < 1500


@pytest.mark.parametrize("app", [None, "billing-app", "ünïcødé-app"])
def test_whoami_shows_the_caller_app(bolt_server, run_bolt_client, app):
    r = run_bolt_client(bolt_server.target, "whoami", app=app)
    assert r["ok"] is True, r
    who = json.loads(r["result"])
    assert who == r["whoami"]
    want = app or "order-app"
    assert who["app"] == want
    assert who["served_by"] == "bolt-provider"
    # hessian2: requestProps travel only in the body; the Bolt header map is {service} only
    assert who["props"] == {"service": SERVICE_ID, "app": want}
    assert who["headers"] == {"service": SERVICE_ID}
    assert who["service"] == SERVICE_ID
    assert who["method"] == "whoami"
    assert who["arg_sigs"] == []
    assert who["target_app"] is None
    assert who["timeout_ms"] == 3000
    assert who["bolt"]["proto"] == 1 and who["bolt"]["codec"] == 1 and who["bolt"]["type"] == 1


def test_whoami_extra_props_target_app_and_timeout(bolt_server, run_bolt_client):
    r = run_bolt_client(
        bolt_server.target,
        "whoami",
        app="order-app",
        target_app="echo-server",
        timeout_ms=1234,
        props={"rpc_trace_context.sofaCallerApp": "order-app", "x-tenant": "t1"},
    )
    who = r["whoami"]
    assert who["props"] == {
        "service": SERVICE_ID,
        "app": "order-app",
        "rpc_trace_context.sofaCallerApp": "order-app",
        "x-tenant": "t1",
    }
    assert who["headers"] == {"service": SERVICE_ID}
    assert who["target_app"] == "echo-server"
    assert who["timeout_ms"] == 1234


def test_unknown_service_is_an_error(bolt_server, run_bolt_client):
    r = run_bolt_client(bolt_server.target, "unknown")
    assert r["ok"] is False, r
    assert r["error"]["message"] == (
        "com.alipay.remoting.rpc.exception.RpcServerException: "
        "Error: not found service: com.example.Missing:1.0"
    )


def test_no_listener_is_an_error(bolt_peers, run_bolt_client, free_port):
    r = run_bolt_client(f"127.0.0.1:{free_port}", "echo")
    assert r["ok"] is False, r
    assert r["error"]["name"] == "RpcNoProviderError"


def test_2000_calls_at_concurrency_16(bolt_server, run_bolt_client):
    r = run_bolt_client(bolt_server.target, "echo", count=2000, concurrency=16)
    assert r["ok"] is True, r
    assert r["calls"] == 2000
    assert r["errors"] == 0, r["first_error"]
    assert r["first_error"] is None
    assert r["rps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]


# ---- server process ------------------------------------------------------------------------


def test_server_binds_loopback_and_port_zero(bolt_server):
    assert bolt_server.host == "127.0.0.1"
    assert bolt_server.port > 0


def test_server_exits_cleanly_on_sigterm_and_sigint(bolt_peers, spawn_peer):
    for sig in (signal.SIGTERM, signal.SIGINT):
        argv = [bolt_peers, str(BOLT_SERVER_JS), "--listen", "127.0.0.1:0", "--name", "bolt-sig"]
        peer = spawn_peer(argv, "bolt-sig")
        assert peer.process is not None
        peer.process.send_signal(sig)
        assert peer.process.wait(10) == 0


# ---- raw frames ----------------------------------------------------------------------------


def test_raw_v1_heartbeat_gets_an_ack(bolt_server):
    heartbeat = read_vector("bolt_v1_heartbeat")
    assert len(heartbeat) == 22
    with socket.create_connection((bolt_server.host, bolt_server.port), timeout=5.0) as sock:
        sock.sendall(heartbeat)
        ack = recv_exactly(sock, 20)
        assert ack[0] == 0x01  # proto V1
        assert ack[1] == 0x00  # type RESPONSE
        assert ack[2:4] == b"\x00\x00"  # cmdcode HEARTBEAT
        assert ack[5:9] == heartbeat[5:9]  # same request id (101)
        assert struct.unpack(">hhhi", ack[10:20]) == (0, 0, 0, 0)  # SUCCESS, no class/header/body
        assert ack == read_vector("bolt_v1_heartbeat_ack")

        # a different id on the same connection is copied too
        other = heartbeat[:5] + struct.pack(">i", 0x7FFF0001) + heartbeat[9:]
        sock.sendall(other)
        ack2 = recv_exactly(sock, 20)
        assert ack2[5:9] == other[5:9]
        assert ack2[:5] == ack[:5] and ack2[9:] == ack[9:]
        assert_no_more_bytes(sock)


def test_raw_v1_echo_request_matches_golden_response(bolt_server):
    """The captured request replayed on a fresh connection gives the captured response."""
    with socket.create_connection((bolt_server.host, bolt_server.port), timeout=5.0) as sock:
        sock.sendall(read_vector("bolt_v1_req_echo"))
        want = read_vector("bolt_v1_resp_echo")
        got = recv_exactly(sock, len(want))
        assert got == want
        assert_no_more_bytes(sock)
