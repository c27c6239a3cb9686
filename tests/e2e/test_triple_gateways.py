"""Real gRPC clients (grpcio, @grpc/grpc-js) in site B -> GW-B -> mTLS -> GW-A -> real providers in site A."""

from __future__ import annotations

import base64

import grpc
import pytest

from interlink.demo.client import EchoClient, md_value, md_values
from tests.e2e import rawgrpc
from tests.e2e.topology import ALLOWED_APP, SERVICE, TwoSites

APP = (("tri-consumer-appname", ALLOWED_APP),)
MIB = 1024 * 1024


# --- grpcio client ------------------------------------------------------------------------------------------


def test_unary_with_metadata_round_trip(sites: TwoSites):
    with EchoClient(sites.triple_target) as client:
        message, initial, trailing = client.echo(
            "hello ✓",
            metadata=APP + (("x-echo-text", "v1"), ("x-echo-data-bin", b"\x00\xffbin")),
        )
    assert message == "hello ✓"
    assert md_value(initial, "x-served-by") in {"py-provider", "node-provider"}
    assert md_values(trailing, "x-echo-text") == ["v1"]
    assert md_values(trailing, "x-echo-data-bin") == [b"\x00\xffbin"]
    # GW-B stamped the caller app it read from tri-consumer-appname; GW-A added the caller site.
    assert md_values(trailing, "x-caller-app") == [ALLOWED_APP]
    saw = md_value(trailing, "x-saw-keys").split(",")
    assert "x-interlink-caller-site" in saw and "x-interlink-caller-app" in saw


def test_all_four_call_shapes(sites: TwoSites):
    with EchoClient(sites.triple_target) as client:
        assert client.add(20, 22, metadata=APP) == 42
        assert client.count(4, metadata=APP) == [1, 2, 3, 4]
        assert client.sum([(1, 2), (3, 4), (5, 6)], metadata=APP) == 21
        assert client.chat(["a", "b", "c", "d"], metadata=APP) == ["a", "b", "c", "d"]


def test_provider_error_status_and_message_pass_through(sites: TwoSites):
    with EchoClient(sites.triple_target) as client, pytest.raises(grpc.RpcError) as info:
        client.fail("bad request: 100% ünïcødé", metadata=APP)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "bad request: 100% ünïcødé"


def test_deadline_exceeded(sites: TwoSites):
    with EchoClient(sites.triple_target) as client, pytest.raises(grpc.RpcError) as info:
        client.sleep(3000, metadata=APP, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_timeout_is_propagated_and_reduced(sites: TwoSites):
    # grpcio and grpc-js round their own grpc-timeout up; a raw client sends exactly 2000 ms.
    host, port = sites.triple_target.split(":")
    headers = rawgrpc.grpc_request_headers(f"/{SERVICE}/sleep", "gw", [*APP, ("grpc-timeout", "2000m")], scheme="http")
    result = rawgrpc.call(host, int(port), headers, b"\x08\x01")  # SleepRequest{ms: 1}
    assert result.grpc_status == 0, result
    remaining_ms = int(result.header(b"x-deadline-ms"))
    assert 1000 < remaining_ms < 2000  # the provider saw the caller's deadline, minus the time spent


def test_one_mebibyte_message(sites: TwoSites):
    with EchoClient(sites.triple_target) as client:
        message, _, _ = client.echo("x" * MIB, metadata=APP, timeout=20)
    assert len(message) == MIB


# --- @grpc/grpc-js client -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "kwargs", "check"),
    [
        ("echo", {}, lambda r: r["message"] == "hello from grpc-js" and r["trailing"]["x-caller-app"] == [ALLOWED_APP]),
        ("add", {"a": 40, "b": 2}, lambda r: r["sum"] == 42),
        ("count", {"a": 3}, lambda r: r["sums"] == [1, 2, 3]),
        ("sum", {}, lambda r: r["sum"] == 21),
        ("chat", {"messages": ["x", "y", "z"]}, lambda r: r["messages"] == ["x", "y", "z"]),
        ("big", {"size": MIB, "timeout_ms": 20000}, lambda r: r["matched"] and r["length"] == MIB),
    ],
)
def test_grpcjs_client(sites: TwoSites, run_node_client, case, kwargs, check):
    result = run_node_client(sites.triple_target, case, metadata=APP, **kwargs)
    assert result["ok"], result
    assert check(result), result


