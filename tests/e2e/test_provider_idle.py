"""Idle provider connections (limits.provider_idle_timeout_ms) between real processes: a provider connection that
carried no call for the timeout is closed; the next call dials it again and is served (it waits for that
connection, it does not fail), with one pool.idle_closed and one pool.waking line each time."""

from __future__ import annotations

import time

from interlink.demo.client import EchoClient
from tests.e2e.topology import ALLOWED_APP, two_sites

APP = (("tri-consumer-appname", ALLOWED_APP),)


def test_an_idle_provider_connection_is_closed_and_dialled_again_by_the_next_call(certs, tmp_path, py_provider):
    sites = two_sites(certs, tmp_path, py_provider.target, name="idle",
                      site_options={"a": {"limits": {"provider_idle_timeout_ms": 1000}}})
    try:
        with EchoClient(sites.triple_target) as client:
            client.wait_ready()
            for round_ in range(2):
                assert client.echo(f"before-{round_}", metadata=APP, timeout=5)[0] == f"before-{round_}"
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and _count(sites.a, "pool.idle_closed") <= round_:
                    time.sleep(0.1)
                assert _count(sites.a, "pool.idle_closed") == round_ + 1
                assert client.echo(f"after-{round_}", metadata=APP, timeout=5)[0] == f"after-{round_}"
                assert _count(sites.a, "pool.waking") == round_ + 1
        connected = [e for e in sites.a.events() if e.get("event") == "pool.connected" and "provider" in e["pool"]]
        assert len(connected) == 3  # at start, then once per wake-up
        calls = [e for e in sites.a.events() if e.get("event") == "call"]
        assert [e["status"] for e in calls] == ["OK"] * len(calls) and len(calls) >= 4
    finally:
        sites.stop()


def _count(gateway, event: str) -> int:
    return sum(1 for e in gateway.events() if e.get("event") == event)
