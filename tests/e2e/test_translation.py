"""Bolt <-> Triple translation through two gateways, with real peers on both ends.

    protobuf:  sofa-rpc-node client (codec 11) -> GW-B -Bolt link-> GW-A -> grpcio provider (IDL)
               grpcio / grpc-js client -> GW-B -h2 link-> GW-A -> sofa-rpc-node server (codec 11)
    hessian2:  sofa-rpc-node client (hessian2) -> GW-B -> GW-A -> Triple wrapper-mode provider (SOFA / Dubbo)
               Triple wrapper-mode client (hessian2 / hessian4) -> GW-B -> GW-A -> sofa-rpc-node server

The wrapper-mode peers (tests/peers/wrapper_*.js) decode and encode Hessian with hessian.js, independent of
the gateway's own codec.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from interlink.demo.client import EchoClient
from tests.conftest import PEERS_DIR, Peer, _json_line_of, start_process_peer, stop_process
from tests.e2e.topology import ALLOWED_APP, TwoSites, two_sites

APP = (("tri-consumer-appname", ALLOWED_APP),)
METHODS = ["echo", "add", "fail", "sleep", "slow", "whoami", "echoobj", "count", "sum", "chat"]


def _sites(certs, tmp_path_factory, name: str, provider: Peer, protocol: str, export: dict[str, Any]) -> TwoSites:
    return two_sites(
        certs, tmp_path_factory.mktemp(name), provider.target, name=name, protocol=protocol, methods=METHODS,
        export_options=export,
    )


def _peer(node: str, script: str, name: str, *extra: str) -> Peer:
    return start_process_peer([node, str(PEERS_DIR / script), "--listen", "127.0.0.1:0", "--name", name, *extra], name)


def _client(node: str, script: str, target: str, case: str, *extra: str, timeout: float = 60.0) -> dict[str, Any]:
    return _json_line_of([node, str(PEERS_DIR / script), "--target", target, "--case", case, *extra], script, timeout)


# --- protobuf: Bolt codec 11 <-> Triple IDL, body bytes unchanged --------------------------------------


@pytest.fixture(scope="module")
def bolt_to_grpc(certs, tmp_path_factory, py_provider) -> Iterator[TwoSites]:
    sites = _sites(certs, tmp_path_factory, "b2g", py_provider, "bolt", {"protocol": "triple", "flavour": "grpc"})
    yield sites
    sites.stop()


def test_bolt_protobuf_client_calls_a_grpc_provider(bolt_to_grpc, bolt_peers):
    target = bolt_to_grpc.triple_target
    echoed = _client(bolt_peers, "bolt_pb_client.js", target, "echo", "--app", ALLOWED_APP, "--arg", "héllo ✓")
    assert echoed["ok"] and echoed["result"] == {"message": "héllo ✓"}, echoed
    added = _client(bolt_peers, "bolt_pb_client.js", target, "add", "--app", ALLOWED_APP, "--arg", "2147483647", "--arg", "1")
    assert added["result"] == {"sum": -2147483648}, added  # Java int overflow, computed by the grpcio provider
    failed = _client(bolt_peers, "bolt_pb_client.js", target, "fail", "--app", ALLOWED_APP, "--arg", "boom 100%")
    assert failed["ok"] is False and "boom 100%" in failed["error"]["message"], failed
    slow = _client(bolt_peers, "bolt_pb_client.js", target, "sleep", "--app", ALLOWED_APP, "--arg", "1500", "--timeout-ms", "300")
    assert slow["ok"] is False, slow
    bolt_to_grpc.a.wait_for_event(
        lambda e: e.get("event") == "call" and e.get("method") == "sleep" and _ended_by_the_deadline(e)
        and e.get("translated") == "bolt->triple",
        timeout=5,
    )


def test_bolt_protobuf_metadata_reaches_the_grpc_provider(bolt_to_grpc, bolt_peers):
    # The grpcio provider echoes x-echo-* request metadata into its trailers; Bolt header keys arrive as
    # gRPC metadata and the trailers come back as Bolt response header entries.
    result = _client(
        bolt_peers, "bolt_pb_client.js", bolt_to_grpc.triple_target, "echo", "--app", ALLOWED_APP,
        "--prop", "rpc_trace_context.sofaTraceId=0a0b0c", "--prop", "x-echo-color=blue",
    )
    assert result["ok"], result
    event = bolt_to_grpc.a.wait_for_event(lambda e: e.get("event") == "call" and e.get("translated") == "bolt->triple")
    assert event["caller_app"] == ALLOWED_APP


def test_bolt_protobuf_load_through_translation(bolt_to_grpc, bolt_peers):
    result = _client(
        bolt_peers, "bolt_pb_client.js", bolt_to_grpc.triple_target, "echo", "--app", ALLOWED_APP,
        "--count", "1000", "--concurrency", "16", timeout=120,
    )
    assert (result["calls"], result["errors"]) == (1000, 0), result


@pytest.fixture(scope="module")
def bolt_pb_server(bolt_peers) -> Iterator[Peer]:
    peer = _peer(bolt_peers, "bolt_pb_server.js", "bolt-pb-provider")
    yield peer
    assert peer.process is not None
    stop_process(peer.process)


@pytest.fixture(scope="module")
def grpc_to_bolt(certs, tmp_path_factory, bolt_pb_server) -> Iterator[TwoSites]:
    sites = _sites(
        certs, tmp_path_factory, "g2b", bolt_pb_server, "triple", {"protocol": "bolt", "codec": "protobuf", "version": "1.0"}
    )
    yield sites
    sites.stop()


def test_grpcio_client_calls_a_bolt_protobuf_provider(grpc_to_bolt):
    with EchoClient(grpc_to_bolt.triple_target) as client:
        assert client.echo("héllo ✓", APP)[0] == "héllo ✓"
        assert client.add(40, 2, APP) == 42
        with pytest.raises(grpc.RpcError) as failed:
            client.fail("boom", APP)
        assert failed.value.code() == grpc.StatusCode.UNKNOWN and "boom" in failed.value.details()
        with pytest.raises(grpc.RpcError) as late:
            client.sleep(1500, timeout=0.3, metadata=APP)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_bolt_provider_sees_method_app_trace_and_caller_site(grpc_to_bolt):
    whoami = grpc.insecure_channel(grpc_to_bolt.triple_target).unary_unary("/com.example.EchoService/whoami")
    reply = whoami(b"", metadata=APP + (("tri-trace-traceid", "0a0b0c"), ("x-custom", "v1")), timeout=5)
    seen = json.loads(_echo_reply_message(reply))
    headers = seen["headers"]
    assert headers["service"] == headers["sofa_head_target_service"] == "com.example.EchoService:1.0"
    assert headers["sofa_head_method_name"] == "whoami"
    assert headers["app"] == ALLOWED_APP
    assert headers["rpc_trace_context.sofaTraceId"] == "0a0b0c"
    assert headers["x-custom"] == "v1"
    assert headers["x-interlink-caller-site"] == "site-b"
    assert 0 < seen["timeout_ms"] <= 5100  # grpcio rounds its grpc-timeout up a little


def test_streaming_calls_to_a_bolt_provider_are_refused(grpc_to_bolt):
    with EchoClient(grpc_to_bolt.triple_target) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.sum([(1, 2), (3, 4)], APP)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "streaming" in refused.value.details()
        with pytest.raises(grpc.RpcError) as chat:
            client.chat(["a", "b"], APP, lockstep=False)
        assert chat.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_js_client_calls_a_bolt_protobuf_provider(grpc_to_bolt, run_node_client):
    result = run_node_client(grpc_to_bolt.triple_target, "add", a=5, b=6, metadata={"tri-consumer-appname": ALLOWED_APP})
    assert result["ok"] and result["sum"] == 11, result


def _echo_reply_message(data: bytes) -> str:
    from interlink.demo.client import load

    echo_pb2, _ = load()
    return echo_pb2.EchoReply.FromString(data).message


# --- hessian2: Bolt codec 1 <-> Triple wrapper mode (SOFA "hessian2" and Dubbo "hessian4") ----------------


@pytest.fixture(scope="module", params=["sofa", "dubbo"])
def bolt_to_wrapper(request, certs, tmp_path_factory, bolt_peers) -> Iterator[TwoSites]:
    flavour = request.param
    provider = _peer(bolt_peers, "wrapper_server.js", f"wrapper-{flavour}", "--flavour", flavour)
    export = {"protocol": "triple", "flavour": flavour, "version": "1.0"}
    sites = _sites(certs, tmp_path_factory, f"b2w-{flavour}", provider, "bolt", export)
    sites.flavour = flavour  # type: ignore[attr-defined]
    yield sites
    sites.stop()
    assert provider.process is not None
    stop_process(provider.process)


def test_bolt_hessian_client_calls_a_wrapper_mode_provider(bolt_to_wrapper, run_bolt_client):
    target = bolt_to_wrapper.triple_target
    echoed = run_bolt_client(target, "echo", app=ALLOWED_APP, args=["héllo ✓ " + "x" * 40])
    assert (echoed["ok"], echoed["result"]) == (True, "héllo ✓ " + "x" * 40), echoed
    added = run_bolt_client(target, "add", app=ALLOWED_APP, args=[40, 2])
    assert (added["ok"], added["result"]) == (True, 42), added


def test_the_wrapper_provider_sees_independent_args_types_and_flavour_headers(bolt_to_wrapper, run_bolt_client):
    result = run_bolt_client(bolt_to_wrapper.triple_target, "whoami", app=ALLOWED_APP, target_app="echo-server")
    assert result["ok"], result
    seen = json.loads(result["result"])
    flavour = bolt_to_wrapper.flavour  # type: ignore[attr-defined]
    assert seen["serialize"] == ("hessian2" if flavour == "sofa" else "hessian4")
    assert seen["arg_types"] == [] and seen["consumer_app"] == ALLOWED_APP
    if flavour == "sofa":
        assert seen["sofa_target_service"] == "com.example.EchoService:1.0" and seen["sofa_method"] == "whoami"
    else:
        assert seen["service_version"] == "1.0"
    assert seen["sofa_target_app"] == "echo-server"
    assert 0 < seen["deadline_ms"] <= 3000


def test_objects_with_shared_references_cross_into_wrapper_mode(bolt_to_wrapper, run_bolt_client):
    # One SOFA Hessian stream (SofaRequest, then a Pojo whose two objects share a list) becomes one
    # independent argument stream in the provider's dialect; the provider's decoder (hessian.js) checks the
    # class and the shared list, and its answer is wrapped back into a SofaResponse.
    result = run_bolt_client(bolt_to_wrapper.triple_target, "echoobj", app=ALLOWED_APP)
    assert result["ok"], result
    assert result["result"] == {
        "name": "outer", "tags": ["a", "b"], "nested": {"name": "inner", "tags": ["a", "b"], "nested": None}
    }
    assert result["shared_tags"] is True


def test_provider_errors_reach_the_bolt_caller(bolt_to_wrapper, run_bolt_client):
    failed = run_bolt_client(bolt_to_wrapper.triple_target, "fail", app=ALLOWED_APP, args=["boom 100%"])
    assert failed["ok"] is False and "boom 100%" in failed["error"]["message"], failed


def test_deadline_crosses_into_the_wrapper_provider(bolt_to_wrapper, run_bolt_client):
    late = run_bolt_client(bolt_to_wrapper.triple_target, "slow", app=ALLOWED_APP, args=[1500], timeout_ms=300)
    assert late["ok"] is False, late
    bolt_to_wrapper.a.wait_for_event(
        lambda e: e.get("event") == "call" and e.get("method") == "slow" and _ended_by_the_deadline(e),
        timeout=5,
    )


def _ended_by_the_deadline(event: dict) -> bool:
    """GW-A ended the call at the deadline: its own timer, or GW-B's (which cancels the call over the link,
    as it gives up at the same moment), whichever fired first."""
    return event.get("status") == "DEADLINE_EXCEEDED" or (
        event.get("status") == "CANCELLED" and "calling gateway cancelled" in event.get("error", "")
    )


@pytest.fixture(scope="module")
def wrapper_to_bolt(certs, tmp_path_factory, bolt_server) -> Iterator[TwoSites]:
    sites = _sites(certs, tmp_path_factory, "w2b", bolt_server, "triple", {"protocol": "bolt", "version": "1.0"})
    yield sites
    sites.stop()


@pytest.mark.parametrize("serialize", ["hessian2", "hessian4"])
def test_wrapper_mode_client_calls_a_bolt_hessian_provider(wrapper_to_bolt, bolt_peers, serialize):
    target = wrapper_to_bolt.triple_target
    args = ("--serialize", serialize, "--app", ALLOWED_APP)
    echoed = _client(bolt_peers, "wrapper_client.js", target, "echo", *args, "--arg", "héllo ✓ " + "y" * 50)
    assert echoed["ok"] and echoed["result"] == "héllo ✓ " + "y" * 50 and echoed["serialize"] == serialize, echoed
    added = _client(bolt_peers, "wrapper_client.js", target, "add", *args, "--arg", "2147483647", "--arg", "1")
    assert added["ok"] and added["result"] == -2147483648, added
    failed = _client(bolt_peers, "wrapper_client.js", target, "fail", *args, "--arg", "boom")
    assert failed["ok"] is False and failed["code"] == grpc.StatusCode.UNKNOWN.value[0] and "boom" in failed["details"], failed


@pytest.mark.parametrize("serialize", ["hessian2", "hessian4"])
def test_objects_with_shared_references_cross_into_bolt(wrapper_to_bolt, bolt_peers, serialize):
    result = _client(
        bolt_peers, "wrapper_client.js", wrapper_to_bolt.triple_target, "echoobj", "--serialize", serialize,
        "--app", ALLOWED_APP,
    )
    assert result["ok"], result
    assert result["result_class"] == "com.example.Pojo" and result["shared_tags"] is True, result
    assert result["result"]["nested"]["name"] == "inner"


def test_the_bolt_provider_sees_the_sofa_request_built_from_the_wrapper(wrapper_to_bolt, bolt_peers):
    seen = _client(
        bolt_peers, "wrapper_client.js", wrapper_to_bolt.triple_target, "whoami", "--serialize", "hessian4",
        "--app", ALLOWED_APP, "--metadata", "tri-trace-traceid=0a0b0c",
    )
    assert seen["ok"], seen
    who = json.loads(seen["result"])
    assert who["method"] == "whoami" and who["arg_sigs"] == []
    assert who["service"] == "com.example.EchoService:1.0"
    assert who["app"] == ALLOWED_APP
    assert who["props"]["rpc_trace_context"]["sofaTraceId"] == "0a0b0c"
    assert who["headers"]["x-interlink-caller-site"] == "site-b"


# --- what cannot be translated is refused with a reason, never guessed ----------------------------------


def test_a_hessian_bolt_call_to_an_idl_grpc_export_is_refused(bolt_to_grpc, run_bolt_client):
    result = run_bolt_client(bolt_to_grpc.triple_target, "echo", app=ALLOWED_APP, args=["x"])
    assert result["ok"] is False and "cannot be translated" in result["error"]["message"], result
    assert "UNIMPLEMENTED" in result["error"]["message"]


def test_unknown_serialize_type_and_idl_calls_to_a_hessian_bolt_export_are_refused(wrapper_to_bolt, bolt_peers):
    result = _client(
        bolt_peers, "wrapper_client.js", wrapper_to_bolt.triple_target, "echo", "--serialize", "hessian2",
        "--serialize-type", "fastjson2", "--app", ALLOWED_APP,
    )
    assert result["ok"] is False and result["code"] == grpc.StatusCode.INTERNAL.value[0], result
    assert "fastjson2" in result["details"], result
    with EchoClient(wrapper_to_bolt.triple_target) as client, pytest.raises(grpc.RpcError) as idl:
        client.echo("an IDL message, not a wrapper", APP)
    assert idl.value.code() == grpc.StatusCode.INTERNAL, idl.value
    # The gateway and its Bolt provider connection carry on.
    echoed = _client(bolt_peers, "wrapper_client.js", wrapper_to_bolt.triple_target, "echo", "--serialize", "hessian2",
                     "--app", ALLOWED_APP, "--arg", "still fine")
    assert echoed["result"] == "still fine", echoed
