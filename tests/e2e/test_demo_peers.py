"""The demo peers on their own, WITHOUT any gateway.

These pin down the semantics the gateway tests rely on: the grpcio client
(interlink.demo.client) against the grpcio provider and the @grpc/grpc-js server, and the
grpc-js client against both providers. Both providers must behave the same.
"""

from __future__ import annotations

import base64
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest

from interlink.demo.client import EchoClient, md_value, md_values

# Non-ASCII, '%' and things that look like percent-encoding must survive grpc-message.
FAIL_DETAILS = [
    "bad request: 100% ünïcødé ✓ 日本語 %41 %%",
    "%",
    "plain ascii",
]
MIB = 1024 * 1024
NODE_SERVER_JS = Path(__file__).resolve().parents[1] / "peers" / "grpcjs_server.js"


@pytest.fixture(params=["python", "node"])
def provider(request):
    """Each test runs against the grpcio provider and against the grpc-js server."""
    return request.getfixturevalue("py_provider" if request.param == "python" else "node_server")


@pytest.fixture
def client(provider):
    with EchoClient(provider.target) as c:
        yield c


def joined(values) -> str:
    # grpc-js sends repeated text values of one key as a single comma-joined header
    # (equivalent in HTTP), grpcio as separate headers: compare the joined form.
    return ", ".join(values)


# --- grpcio client ------------------------------------------------------------------------


def test_echo_returns_message_and_echoes_metadata(client, provider):
    metadata = (
        ("x-echo-text", "hello"),
        ("x-echo-multi", "1"),
        ("x-echo-multi", "2"),
        ("x-echo-data-bin", b"\x00\xff\x01"),
        ("x-interlink-caller-app", "app-b"),
        ("x-other", "not echoed"),
    )
    message, initial, trailing = client.echo("hi ünï %", metadata=metadata)
    assert message == "hi ünï %"
    assert md_value(initial, "x-served-by") == provider.name
    assert md_values(trailing, "x-echo-text") == ["hello"]
    assert joined(md_values(trailing, "x-echo-multi")) == "1, 2"
    assert md_values(trailing, "x-echo-data-bin") == [b"\x00\xff\x01"]
    assert md_value(trailing, "x-caller-app") == "app-b"
    assert md_value(trailing, "x-saw-keys") == (
        "x-echo-data-bin,x-echo-multi,x-echo-text,x-interlink-caller-app,x-other"
    )
    assert md_value(trailing, "x-other") is None


def test_echo_without_metadata(client, provider):
    message, initial, trailing = client.echo("")
    assert message == ""
    assert md_value(initial, "x-served-by") == provider.name
    assert md_value(trailing, "x-caller-app") is None
    assert md_value(trailing, "x-saw-keys") == ""


def test_add(client):
    assert client.add(2, 3) == 5
    assert client.add(-7, 3) == -4
    # int32 wraps the same way in both implementations
    assert client.add(2**31 - 1, 1) == -(2**31)


@pytest.mark.parametrize("details", FAIL_DETAILS)
def test_fail_details_roundtrip(client, details):
    with pytest.raises(grpc.RpcError) as info:
        client.fail(details)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == details


