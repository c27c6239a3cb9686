"""The peer gateway dies mid-traffic; callers learn it at once and traffic comes back when it does."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from interlink.demo.client import EchoClient
from tests.e2e.topology import ALLOWED_APP, two_sites

APP = (("tri-consumer-appname", ALLOWED_APP),)


@pytest.fixture
def fresh_sites(certs, tmp_path, py_provider):
    sites = two_sites(certs, tmp_path, py_provider.target, name="failure")
    yield sites
    sites.stop()


def test_peer_killed_mid_call_fails_fast_and_traffic_resumes(fresh_sites):
    with EchoClient(fresh_sites.triple_target) as client, ThreadPoolExecutor(4) as pool:
        assert client.add(1, 2, metadata=APP) == 3
        in_flight = [pool.submit(client.sleep, 5000, metadata=APP, timeout=30) for _ in range(3)]
        time.sleep(0.5)  # the calls are now waiting inside the provider, behind GW-A
        killed_at = time.monotonic()
        fresh_sites.a.kill()
        for future in in_flight:
            with pytest.raises(grpc.RpcError) as info:
                future.result(timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - killed_at < 2.0, "in-flight calls must fail promptly, not wait for a timeout"

        # While GW-A is down, new calls fail fast with UNAVAILABLE too.
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.add(1, 2, metadata=APP, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 2.0

        fresh_sites.a.start()  # same port; GW-B was never restarted
        deadline = time.monotonic() + 15
        while True:
            try:
                assert client.add(2, 2, metadata=APP, timeout=2) == 4
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() < deadline, "traffic did not resume after the peer came back"
                time.sleep(0.1)


def test_full_stream_pool_gives_resource_exhausted(certs, tmp_path, py_provider):
    sites = two_sites(
        certs, tmp_path, py_provider.target, name="full", peer_options={"connections": 1, "max_concurrent_streams": 2}
    )
    try:
        with EchoClient(sites.triple_target) as client, ThreadPoolExecutor(4) as pool:
            client.add(1, 1, metadata=APP)  # the link is up
            busy = [pool.submit(client.sleep, 1500, metadata=APP, timeout=10) for _ in range(2)]
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as info:
                client.add(1, 1, metadata=APP)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "concurrent call limit" in info.value.details()
            for future in busy:
                future.result(timeout=10)
            assert client.add(1, 1, metadata=APP) == 2  # capacity is back
    finally:
        sites.stop()


def test_sigterm_drains_in_flight_calls(certs, tmp_path, py_provider):
    sites = two_sites(certs, tmp_path, py_provider.target, name="drain")
    try:
        with EchoClient(sites.triple_target) as client, ThreadPoolExecutor(2) as pool:
            client.add(1, 1, metadata=APP)
            slow = pool.submit(client.sleep, 800, metadata=APP, timeout=10)
            time.sleep(0.3)
            assert sites.b.stop() == 0  # SIGTERM: GOAWAY, wait for the call, exit 0
            assert slow.result(timeout=5)[0] == 800
        sites.b.wait_for_event(lambda e: e.get("event") == "gateway.stopped" and e.get("abandoned_calls") == 0)
    finally:
        sites.stop()


def test_frozen_peer_is_detected_by_keepalive(certs, tmp_path, py_provider):
    """A peer that keeps its TCP connection but stops answering (SIGSTOP: a hung host, a black-holed link)."""
    sites = two_sites(
        certs, tmp_path, py_provider.target, name="frozen",
        peer_options={"keepalive_interval_ms": 300, "keepalive_timeout_ms": 300},
    )
    try:
        with EchoClient(sites.triple_target) as client, ThreadPoolExecutor(2) as pool:
            client.add(1, 1, metadata=APP)
            stuck = pool.submit(client.sleep, 1000, metadata=APP, timeout=30)
            time.sleep(0.2)  # the call is inside GW-A now
            sites.a.process.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as info:
                    stuck.result(timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "PING" in info.value.details()
                assert time.monotonic() - started < 3.0
            finally:
                sites.a.process.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 15
            while True:  # the link is rebuilt once the peer answers again
                try:
                    assert client.add(3, 4, metadata=APP, timeout=2) == 7
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "traffic did not resume after SIGCONT"
                    time.sleep(0.1)
    finally:
        sites.stop()