def test_grpcjs_client_metadata_and_errors(sites: TwoSites, run_node_client):
    binary = base64.b64encode(b"\x01\x02\xfe").decode()
    result = run_node_client(
        sites.triple_target, "echo", metadata=APP + (("x-echo-k", "v"), ("x-echo-b-bin", binary))
    )
    assert result["trailing"]["x-echo-k"] == ["v"]
    assert result["trailing"]["x-echo-b-bin"] == [binary]
    failed = run_node_client(sites.triple_target, "fail", metadata=APP, messages=["boom: 100% ✓"])
    assert (failed["ok"], failed["code"], failed["details"]) == (False, 3, "boom: 100% ✓")
    late = run_node_client(sites.triple_target, "sleep", metadata=APP, sleep_ms=3000, timeout_ms=300)
    assert (late["ok"], late["code"]) == (False, 4)


# --- what the gateways refuse ---------------------------------------------------------------------------------


def test_app_not_in_acl_is_denied_and_audited(py_sites: TwoSites):
    with EchoClient(py_sites.triple_target) as client, pytest.raises(grpc.RpcError) as info:
        client.echo("x", metadata=(("tri-consumer-appname", "intruder-app"),))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "intruder-app" in info.value.details()
    py_sites.a.wait_for_event(
        lambda e: e.get("event") == "audit" and e.get("decision") == "deny" and e.get("caller_app") == "intruder-app"
    )


def test_identity_headers_from_local_callers_are_replaced(py_sites: TwoSites):
    forged = (("tri-consumer-appname", "intruder-app"), ("x-interlink-caller-app", ALLOWED_APP))
    with EchoClient(py_sites.triple_target) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.echo("x", metadata=forged)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        _, _, trailing = client.echo("x", metadata=APP + (("x-interlink-caller-site", "site-a"),))
    assert md_values(trailing, "x-caller-app") == [ALLOWED_APP]


def test_method_not_in_acl_is_denied(py_sites: TwoSites):
    host, port = py_sites.triple_target.split(":")
    result = rawgrpc.call(
        host, int(port), rawgrpc.grpc_request_headers(f"/{SERVICE}/shutdown", "gw", list(APP), scheme="http")
    )
    assert result.grpc_status == grpc.StatusCode.PERMISSION_DENIED.value[0], result
    assert "shutdown" in result.grpc_message


def test_service_not_imported_is_unimplemented(py_sites: TwoSites):
    host, port = py_sites.triple_target.split(":")
    result = rawgrpc.call(host, int(port), rawgrpc.grpc_request_headers("/com.example.Other/echo", "gw", scheme="http"))
    assert result.grpc_status == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "not imported" in result.grpc_message


def test_gateway_enforces_the_deadline_itself(py_sites: TwoSites):
    """A caller that sends grpc-timeout but never cancels still gets DEADLINE_EXCEEDED from the gateway."""
    host, port = py_sites.triple_target.split(":")
    sleep_2s = b"\x08\xd0\x0f"  # SleepRequest{ms: 2000}
    headers = rawgrpc.grpc_request_headers(f"/{SERVICE}/sleep", "gw", [*APP, ("grpc-timeout", "200m")], scheme="http")
    result = rawgrpc.call(host, int(port), headers, sleep_2s)
    assert result.grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], result


def test_malformed_request_gets_an_error_and_the_connection_lives_on(py_sites: TwoSites):
    host, port = py_sites.triple_target.split(":")
    not_grpc = [(":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/echo"), (":authority", "gw"),
                ("content-type", "text/plain")]
    result = rawgrpc.call(host, int(port), not_grpc)
    assert result.header(b":status") == b"415" and result.grpc_status == 13
    with EchoClient(py_sites.triple_target) as client:  # the gateway is fine
        assert client.add(1, 1, metadata=APP) == 2