def test_sleep_deadline_exceeded(client):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        client.sleep(2000, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5


def test_sleep_reports_remaining_deadline(client):
    ms, _, trailing = client.sleep(20, timeout=5)
    assert ms == 20
    remaining = int(md_value(trailing, "x-deadline-ms"))
    # grpcio rounds the grpc-timeout it sends up a little, hence the slack above 5000
    assert 3000 < remaining <= 5100
    ms, _, trailing = client.sleep(0, timeout=None)
    assert ms == 0
    assert md_value(trailing, "x-deadline-ms") == "none"


def test_sleep_actually_sleeps(client):
    started = time.monotonic()
    client.sleep(300, timeout=5)
    assert time.monotonic() - started >= 0.29


def test_count(client):
    assert client.count(5) == [1, 2, 3, 4, 5]
    assert client.count(0) == []
    assert client.count(1000) == list(range(1, 1001))


def test_sum(client):
    assert client.sum([(1, 2), (3, 4), (5, 6)]) == 21
    assert client.sum([]) == 0
    assert client.sum([(2**31 - 1, 0), (1, 0)]) == -(2**31)


def test_chat_answers_each_message_immediately(client):
    # lockstep: each request is only sent after the previous reply arrived
    messages = ["one", "twö", "%3", ""]
    assert client.chat(messages, timeout=5) == messages
    assert client.chat([], timeout=5) == []
    assert client.chat(["a", "b", "c"], lockstep=False) == ["a", "b", "c"]


@pytest.mark.parametrize("size", [MIB, 7 * MIB])
def test_big_echo(client, size):
    # 7 MiB is over gRPC's default 4 MiB receive limit: both sides must allow 8 MiB
    payload = "x" * (size - 3) + "end"
    message, _, _ = client.echo(payload, timeout=30)
    assert len(message) == size
    assert message == payload


# --- grpc-js client -----------------------------------------------------------------------


def test_node_client_echo(run_node_client, provider):
    res = run_node_client(
        provider.target,
        "echo",
        messages=["hi from node ✓"],
        metadata=[
            ("x-echo-a", "1"),
            ("x-echo-b-bin", base64.b64encode(b"\x00\xff").decode()),
            ("x-interlink-caller-app", "app-b"),
        ],
    )
    assert res["ok"] is True, res
    assert res["message"] == "hi from node ✓"
    assert res["initial"]["x-served-by"] == [provider.name]
    assert res["trailing"]["x-echo-a"] == ["1"]
    assert res["trailing"]["x-echo-b-bin"] == [base64.b64encode(b"\x00\xff").decode()]
    assert res["trailing"]["x-caller-app"] == ["app-b"]
    assert res["trailing"]["x-saw-keys"] == ["x-echo-a,x-echo-b-bin,x-interlink-caller-app"]


def test_node_client_add(run_node_client, provider):
    res = run_node_client(provider.target, "add", a=40, b=2)
    assert res["ok"] is True, res
    assert res["sum"] == 42


@pytest.mark.parametrize("details", FAIL_DETAILS[:1])
def test_node_client_fail(run_node_client, provider, details):
    res = run_node_client(provider.target, "fail", messages=[details])
    assert res["ok"] is False, res
    assert res["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert res["details"] == details


def test_node_client_sleep_deadline(run_node_client, provider):
    res = run_node_client(provider.target, "sleep", timeout_ms=300)
    assert res["ok"] is False, res
    assert res["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert res["elapsed_ms"] < 1500


def test_node_client_sleep_sees_deadline(run_node_client, provider):
    res = run_node_client(provider.target, "sleep", sleep_ms=10, timeout_ms=5000)
    assert res["ok"] is True, res
    assert res["ms"] == 10
    assert 3000 < int(res["trailing"]["x-deadline-ms"][0]) <= 5000
    res = run_node_client(provider.target, "sleep", sleep_ms=10, timeout_ms=0)
    assert res["trailing"]["x-deadline-ms"] == ["none"]


def test_node_client_streams(run_node_client, provider):
    res = run_node_client(provider.target, "count", a=4)
    assert (res["ok"], res["sums"]) == (True, [1, 2, 3, 4]), res
    res = run_node_client(provider.target, "sum")
    assert (res["ok"], res["sum"]) == (True, 21), res
    res = run_node_client(provider.target, "chat", messages=["x", "ÿ", "%z"])
    assert (res["ok"], res["messages"]) == (True, ["x", "ÿ", "%z"]), res


def test_node_client_big(run_node_client, provider):
    res = run_node_client(provider.target, "big")
    assert res["ok"] is True, res
    assert (res["sent"], res["length"], res["matched"]) == (MIB, MIB, True)


def test_node_client_unreachable(run_node_client, free_port):
    res = run_node_client(f"127.0.0.1:{free_port}", "add", timeout_ms=2000)
    assert res["ok"] is False
    assert res["code"] == grpc.StatusCode.UNAVAILABLE.value[0]


# --- the programs -------------------------------------------------------------------------


def test_python_provider_program(spawn_peer):
    peer = spawn_peer(
        [sys.executable, "-m", "interlink.demo.provider", "--listen", "127.0.0.1:0", "--name", "prog"],
        "prog",
    )
    with EchoClient(peer.target) as c:
        _, initial, _ = c.echo("hi")
    assert md_value(initial, "x-served-by") == "prog"
    peer.process.send_signal(signal.SIGTERM)
    assert peer.process.wait(10) == 0


def test_node_server_program_stops_on_sigterm(spawn_peer, node_peers):
    peer = spawn_peer(
        [node_peers, str(NODE_SERVER_JS), "--listen", "127.0.0.1:0", "--name", "n2"], "n2"
    )
    with EchoClient(peer.target) as c:
        assert c.add(1, 1) == 2
    peer.process.send_signal(signal.SIGTERM)
    assert peer.process.wait(10) == 0


def test_python_provider_sleep_frees_worker_on_deadline():
    # two workers, both busy with sleeps whose deadline passes: the provider must wake up
    # (cancel-aware) instead of holding its workers for the full 5 s
    from interlink.demo.provider import start

    server, port = start("127.0.0.1:0", name="tiny", max_workers=2)
    try:
        with EchoClient(f"127.0.0.1:{port}") as c:
            started = time.monotonic()
            calls = [
                c.stub.sleep.future(c.pb2.SleepRequest(ms=5000), timeout=0.2) for _ in range(2)
            ]
            for f in calls:
                assert f.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert c.add(1, 2, timeout=3) == 3
            assert time.monotonic() - started < 2.0
    finally:
        server.stop(grace=None)


def test_python_provider_refuses_busy_port(py_provider):
    # grpcio would share the port (SO_REUSEPORT) unless the provider turns that off
    from interlink.demo.provider import start

    with pytest.raises(OSError):
        start(py_provider.target, name="second")
