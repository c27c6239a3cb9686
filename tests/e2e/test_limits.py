"""Rate limits and circuit breaking between real gateway processes (grpcio callers, the demo provider):
`rate: 50/s` admits 50 calls a second (± 10% over 10 s) for that peer site and app while another app is
untouched, the excess refused at once with RESOURCE_EXHAUSTED; `max_in_flight` fails fast beyond its count and
takes calls again as they end; a SIGHUP changing the rate applies to the next calls."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import yaml

from interlink.demo.client import EchoClient
from tests.e2e.test_reload import _reload
from tests.e2e.topology import ALLOWED_APP, METHODS, two_sites

APP = (("tri-consumer-appname", ALLOWED_APP),)
OTHER = (("tri-consumer-appname", "billing-app"),)


def _limited(rate: str, burst: int, **export) -> dict:
    return {"allow": {"site-b": {"apps": [ALLOWED_APP, "billing-app"], "methods": METHODS, "rate": rate,
                                 "burst": burst}}, **export}


def test_a_rate_admits_its_rate_for_that_app_and_refuses_the_rest(certs, tmp_path, py_provider):
    sites = two_sites(certs, tmp_path, py_provider.target, name="rate", export_options=_limited("50/s", 5))
    try:
        with EchoClient(sites.triple_target) as client, EchoClient(sites.triple_target) as other:
            client.wait_ready()
            other.add(0, 0, metadata=OTHER)  # the link is up
            time.sleep(1.0)  # that app's bucket is full again
            counts = {"OK": 0, "RESOURCE_EXHAUSTED": 0, "other": 0}
            texts: set[str] = set()
            other_outcomes: list[str] = []
            lock = threading.Lock()
            started = time.monotonic()
            end = started + 10.0

            def flood() -> None:
                while time.monotonic() < end:
                    try:
                        client.add(1, 2, metadata=APP)
                        outcome = "OK"
                    except grpc.RpcError as exc:
                        outcome = exc.code().name if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "other"
                        texts.add(exc.details() or "")
                    with lock:
                        counts[outcome] += 1

            def calm() -> None:  # billing-app: 5 calls a second, its own bucket
                while time.monotonic() < end:
                    try:
                        other.add(1, 1, metadata=OTHER)
                        other_outcomes.append("OK")
                    except grpc.RpcError as exc:
                        other_outcomes.append(exc.code().name)
                    time.sleep(0.2)

            with ThreadPoolExecutor(5) as pool:
                for future in [pool.submit(flood) for _ in range(4)] + [pool.submit(calm)]:
                    future.result()
            elapsed = time.monotonic() - started
        expected = 50 * elapsed + 5
        assert 0.9 * expected <= counts["OK"] <= 1.1 * expected, (counts, elapsed)
        assert counts["RESOURCE_EXHAUSTED"] > counts["OK"] and counts["other"] == 0, counts
        assert any("app order-app of site site-b is over its rate on service com.example.EchoService: 50/s, burst 5"
                   in text for text in texts), texts
        assert other_outcomes and set(other_outcomes) == {"OK"}, other_outcomes
        denials = [e for e in sites.a.events() if e.get("event") == "audit" and e.get("decision") == "deny"]
        assert len(denials) == counts["RESOURCE_EXHAUSTED"]
    finally:
        sites.stop()


def test_max_in_flight_fails_fast_and_a_reload_changes_the_rate(certs, tmp_path, py_provider):
    sites = two_sites(certs, tmp_path, py_provider.target, name="inflight",
                      export_options=_limited("1000/s", 1000, max_in_flight=2))
    try:
        with EchoClient(sites.triple_target) as client:
            client.add(0, 0, metadata=APP)
            with ThreadPoolExecutor(2) as pool:
                slow = [pool.submit(client.sleep, 1500, 5.0, APP) for _ in range(2)]
                time.sleep(0.5)  # both are with the provider
                began = time.monotonic()
                try:
                    client.add(1, 2, metadata=APP)
                    raise AssertionError("a third call went through max_in_flight: 2")
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "has 2 calls in flight" in (exc.details() or "")
                assert time.monotonic() - began < 0.5  # at once, not after the slow ones
                assert [future.result()[0] for future in slow] == [1500, 1500]
            assert client.add(1, 2, metadata=APP) == 3  # the slots came back

            slower = copy.deepcopy(sites.a.config)
            slower["exports"][0]["allow"]["site-b"].update(rate="1/s", burst=1)
            _reload(sites.a, slower)
            outcomes = []
            for _ in range(3):
                try:
                    client.add(1, 2, metadata=APP)
                    outcomes.append("OK")
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)
            assert outcomes == ["OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
            assert yaml.safe_load(sites.a.path.read_text())["exports"][0]["allow"]["site-b"]["rate"] == "1/s"
    finally:
        sites.stop()


def test_an_export_keeps_the_connections_it_asks_for_to_each_provider(certs, tmp_path, py_provider):
    sites = two_sites(certs, tmp_path, py_provider.target, name="connections", export_options={"connections": 3})
    try:
        with EchoClient(sites.triple_target) as client:
            assert client.add(1, 2, metadata=APP) == 3
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            connected = [e for e in sites.a.events() if e.get("event") == "pool.connected"
                         and e.get("pool") == f"provider {py_provider.target}"]
            if len(connected) >= 3:
                break
            time.sleep(0.05)
        assert len(connected) == 3
    finally:
        sites.stop()
